"""Helpers for the certificate tests: CA files, modem-made CSRs, the script CA."""

from __future__ import annotations

import datetime
import os
import sys
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.credentials import KeygenAnswer, build_csr, build_keygen_answer, parse_keygen

__all__ = ["SCRIPT_CA", "TLS", "csr_answer", "make_ca", "script_ca_command"]

TLS = 16842753
SCRIPT_CA = Path(__file__).resolve().parent / "data" / "script_ca.py"
NOW = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)


def make_ca(directory: Path, *, name: str = "Test CA", ca: bool = True,
            passphrase: bytes | None = None, days: int = 3650, stem: str = "ca",
            now: datetime.datetime = NOW) -> tuple[Path, Path, x509.Certificate,
                                                   ec.EllipticCurvePrivateKey]:
    """A self-signed CA (``stem``.pem, ``stem``.key) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=days)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0),
                                        critical=True)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path, cert, key


def csr_answer(*, attributes: str | None = "CN=352656100367872,O=Acme,C=NO",
               key_usage: str = "101010000", key: ec.EllipticCurvePrivateKey | None = None,
               sec_tag: int = TLS) -> KeygenAnswer:
    """A %KEYGEN CSR answer exactly as the modem makes it (NULL-parameter CSR)."""
    device = uuid.UUID("50363154-3931-44f0-8022-121b6401627d")
    body = build_csr(key or ec.generate_private_key(ec.SECP256R1()), device_uuid=device,
                     attributes=attributes, key_usage=key_usage)
    return parse_keygen(build_keygen_answer(
        body, payload_id=9, device_uuid=device, sec_tag=sec_tag,
        identity_key=ec.generate_private_key(ec.SECP256R1()), nonce=os.urandom(16)))


def script_ca_command(cert: Path, key: Path, mode: str = "good") -> list[str]:
    """argv of the test script CA."""
    return [sys.executable, str(SCRIPT_CA), str(cert), str(key), mode]
