"""Read the files a plan's ``ca:`` names: the CA certificate and key, a chain, an issuer.

Each function raises :class:`CertificateError` with a reason fit for ``file:line: reason``; the
plan loader reports it at the line of the ``ca:`` entry. A CA certificate must be exactly one
certificate with basicConstraints CA=true; the key must be the certificate's (compared by public
key); an encrypted key needs its passphrase (from the environment variable the plan names).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from fleet.certs.authority import CaPrivateKey, Chain
from fleet.certs.pem import parse_pem_certificates
from fleet.errors import CertificateError
from fleet.regular import read_regular_file

__all__ = ["MAX_FILE_BYTES", "load_ca_certificate", "load_ca_key", "load_certificate",
           "load_chain"]

#: Certificate and key files larger than this are refused.
MAX_FILE_BYTES = 1024 * 1024


def _read(path: Path, what: str) -> bytes:
    try:
        data = read_regular_file(path, max_bytes=MAX_FILE_BYTES)
    except OSError as exc:
        raise CertificateError(f"{what} {path}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > MAX_FILE_BYTES:
        raise CertificateError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def _text(path: Path, what: str) -> str:
    try:
        return _read(path, what).decode("ascii")
    except UnicodeDecodeError as exc:
        raise CertificateError(f"{what} {path}: not a PEM file (not ASCII text)") from exc


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """Exactly one PEM certificate from ``path``."""
    return parse_pem_certificates(_text(path, what), f"{what} {path}", exactly_one=True)[0]


def load_ca_certificate(path: Path) -> x509.Certificate:
    """The CA certificate: one certificate with basicConstraints CA=true."""
    cert = load_certificate(path, "CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        constraints = None
    if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
        raise CertificateError(f"CA certificate {path}: not a CA certificate (it needs "
                               "basicConstraints CA=true)")
    return cert


def load_chain(path: Path) -> Chain:
    """The ``chain:`` file: one or more PEM certificates."""
    return Chain(path=path, certificates=tuple(parse_pem_certificates(
        _text(path, "chain"), f"chain {path}")))


def load_ca_key(path: Path, certificate: x509.Certificate, *,
                passphrase_env: str | None) -> CaPrivateKey:
    """The CA's private key (PEM; encrypted when ``passphrase_env`` names the variable holding
    the passphrase), which must be ``certificate``'s."""
    data = _read(path, "CA key")
    password: bytes | None = None
    if passphrase_env is not None:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise CertificateError(f"CA key {path}: environment variable {passphrase_env} "
                                   "(key_passphrase_env) is not set")
        password = value.encode("utf-8")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        hint = ("it is encrypted: name the environment variable holding its passphrase with "
                "key_passphrase_env" if password is None else "it is not encrypted: remove "
                "key_passphrase_env")
        raise CertificateError(f"CA key {path}: {hint}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        reason = "wrong passphrase or " if password is not None else ""
        raise CertificateError(f"CA key {path}: {reason}not a PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise CertificateError(f"CA key {path}: {type(key).__name__} keys cannot sign "
                               "certificates here (use EC, RSA or EdDSA)")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = certificate.public_key().public_bytes(serialization.Encoding.DER, spki)
    if mine != theirs:
        raise CertificateError(f"CA key {path} is not the key of the CA certificate "
                               f"({certificate.subject.rfc4514_string()})")
    return key
