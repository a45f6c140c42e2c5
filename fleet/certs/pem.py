"""PEM text for the modem: strict parsing, canonical LF-only bytes, and the SHA the modem lists.

How this works: the modem stores a credential's bytes exactly as written with ``%CMNG=0`` and
lists the SHA-256 of those bytes, and some firmware refuses CR in a PEM (``+CME ERROR: 527``).
So fleet never writes a PEM file as it was found: :func:`canonical_pem` re-encodes the parsed
certificates (``cryptography`` writes 64-column base64 with LF line endings and one final LF),
dropping anything else a file may carry (comments, ``Bag Attributes``, CRLF), and
:func:`pem_sha256` is the SHA-256 of exactly those UTF-8 bytes, upper-case hex like ``%CMNG=1``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.errors import CertificateError

__all__ = [
    "CertSummary",
    "canonical_pem",
    "parse_pem_certificates",
    "pem_sha256",
    "public_key_der",
    "serial_and_issuer",
    "summarize",
]

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*?\n(.*?)-----END \1-----", re.S)


def parse_pem_certificates(text: str, what: str, *, exactly_one: bool = False
                           ) -> list[x509.Certificate]:
    """The certificates in PEM ``text``; :class:`CertificateError` naming ``what`` for anything
    that is not one or more ``CERTIFICATE`` blocks (other blocks, text between them, a block
    that does not decode), or, with ``exactly_one``, for more than one certificate."""
    text = text.replace("\r\n", "\n")
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        shown = text.strip()[:60]
        raise CertificateError(f"{what}: no PEM certificate found"
                               + (f" (starts with {shown!r})" if shown else " (empty)"))
    leftover = "".join(text[start:end] for start, end in zip(
        [0] + [m.end() for m in blocks], [m.start() for m in blocks] + [len(text)],
        strict=True))
    if leftover.strip():
        raise CertificateError(f"{what}: unexpected text outside the PEM blocks: "
                               f"{leftover.strip()[:60]!r}")
    kinds = sorted({m.group(1) for m in blocks} - {"CERTIFICATE"})
    if kinds:
        raise CertificateError(f"{what}: expected only CERTIFICATE blocks, found "
                               f"{', '.join(kinds)}")
    if exactly_one and len(blocks) != 1:
        raise CertificateError(f"{what}: expected exactly one certificate, found {len(blocks)}")
    certs = []
    for index, match in enumerate(blocks, 1):
        try:
            certs.append(x509.load_pem_x509_certificate(match.group(0).encode("ascii")))
        except (ValueError, UnicodeEncodeError) as exc:
            raise CertificateError(f"{what}: certificate {index} does not decode ({exc})"
                                   ) from exc
    return certs


def canonical_pem(certs: Sequence[x509.Certificate]) -> str:
    """The PEM fleet writes to the modem: each certificate re-encoded, LF line endings, one
    final LF, nothing else."""
    if not certs:
        raise ValueError("no certificates")
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def pem_sha256(pem: str) -> str:
    """SHA-256 of the exact bytes written, upper-case hex (what ``AT%CMNG=1`` lists)."""
    return hashlib.sha256(pem.encode("utf-8")).hexdigest().upper()


def public_key_der(obj: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate's or a CSR's public key."""
    return obj.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertSummary:
    """What the journal and the manifest record of one certificate."""

    pem: str  #: canonical PEM (the bytes written to the modem)
    sha256: str  #: upper-case hex SHA-256 of ``pem``
    serial: str  #: lower-case hex
    issuer: str  #: RFC 4514
    subject: str  #: RFC 4514
    not_after: str  #: RFC 3339 UTC with Z


def serial_and_issuer(cert: x509.Certificate) -> tuple[str, str]:
    """``cert``'s serial (lower-case hex) and issuer (RFC 4514), as a :class:`CertSummary` has
    them."""
    return format(cert.serial_number, "x"), cert.issuer.rfc4514_string()


def summarize(cert: x509.Certificate) -> CertSummary:
    """The :class:`CertSummary` of ``cert``."""
    pem = canonical_pem([cert])
    serial, issuer = serial_and_issuer(cert)
    return CertSummary(
        pem=pem, sha256=pem_sha256(pem), serial=serial,
        issuer=issuer, subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))
