"""Certificate authorities that turn a modem's CSR into a client certificate.

How this works
--------------
A plan's ``ca:`` section becomes one of two :class:`CertificateAuthority` implementations:

- :class:`LocalCa`: a CA certificate and its private key, read from a file or kept in a PKCS#11
  token (an :class:`ExternalCaKey`, which signs there); :meth:`LocalCa.sign`
  builds a TLS client certificate (random 159-bit serial, notBefore now - 5 min, notAfter now +
  ``validity_days`` but never after the CA's own notAfter, subject = the CSR's, issuer = the CA's,
  SubjectKeyIdentifier, AuthorityKeyIdentifier, BasicConstraints CA=false (critical), KeyUsage
  from the CSR (critical; digitalSignature + keyAgreement when the CSR has none),
  ExtendedKeyUsage clientAuth);
- :class:`CommandCa`: an external program (step-ca, ``openssl ca``, a cloud CA's CLI) run without
  a shell, with the CSR PEM on stdin, that must print exactly one PEM certificate on stdout
  (:mod:`fleet.certs.command`).

Both go through the same gates: :func:`check_csr` before (the CSR's self-signature, the subject
the plan asked for, no CA key usage) and :func:`check_issued` after (the certificate carries the
CSR's public key and subject, is not a CA, has not expired, and verifies against the CA
certificate or a chain certificate that names its issuer). ``now`` is an argument everywhere.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from fleet.certs.command import run_ca_command
from fleet.certs.pem import canonical_pem, parse_pem_certificates, pem_sha256, public_key_der
from fleet.credentials.attributes import SubjectPairs, subject_pairs
from fleet.errors import CertificateError
from fleet.hsm.uri import Pkcs11Uri

__all__ = [
    "CaPrivateKey",
    "CertificateAuthority",
    "Chain",
    "CommandCa",
    "ExternalCaKey",
    "LocalCa",
    "check_csr",
    "check_issued",
]

CaPrivateKey = (ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
                | ed448.Ed448PrivateKey)



class ExternalCaKey(Protocol):
    """A CA key that signs where it lives (a PKCS#11 token) and never leaves it."""

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey: ...

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """``builder``'s certificate, signed with SHA-256; :class:`CertificateError` when the
        key cannot sign now (the token is gone)."""
        ...

    def describe(self) -> str:
        """Where the key lives, in words (never a PIN)."""
        ...


#: How far notBefore is set back, for devices and servers whose clocks run a little behind.
BACKDATE = timedelta(minutes=5)
#: The KeyUsage of a certificate whose CSR requests none.
DEFAULT_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Chain:
    """The ``chain:`` file: certificates written as the root CA (type 0) in the same sec_tag."""

    path: Path
    certificates: tuple[x509.Certificate, ...]
    pem: str = field(init=False)  #: canonical PEM: the exact bytes written
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pem", canonical_pem(self.certificates))
        object.__setattr__(self, "sha256", pem_sha256(self.pem))


class CertificateAuthority(Protocol):
    """What the provisioning flow needs from a plan's ``ca:``."""

    @property
    def chain(self) -> Chain | None: ...

    def describe(self) -> str:
        """One line for logs and ``fleet plan check``."""
        ...

    async def issue(self, csr: x509.CertificateSigningRequest, *, now: datetime
                    ) -> x509.Certificate:
        """A certificate for ``csr`` (already checked with :func:`check_csr`), checked with
        :func:`check_issued`. Raises :class:`CertificateError`."""
        ...


def _usage(csr: x509.CertificateSigningRequest) -> x509.KeyUsage:
    try:
        value = csr.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return DEFAULT_KEY_USAGE
    if not isinstance(value, x509.KeyUsage):  # pragma: no cover - cryptography guarantees it
        raise CertificateError("the CSR's KeyUsage extension does not decode")
    return value


def check_csr(csr: x509.CertificateSigningRequest, *, subject: SubjectPairs | None) -> None:
    """Refuse a CSR whose self-signature does not verify, whose subject is not ``subject``
    (when given), or that asks for a CA's key usage (keyCertSign, cRLSign)."""
    if not csr.is_signature_valid:
        raise CertificateError("the CSR's self-signature does not verify: refusing to sign it")
    actual = subject_pairs(csr.subject)
    if subject is not None and actual != subject:
        raise CertificateError(f"the CSR's subject {csr.subject.rfc4514_string()!r} is not the "
                               "subject the plan requests: refusing to sign it")
    usage = _usage(csr)
    if usage.key_cert_sign or usage.crl_sign:
        raise CertificateError("the CSR asks for keyCertSign/cRLSign, which a client "
                               "certificate must not have: refusing to sign it")


def _verifies(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_issued(cert: x509.Certificate, csr: x509.CertificateSigningRequest, *,
                 trust: Sequence[x509.Certificate], require_issuer: bool, now: datetime) -> None:
    """Refuse a certificate that does not carry the CSR's public key and subject, is a CA,
    has expired, or does not verify against a ``trust`` certificate named as its issuer.
    ``require_issuer``: the issuer must be among ``trust`` (else a certificate whose issuer is
    not in ``trust`` is accepted unverified)."""
    if public_key_der(cert) != public_key_der(csr):
        raise CertificateError("the certificate's public key is not the CSR's (the CA signed "
                               "another key)")
    if cert.subject != csr.subject:
        raise CertificateError(f"the certificate's subject {cert.subject.rfc4514_string()!r} "
                               f"is not the CSR's {csr.subject.rfc4514_string()!r}")
    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and isinstance(constraints.value, x509.BasicConstraints) \
            and constraints.value.ca:
        raise CertificateError("the certificate is a CA certificate (basicConstraints CA=true), "
                               "not a client certificate")
    if cert.not_valid_after_utc <= now:
        raise CertificateError(f"the certificate expired at {cert.not_valid_after_utc}")
    named = [ca for ca in trust if ca.subject == cert.issuer]
    if any(_verifies(cert, ca) for ca in named):
        return
    issuer = cert.issuer.rfc4514_string()
    if named:
        raise CertificateError(f"the certificate's signature does not verify with the CA "
                               f"certificate {issuer!r}")
    if require_issuer:
        raise CertificateError(f"the certificate's issuer {issuer!r} is not the CA certificate "
                               "the plan names")


def _random_serial() -> int:
    while True:
        serial = secrets.randbits(159)
        if serial:
            return serial


_FILE_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey,
              ed448.Ed448PrivateKey)


def _hash_for(key: CaPrivateKey) -> hashes.SHA256 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalCa:
    """A CA whose certificate and private key are files on this station (``ca: {cert, key}``)."""

    cert_path: Path
    key_path: Path | Pkcs11Uri
    certificate: x509.Certificate = field(repr=False, compare=False)
    private_key: CaPrivateKey | ExternalCaKey = field(repr=False, compare=False)
    validity_days: int = 365
    key_passphrase_env: str | None = None
    chain: Chain | None = None

    def describe(self) -> str:
        key = self.private_key
        where = "" if isinstance(key, _FILE_KEYS) else f"; {key.describe()}"
        return (f"local CA {self.certificate.subject.rfc4514_string()} ({self.cert_path}), "
                f"{self.validity_days} days{where}")

    def sign(self, csr: x509.CertificateSigningRequest, *, now: datetime) -> x509.Certificate:
        """A client certificate for ``csr`` (see the module docstring for its contents)."""
        ca = self.certificate
        not_after = min(now + timedelta(days=self.validity_days), ca.not_valid_after_utc)
        try:
            ski = ca.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
        except x509.ExtensionNotFound:
            ski = None
        if isinstance(ski, x509.SubjectKeyIdentifier):
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        else:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca.subject)
            .public_key(csr.public_key())
            .serial_number(_random_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(csr), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()),
                           critical=False)
            .add_extension(aki, critical=False)
        )
        key = self.private_key
        if not isinstance(key, _FILE_KEYS):
            return key.sign_certificate(builder)
        try:
            return builder.sign(key, _hash_for(key))
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"signing with the CA key failed: {exc}") from exc

    async def issue(self, csr: x509.CertificateSigningRequest, *, now: datetime
                    ) -> x509.Certificate:
        cert = self.sign(csr, now=now)
        check_issued(cert, csr, trust=[self.certificate], require_issuer=True, now=now)
        return cert


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandCa:
    """An external CA program (``ca: {command: [...]}``): CSR PEM on stdin, one certificate PEM
    on stdout. ``issuer`` (optional) is the certificate the program signs with."""

    argv: tuple[str, ...]
    timeout_s: float = 30.0
    cwd: Path | None = None  #: the plan's directory: relative arguments are relative to it
    issuer: x509.Certificate | None = field(default=None, repr=False, compare=False)
    chain: Chain | None = None

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("a CA command needs at least the program")
        if not 0 < self.timeout_s < float("inf"):
            raise ValueError(f"timeout_s must be > 0, not {self.timeout_s!r}")

    def describe(self) -> str:
        return f"CA command {' '.join(self.argv)} (timeout {self.timeout_s:g} s)"

    async def issue(self, csr: x509.CertificateSigningRequest, *, now: datetime
                    ) -> x509.Certificate:
        csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
        output = await run_ca_command(self.argv, csr_pem, timeout_s=self.timeout_s, cwd=self.cwd)
        cert = parse_pem_certificates(output, f"the output of CA command {self.argv[0]}",
                                      exactly_one=True)[0]
        trust = ([self.issuer] if self.issuer is not None else []) + list(
            self.chain.certificates if self.chain else ())
        check_issued(cert, csr, trust=trust, require_issuer=self.issuer is not None, now=now)
        return cert
