"""Verify the ``certificate`` and ``ca_chain`` fields of a manifest key.

How this works: a key's ``certificate`` (present when its plan spec has a CA) must be an object
with a known ``outcome``; when it carries a ``pem``, that PEM must decode to exactly one
certificate whose public key is the key's (``public_key_pem``, itself re-derived from the
``%KEYGEN`` answer by :mod:`fleet.manifest.verify`), whose serial and issuer are the ones
recorded, and whose SHA-256 is the recorded ``sha256`` (the bytes written to the modem; a
``pre-existing`` certificate is shown as the modem read it back, so only its key is compared).
An outcome that claims a certificate on the device without a PEM fails. ``ca_chain`` needs a
known outcome and, when given, a 64-digit ``sha256``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization

from fleet.certs.pem import parse_pem_certificates, pem_sha256, public_key_der, serial_and_issuer
from fleet.errors import CertificateError
from fleet.records import CertOutcome

__all__ = ["check_certificate_fields"]

Add = Callable[[str, bool, str, str], None]

_OUTCOMES = tuple(o.value for o in CertOutcome)
_ON_DEVICE = ("issued", "unchanged", "rewritten", "pre-existing")
_SHA = re.compile(r"[0-9A-F]{64}\Z")


def _public_key_der(pem: Any) -> bytes | None:
    if not isinstance(pem, str):
        return None
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError):
        return None
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def check_certificate_fields(key: Mapping[str, Any], where: str, add: Add, *,
                             known_der: bytes | None = None) -> int:
    """Check ``key["certificate"]`` and ``key["ca_chain"]`` when present; returns the number of
    certificates checked (0 or 1). ``known_der``: the DER of ``key["public_key_pem"]``
    when the caller has it already (it is then not decoded again)."""
    chain = key.get("ca_chain")
    if chain is not None:
        if not isinstance(chain, Mapping) or chain.get("outcome") not in _OUTCOMES:
            add("ca_chain", False, "ca_chain: not an object with a known outcome", where)
        elif chain.get("sha256") is not None and not _SHA.match(str(chain["sha256"])):
            add("ca_chain", False, "ca_chain: sha256 is not 64 upper-case hex digits", where)
    cert = key.get("certificate")
    if cert is None:
        return 0
    if not isinstance(cert, Mapping) or cert.get("outcome") not in _OUTCOMES:
        add("certificate", False, "certificate: not an object with a known outcome", where)
        return 0
    pem = cert.get("pem")
    if pem is None:
        if cert["outcome"] in _ON_DEVICE:
            add("certificate", False, f"certificate: outcome {cert['outcome']!r} but no pem "
                "recorded", where)
        return 0
    if not isinstance(pem, str):
        add("certificate", False, "certificate: pem is not a string", where)
        return 0
    try:
        parsed = parse_pem_certificates(pem, "certificate.pem", exactly_one=True)[0]
    except CertificateError as exc:
        add("certificate", False, f"certificate: {exc}", where)
        return 0

    def compare(ok: bool, good: str, bad: str) -> None:
        add("certificate", ok, good if ok else f"certificate: {bad}", where)

    expected = known_der or _public_key_der(key.get("public_key_pem"))
    compare(expected is not None and public_key_der(parsed) == expected,
            "certificate carries the key's public key",
            "its public key is not the key's public_key_pem (the CSR's)")
    serial, issuer = serial_and_issuer(parsed)
    compare(cert.get("serial") == serial and cert.get("issuer") == issuer,
            f"certificate serial {serial}, issuer {issuer}",
            f"serial/issuer recorded ({cert.get('serial')!r}, {cert.get('issuer')!r}) are not "
            f"the certificate's ({serial!r}, {issuer!r})")
    if cert["outcome"] != "pre-existing":
        compare(cert.get("sha256") == pem_sha256(pem),
                "certificate sha256 is the SHA-256 of its pem",
                f"sha256 {cert.get('sha256')!r} is not the SHA-256 of the pem "
                f"({pem_sha256(pem)})")
    return 1
