"""The COSE_Sign1 signature block of a ``%KEYGEN`` answer, and its CBOR payload.

Shape (nrf91-facts.md): CBOR tag 18 around ``[protected, unprotected, payload, signature]`` with
protected ``h'A10126'`` ({1: -7}, ES256), unprotected ``{4: h'21'}`` (key id: the device identity
key), a 64-byte raw ``r || s`` signature, and a payload that is CBOR tag 55799 (self-describe)
around ``[payload id, device UUID (16 bytes), sec_tag (a byte string holding a CBOR integer),
SHA-256 of the body, 16-byte nonce]``. sec_tags of 2**31 and above come out as negative CBOR
integers (the modem stores them as int32): take ``value & 0xFFFFFFFF``.

Decoding is strict and maps every failure to :class:`CredentialError`. Encoding and signing are
here too, for the simulator, so the two directions share one definition of the format.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from fleet.errors import CredentialError
from fleet.nrf91 import MAX_MODEM_SEC_TAG

__all__ = [
    "ES256",
    "PAYLOAD_ID_CSR",
    "PAYLOAD_ID_PUBLIC_KEY",
    "CoseSign1",
    "KeygenPayload",
    "decode_cbor",
    "decode_cose_sign1",
    "decode_keygen_payload",
    "decode_sec_tag",
    "encode_keygen_payload",
    "encode_sec_tag",
    "sign_cose_sign1",
]

ES256 = -7
PAYLOAD_ID_CSR = 9
PAYLOAD_ID_PUBLIC_KEY = 8
_COSE_SIGN1_TAG = 18
_SELF_DESCRIBE_TAG = 55799
_SELF_DESCRIBE_PREFIX = b"\xd9\xd9\xf7"
_PROTECTED_ES256 = b"\xa1\x01\x26"
_IDENTITY_KID = b"\x21"  # CBOR encoding of -2


def decode_cbor(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item from ``data``; anything else is a CredentialError."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, max_depth=16).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise CredentialError(f"{what}: not valid CBOR ({exc})") from exc
    if stream.tell() != len(data):
        raise CredentialError(f"{what}: {len(data) - stream.tell()} trailing bytes after the CBOR")
    return value


def encode_sec_tag(sec_tag: int) -> bytes:
    """The CBOR integer the modem puts in the payload for ``sec_tag`` (int32 semantics)."""
    if not 0 <= sec_tag <= MAX_MODEM_SEC_TAG:
        raise ValueError(f"sec_tag out of range: {sec_tag}")
    value = sec_tag - (1 << 32) if sec_tag >= (1 << 31) else sec_tag
    return cbor2.dumps(value)


def decode_sec_tag(raw: bytes) -> int:
    """The sec_tag from its payload encoding (negative values wrap, as the modem's int32)."""
    value = decode_cbor(raw, "sec_tag")
    if isinstance(value, bool) or not isinstance(value, int):
        raise CredentialError(f"sec_tag: expected a CBOR integer, got {type(value).__name__}")
    if not -(1 << 31) <= value <= 0xFFFFFFFF:
        raise CredentialError(f"sec_tag: {value} does not fit 32 bits")
    return value & 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class KeygenPayload:
    """The decoded COSE payload of a ``%KEYGEN`` answer."""

    payload_id: int
    device_uuid: uuid.UUID
    sec_tag: int
    sec_tag_raw: bytes
    digest: bytes
    nonce: bytes
    self_describe: bool

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise CredentialError(f"payload digest is {len(self.digest)} bytes, expected 32")
        if len(self.nonce) != 16:
            raise CredentialError(f"payload nonce is {len(self.nonce)} bytes, expected 16")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (names match vectors/keygen-csr-seed.json)."""
        return {
            "payload_id": self.payload_id,
            "device_uuid": str(self.device_uuid),
            "sec_tag_cbor_hex": self.sec_tag_raw.hex(),
            "sec_tag": self.sec_tag,
            "digest_hex": self.digest.hex(),
            "nonce_hex": self.nonce.hex(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CoseSign1:
    """A decoded COSE_Sign1 structure, keeping the exact bytes that were signed."""

    protected_raw: bytes
    protected: Mapping[Any, Any]
    unprotected: Mapping[Any, Any]
    payload_raw: bytes
    signature: bytes

    @property
    def algorithm(self) -> Any:
        return self.protected.get(1)

    def sig_structure(self) -> bytes:
        """The bytes the signature covers: ``["Signature1", protected, h'', payload]``."""
        return cbor2.dumps(["Signature1", self.protected_raw, b"", self.payload_raw])

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> bool:
        """True when the ES256 signature verifies with ``public_key``."""
        if self.algorithm != ES256 or len(self.signature) != 64:
            return False
        r = int.from_bytes(self.signature[:32], "big")
        s = int.from_bytes(self.signature[32:], "big")
        try:
            public_key.verify(
                encode_dss_signature(r, s), self.sig_structure(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            return False
        return True


def decode_cose_sign1(data: bytes) -> CoseSign1:
    """Decode a tagged COSE_Sign1; raises :class:`CredentialError` naming what is wrong."""
    value = decode_cbor(data, "COSE block")
    if not isinstance(value, cbor2.CBORTag) or value.tag != _COSE_SIGN1_TAG:
        raise CredentialError("COSE block: not a COSE_Sign1 (CBOR tag 18)")
    items = value.value
    if not isinstance(items, list | tuple) or len(items) != 4:
        raise CredentialError("COSE block: COSE_Sign1 must be an array of 4")
    protected_raw, unprotected, payload_raw, signature = items
    if not isinstance(protected_raw, bytes) or not isinstance(payload_raw, bytes):
        raise CredentialError("COSE block: protected header and payload must be byte strings")
    if not isinstance(signature, bytes):
        raise CredentialError("COSE block: signature must be a byte string")
    if not isinstance(unprotected, Mapping):
        raise CredentialError("COSE block: unprotected header must be a map")
    protected = decode_cbor(protected_raw, "COSE protected header") if protected_raw else {}
    if not isinstance(protected, Mapping):
        raise CredentialError("COSE block: protected header must be a map")
    return CoseSign1(
        protected_raw=protected_raw,
        protected=dict(protected),
        unprotected=dict(unprotected),
        payload_raw=payload_raw,
        signature=signature,
    )


def decode_keygen_payload(payload_raw: bytes) -> KeygenPayload:
    """Decode the 5-element %KEYGEN payload; raises :class:`CredentialError`."""
    value = decode_cbor(payload_raw, "COSE payload")
    if isinstance(value, cbor2.CBORTag) and value.tag == _SELF_DESCRIBE_TAG:
        value = value.value
    if not isinstance(value, list | tuple) or len(value) != 5:
        raise CredentialError("COSE payload: expected an array of 5 items")
    payload_id, device_uuid, sec_tag_raw, digest, nonce = value
    if isinstance(payload_id, bool) or not isinstance(payload_id, int):
        raise CredentialError("COSE payload: payload id is not an integer")
    for name, item in (("device UUID", device_uuid), ("sec_tag", sec_tag_raw),
                       ("digest", digest), ("nonce", nonce)):
        if not isinstance(item, bytes):
            raise CredentialError(f"COSE payload: {name} is not a byte string")
    if len(device_uuid) != 16:
        raise CredentialError(f"COSE payload: device UUID is {len(device_uuid)} bytes, not 16")
    return KeygenPayload(
        payload_id=payload_id,
        device_uuid=uuid.UUID(bytes=device_uuid),
        sec_tag=decode_sec_tag(sec_tag_raw),
        sec_tag_raw=sec_tag_raw,
        digest=digest,
        nonce=nonce,
        self_describe=payload_raw.startswith(_SELF_DESCRIBE_PREFIX),
    )


def encode_keygen_payload(
    *, payload_id: int, device_uuid: uuid.UUID, sec_tag: int, digest: bytes, nonce: bytes
) -> bytes:
    """The payload bytes a modem produces (tag 55799 around the 5-element array)."""
    items = [payload_id, device_uuid.bytes, encode_sec_tag(sec_tag), digest, nonce]
    return cbor2.dumps(cbor2.CBORTag(_SELF_DESCRIBE_TAG, items))


def sign_cose_sign1(payload_raw: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A tagged COSE_Sign1 over ``payload_raw``, signed ES256 with the identity ``key``."""
    sig_structure = cbor2.dumps(["Signature1", _PROTECTED_ES256, b"", payload_raw])
    r, s = decode_dss_signature(key.sign(sig_structure, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    items = [_PROTECTED_ES256, {4: _IDENTITY_KID}, payload_raw, signature]
    return cbor2.dumps(cbor2.CBORTag(_COSE_SIGN1_TAG, items))
