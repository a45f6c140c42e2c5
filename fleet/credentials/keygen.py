"""Parse and check one ``%KEYGEN`` answer: ``"<base64url body>.<base64url COSE_Sign1>"``.

The body is a CSR (payload id 9) or a 91-byte DER SubjectPublicKeyInfo (payload id 8). Parsing
(:func:`parse_keygen`) decodes every part or raises :class:`CredentialError`; checking
(:func:`check_keygen`) returns one :class:`Check` per rule, so ``fleet inspect`` can show them all
and the provisioning flow can refuse to record an answer that fails any (:func:`verify_keygen`).
The raw body is kept as received: the COSE digest is over those bytes, NULL quirk included.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtensionOID

from fleet.credentials.attributes import SubjectPairs, subject_pairs
from fleet.credentials.cose import (
    PAYLOAD_ID_CSR,
    PAYLOAD_ID_PUBLIC_KEY,
    CoseSign1,
    KeygenPayload,
    decode_cose_sign1,
    decode_keygen_payload,
)
from fleet.credentials.der import DerError, strip_sigalg_null
from fleet.errors import CredentialError
from fleet.pemtext import pem_text

__all__ = [
    "KEY_USAGE_NAMES",
    "Check",
    "CsrInfo",
    "Expectation",
    "KeygenAnswer",
    "b64url_decode",
    "b64url_encode",
    "check_keygen",
    "extract_keygen_value",
    "parse_keygen",
    "verify_keygen",
]

#: RFC 5280 KeyUsage bits in the order of the modem's 9-digit ``<key_usage>`` string.
KEY_USAGE_NAMES = (
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
    "encipherOnly",
    "decipherOnly",
)

_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
_LINE = re.compile(r'\s*%KEYGEN:\s*"([^"]*)"\s*\Z')


def b64url_decode(text: str, what: str) -> bytes:
    """Decode unpadded base64url strictly (no padding, no other characters)."""
    if not _B64URL.match(text):
        bad = next(c for c in text if not re.match(r"[A-Za-z0-9_-]", c))
        raise CredentialError(f"{what}: {bad!r} is not a base64url character")
    if len(text) % 4 == 1:
        raise CredentialError(f"{what}: base64url length {len(text)} is impossible (truncated?)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - excluded by the checks above
        raise CredentialError(f"{what}: invalid base64url ({exc})") from exc


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as the modem prints it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def extract_keygen_value(text: str) -> str:
    """The bare ``body.cose`` value from a ``%KEYGEN: "..."`` line, a quoted value or a bare one.

    Whitespace (a value wrapped over several lines when copied from a document) is removed.
    """
    text = text.strip()
    match = _LINE.match(text.replace("\r", "").replace("\n", ""))
    if match:
        text = match.group(1)
    elif len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return "".join(text.split())


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """The outcome of one rule applied to an answer."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """What the plan asked for; ``None`` fields are not checked."""

    sec_tag: int | None = None
    payload_id: int | None = None
    subject: SubjectPairs | None = None
    key_usage: str | None = None
    device_uuid: uuid.UUID | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrInfo:
    """What fleet reads from a CSR, computed once at parse time (so no lazy parse can fail
    later): subject, KeyUsage and whether the self-signature verifies."""

    csr: x509.CertificateSigningRequest
    public_key: CertificatePublicKeyTypes
    #: the DER ``csr`` was loaded from: the body, or a copy of it without the NULL parameter
    der: bytes
    null_parameter: bool
    subject: str
    subject_pairs: SubjectPairs
    key_usage: str | None
    key_usage_der: bytes | None
    signature_valid: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class KeygenAnswer:
    """A decoded ``%KEYGEN`` answer. ``body`` holds the exact bytes the modem sent. What is
    derived from it (digest, public key DER and PEM, CSR PEMs) is computed once, when it is
    decoded: a run's record and its self-check read the answer :func:`parse_keygen` cached,
    and ``fleet verify`` reads each of its fields more than once."""

    value: str
    body: bytes
    cose_raw: bytes
    cose: CoseSign1
    payload: KeygenPayload
    public_key: ec.EllipticCurvePublicKey
    csr_info: CsrInfo | None = None
    body_sha256: bytes
    #: DER SubjectPublicKeyInfo of :attr:`public_key`
    public_key_der: bytes
    public_key_pem: str
    #: PEM of :attr:`csr_der`: the CSR to hand to consumers (``cryptography`` >= 49 loads it;
    #: it refuses the modem's own bytes)
    csr_pem: str | None
    #: PEM of the CSR exactly as the modem made it (NULL parameter kept): the bytes the COSE
    #: digest covers
    raw_csr_pem: str | None

    @property
    def kind(self) -> str:
        return "csr" if self.csr_info is not None else "public_key"

    @property
    def csr(self) -> x509.CertificateSigningRequest | None:
        return None if self.csr_info is None else self.csr_info.csr

    @property
    def csr_null_parameter(self) -> bool:
        return self.csr_info is not None and self.csr_info.null_parameter

    @property
    def subject(self) -> str | None:
        """The CSR subject in the order the modem encoded it (``O=...,L=...,C=...``)."""
        return None if self.csr_info is None else self.csr_info.subject

    @property
    def subject_pairs(self) -> SubjectPairs | None:
        """The CSR subject as ``((dotted OID, value), ...)``, for comparison."""
        return None if self.csr_info is None else self.csr_info.subject_pairs

    @property
    def key_usage(self) -> str | None:
        """The CSR's KeyUsage as the modem's 9-digit string, or ``None`` if it has none."""
        return None if self.csr_info is None else self.csr_info.key_usage

    def csr_signature_valid(self) -> bool:
        return self.csr_info is not None and self.csr_info.signature_valid

    @property
    def csr_der(self) -> bytes | None:
        """The CSR's DER as standard libraries load it: the modem's explicit NULL parameter
        dropped from the signature algorithm (same key, same signed CertificationRequestInfo,
        the signature still valid); the body unchanged when it has no NULL."""
        return None if self.csr_info is None else self.csr_info.der

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (field names follow vectors/keygen-csr-seed.json)."""
        point = self.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        out: dict[str, Any] = {
            "kind": self.kind,
            "body_sha256": self.body_sha256.hex(),
            "public_key": {"uncompressed_hex": point.hex(), "pem": self.public_key_pem},
            "cose": {
                "tag": 18,
                "protected_header": {str(k): v for k, v in self.cose.protected.items()},
                "unprotected_header": {
                    str(k): (v.hex() if isinstance(v, bytes) else v)
                    for k, v in self.cose.unprotected.items()
                },
                "payload": self.payload.to_dict(),
                "payload_self_describe_tag": self.payload.self_describe,
                "signature_len": len(self.cose.signature),
            },
        }
        info = self.csr_info
        if info is not None:
            out["csr"] = {
                "subject": info.subject,
                "key_usage": info.key_usage,
                "key_usage_bits": [n for n, b in zip(KEY_USAGE_NAMES, info.key_usage or "",
                                                     strict=False) if b == "1"],
                "key_usage_der_hex": info.key_usage_der.hex() if info.key_usage_der else None,
                "signature_algorithm_null_parameter": info.null_parameter,
                "self_signature_valid": info.signature_valid,
                "pem": self.csr_pem,
                "raw_pem": self.raw_csr_pem,
            }
        return out


def parse_keygen(text: str) -> KeygenAnswer:
    """Decode a ``%KEYGEN`` answer (line, quoted or bare value). Raises CredentialError.

    Results are cached (answers are immutable and decoding one takes about half a millisecond;
    a run decodes each answer for its output, its manifest and the manifest's self-check).
    """
    return _parse_keygen_value(extract_keygen_value(text))


def decode_keygen(text: str) -> KeygenAnswer:
    """:func:`parse_keygen` without keeping the result: for a reader that sees each answer once
    (``fleet verify`` and ``fleet audit`` of manifest files), where a cache only holds on to
    thousands of answers' objects, which the cycle collector then walks again and again."""
    return _decode_keygen_value(extract_keygen_value(text))


def _two_parts(value: str) -> tuple[str, str]:
    """The body and the signature block of an answer. With the one '.' there, the error names
    the part that is empty (``.COSE`` has two parts, one of them empty)."""
    expected = "expected '<body>.<signature block>' (two base64url parts)"
    parts = value.split(".")
    if len(parts) != 2:
        got = "no '.' between them" if len(parts) == 1 else f"{len(parts)} parts"
        raise CredentialError(f"{expected}, got {got}")
    empty = [name for name, part in zip(("the body", "the signature block"), parts, strict=True)
             if not part]
    if empty:
        raise CredentialError(f"{expected}: {' and '.join(empty)} "
                              f"{'are' if len(empty) == 2 else 'is'} empty")
    return parts[0], parts[1]


def _decode_keygen_value(value: str) -> KeygenAnswer:
    body_text, signature_text = _two_parts(value)
    body = b64url_decode(body_text, "body")
    cose_raw = b64url_decode(signature_text, "signature block")
    cose = decode_cose_sign1(cose_raw)
    payload = decode_keygen_payload(cose.payload_raw)
    if payload.payload_id == PAYLOAD_ID_CSR:
        info = _read_csr(body)
        key = info.public_key
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CredentialError("CSR: public key is not an EC key")
        return _answer(value, body, cose_raw, cose, payload, key, info)
    if payload.payload_id == PAYLOAD_ID_PUBLIC_KEY:
        try:
            public = serialization.load_der_public_key(body)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CredentialError(f"body: not a DER public key ({exc})") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise CredentialError("body: public key is not an EC key")
        return _answer(value, body, cose_raw, cose, payload, public, None)
    raise CredentialError(
        f"COSE payload: unknown payload id {payload.payload_id} (expected 8 or 9)"
    )


_parse_keygen_value = functools.lru_cache(maxsize=2048)(_decode_keygen_value)


def _answer(value: str, body: bytes, cose_raw: bytes, cose: CoseSign1, payload: KeygenPayload,
            public_key: ec.EllipticCurvePublicKey, info: CsrInfo | None) -> KeygenAnswer:
    public_der = public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeygenAnswer(
        value=value, body=body, cose_raw=cose_raw, cose=cose, payload=payload,
        public_key=public_key, csr_info=info, body_sha256=hashlib.sha256(body).digest(),
        public_key_der=public_der, public_key_pem=pem_text("PUBLIC KEY", public_der),
        csr_pem=None if info is None else pem_text("CERTIFICATE REQUEST", info.der),
        raw_csr_pem=None if info is None else pem_text("CERTIFICATE REQUEST", body))


def _read_csr(body: bytes) -> CsrInfo:
    csr, der, quirk = _load_csr(body)
    try:
        public_key = csr.public_key()
        subject = csr.subject
        try:
            ext = csr.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
        except x509.ExtensionNotFound:
            usage = None
        else:
            usage = ext.value if isinstance(ext.value, x509.KeyUsage) else None
        return CsrInfo(
            csr=csr,
            public_key=public_key,
            der=der,
            null_parameter=quirk,
            subject=",".join(rdn.rfc4514_string() for rdn in subject.rdns),
            subject_pairs=subject_pairs(subject),
            key_usage=None if usage is None else _usage_bits(usage),
            key_usage_der=None if usage is None else usage.public_bytes(),
            signature_valid=csr.is_signature_valid,
        )
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise CredentialError(f"body: CSR does not decode ({exc})") from exc


def _usage_bits(usage: x509.KeyUsage) -> str:
    bits = [
        usage.digital_signature,
        usage.content_commitment,
        usage.key_encipherment,
        usage.data_encipherment,
        usage.key_agreement,
        usage.key_cert_sign,
        usage.crl_sign,
        usage.key_agreement and usage.encipher_only,
        usage.key_agreement and usage.decipher_only,
    ]
    return "".join("1" if bit else "0" for bit in bits)


def _load_csr(body: bytes) -> tuple[x509.CertificateSigningRequest, bytes, bool]:
    """``(csr, the DER it was loaded from, whether the NULL parameter was dropped)``."""
    try:
        return x509.load_der_x509_csr(body), body, False
    except ValueError as first:
        try:
            stripped = strip_sigalg_null(body)
        except DerError as exc:
            raise CredentialError(f"body: not a DER CSR ({exc})") from exc
        if stripped is None:
            raise CredentialError(f"body: not a DER CSR ({first})") from first
        try:
            return x509.load_der_x509_csr(stripped), stripped, True
        except ValueError as exc:
            raise CredentialError(f"body: not a DER CSR ({exc})") from exc


def check_keygen(
    answer: KeygenAnswer,
    expect: Expectation | None = None,
    identity_key: ec.EllipticCurvePublicKey | None = None,
) -> list[Check]:
    """Apply every rule to ``answer``. Structural rules always; expectations when given."""
    checks: list[Check] = []
    payload = answer.payload
    digest_ok = answer.body_sha256 == payload.digest
    checks.append(Check(
        name="digest", ok=digest_ok,
        detail="COSE digest = SHA-256 of the body" if digest_ok else
        f"COSE digest {payload.digest.hex()} != SHA-256 of the body {answer.body_sha256.hex()}",
    ))
    alg_ok = answer.cose.algorithm == -7 and len(answer.cose.signature) == 64
    checks.append(Check(
        name="cose_algorithm", ok=alg_ok,
        detail="ES256 with a 64-byte signature" if alg_ok else
        f"algorithm {answer.cose.algorithm!r}, signature {len(answer.cose.signature)} bytes",
    ))
    curve_ok = isinstance(answer.public_key.curve, ec.SECP256R1)
    checks.append(Check(name="key_curve", ok=curve_ok,
                        detail="P-256" if curve_ok else "public key is not on P-256"))
    if answer.csr is not None:
        sig_ok = answer.csr_signature_valid()
        checks.append(Check(
            name="csr_signature", ok=sig_ok,
            detail="CSR self-signature valid" if sig_ok else "CSR self-signature does NOT verify",
        ))
    if identity_key is not None:
        cose_ok = answer.cose.verify(identity_key)
        checks.append(Check(
            name="cose_signature", ok=cose_ok,
            detail="COSE signature verifies with the identity key" if cose_ok else
            "COSE signature does NOT verify with the given identity key",
        ))
    if expect is not None:
        checks.extend(_expectation_checks(answer, expect))
    return checks


def _expectation_checks(answer: KeygenAnswer, expect: Expectation) -> list[Check]:
    checks: list[Check] = []
    payload = answer.payload

    def add(name: str, actual: object, wanted: object) -> None:
        ok = actual == wanted
        checks.append(Check(name=name, ok=ok,
                            detail=f"{actual}" if ok else f"got {actual}, expected {wanted}"))

    if expect.sec_tag is not None:
        add("sec_tag", payload.sec_tag, expect.sec_tag)
    if expect.payload_id is not None:
        add("payload_id", payload.payload_id, expect.payload_id)
    if expect.device_uuid is not None:
        add("device_uuid", payload.device_uuid, expect.device_uuid)
    if expect.subject is not None:
        add("subject", answer.subject_pairs, expect.subject)
    if expect.key_usage is not None:
        add("key_usage", answer.key_usage, expect.key_usage)
    return checks


def verify_keygen(
    answer: KeygenAnswer,
    expect: Expectation | None = None,
    identity_key: ec.EllipticCurvePublicKey | None = None,
) -> list[Check]:
    """Like :func:`check_keygen`, but raise :class:`CredentialError` if any check fails."""
    checks = check_keygen(answer, expect, identity_key)
    failed = tuple(f"{c.name}: {c.detail}" for c in checks if not c.ok)
    if failed:
        raise CredentialError("%KEYGEN answer failed " + "; ".join(failed), failed)
    return checks
