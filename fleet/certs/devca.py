"""``fleet ca init``: a development CA for trying certificates out (never for production).

Creates ``DIR/ca.key`` (a P-256 private key, PKCS#8 PEM, mode 0600, created with ``O_EXCL``) and
``DIR/ca.pem`` (its self-signed certificate: basicConstraints CA=true pathlen 0, keyUsage
keyCertSign + cRLSign, both critical; SubjectKeyIdentifier; random 159-bit serial). Nothing is
ever overwritten: when either file exists, nothing is written. With a PKCS#11 URI the key pair is
made in the token instead (never extractable), the certificate is signed there, and only
``DIR/ca.pem`` is written.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.atomic import create_new, make_private_dir
from fleet.errors import CertificateError, TokenError
from fleet.hsm.uri import Pkcs11Uri

__all__ = ["DevCaFiles", "init_dev_ca"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DevCaFiles:
    cert_path: Path
    key_path: Path | None  #: None: the key is in a token (``token``)
    subject: str
    not_after: str
    token: str | None = None  #: where the key is, in words, when it is in a token


def init_dev_ca(directory: Path | str, *, common_name: str, days: int,
                now: datetime, token: Pkcs11Uri | None = None) -> DevCaFiles:
    """Create a development CA in ``directory`` (created 0700 when missing); its key in the
    PKCS#11 token ``token`` names, when given."""
    if not common_name.strip():
        raise CertificateError("the CA's common name must not be empty")
    if not 1 <= days <= 36500:
        raise CertificateError(f"--days must be 1..36500, not {days}")
    directory = Path(directory)
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    for path in (key_path, cert_path) if token is None else (cert_path,):
        if os.path.lexists(path):
            raise CertificateError(f"{path} already exists: refusing to overwrite a CA "
                                   "(choose another directory)")
    make_private_dir(directory, error=CertificateError)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)

    def builder(public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(secrets.randbits(159) | 1)
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    where = None
    if token is not None:
        from fleet.hsm.signers import TokenCaKey, create_token_key  # the binding: only now

        try:
            ca_key = TokenCaKey(create_token_key(token))
        except TokenError as exc:
            raise CertificateError(f"{token}: {exc}") from exc
        public = ca_key.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # create_token_key: P-256
        cert = ca_key.sign_certificate(builder(public))
        where = ca_key.describe()
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = builder(key.public_key()).sign(key, hashes.SHA256())
        create_new(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()),
                   mode=0o600, error=CertificateError)
    create_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644,
               error=CertificateError)
    return DevCaFiles(cert_path=cert_path, key_path=key_path if token is None else None,
                      subject=name.rfc4514_string(), token=where,
                      not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))
