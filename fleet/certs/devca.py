"""``fleet ca init``: a development CA for trying certificates out (never for production).

Creates ``DIR/ca.key`` (a P-256 private key, PKCS#8 PEM, mode 0600, created with ``O_EXCL``) and
``DIR/ca.pem`` (its self-signed certificate: basicConstraints CA=true pathlen 0, keyUsage
keyCertSign + cRLSign, both critical; SubjectKeyIdentifier; random 159-bit serial). Nothing is
ever overwritten: when either file exists, nothing is written.
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

from fleet.atomic import create_atomic, fsync_dir
from fleet.errors import CertificateError

__all__ = ["DevCaFiles", "init_dev_ca"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DevCaFiles:
    cert_path: Path
    key_path: Path
    subject: str
    not_after: str


def _create(path: Path, data: bytes, mode: int) -> None:
    try:
        create_atomic(path, data, mode=mode)
    except FileExistsError:
        raise CertificateError(f"{path} already exists: refusing to overwrite it") from None
    except OSError as exc:
        raise CertificateError(f"cannot write {path}: {exc.strerror or exc}") from exc


def init_dev_ca(directory: Path | str, *, common_name: str, days: int,
                now: datetime) -> DevCaFiles:
    """Create a development CA in ``directory`` (created 0700 when missing)."""
    if not common_name.strip():
        raise CertificateError("the CA's common name must not be empty")
    if not 1 <= days <= 36500:
        raise CertificateError(f"--days must be 1..36500, not {days}")
    directory = Path(directory)
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    for path in (key_path, cert_path):
        if os.path.lexists(path):
            raise CertificateError(f"{path} already exists: refusing to overwrite a CA "
                                   "(choose another directory)")
    if not directory.is_dir():
        try:
            directory.mkdir(mode=0o700, parents=True)
            fsync_dir(directory.parent)
        except OSError as exc:
            raise CertificateError(f"cannot create {directory}: {exc.strerror or exc}"
                                   ) from exc
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _create(key_path, key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0o600)
    _create(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return DevCaFiles(cert_path=cert_path, key_path=key_path, subject=name.rfc4514_string(),
                      not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))
