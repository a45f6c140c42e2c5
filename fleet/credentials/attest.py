"""``%ATTESTTOKEN`` answers: ``"<base64url body>.<base64url COSE_Sign1>"``.

The body is CBOR ``[message type (1), device UUID (16 bytes), device type, firmware UUID,
nonce]`` (nRF91x1, mfw >= 2.0.0). fleet uses it to learn the device UUID before the first
``%KEYGEN``, so ``{device_uuid}`` can be used in a plan's CSR attributes.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from fleet.credentials.cose import CoseSign1, decode_cbor, decode_cose_sign1
from fleet.credentials.keygen import b64url_decode
from fleet.errors import CredentialError

__all__ = ["AttestToken", "parse_attest_token"]

_LINE = re.compile(r'\s*%ATTESTTOKEN:\s*"([^"]*)"\s*\Z')


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestToken:
    """A decoded attestation token."""

    message_type: int
    device_uuid: uuid.UUID
    device_type: Any
    firmware_uuid: bytes | None
    nonce: bytes | None
    cose: CoseSign1


def parse_attest_token(text: str) -> AttestToken:
    """Decode an ``%ATTESTTOKEN`` line or bare value; raises :class:`CredentialError`."""
    match = _LINE.match(text)
    value = match.group(1) if match else text.strip().strip('"')
    parts = value.split(".")
    if len(parts) != 2:
        raise CredentialError("%ATTESTTOKEN: expected '<body>.<signature block>'")
    body = decode_cbor(b64url_decode(parts[0], "attestation body"), "attestation body")
    cose = decode_cose_sign1(b64url_decode(parts[1], "attestation signature block"))
    if not isinstance(body, list | tuple) or len(body) < 2:
        raise CredentialError("%ATTESTTOKEN: body is not a CBOR array")
    message_type, device_uuid = body[0], body[1]
    if not isinstance(message_type, int) or not isinstance(device_uuid, bytes):
        raise CredentialError("%ATTESTTOKEN: body does not start with [type, device UUID]")
    if len(device_uuid) != 16:
        raise CredentialError(f"%ATTESTTOKEN: device UUID is {len(device_uuid)} bytes, not 16")
    firmware_uuid = body[3] if len(body) > 3 and isinstance(body[3], bytes) else None
    nonce = body[4] if len(body) > 4 and isinstance(body[4], bytes) else None
    return AttestToken(
        message_type=message_type,
        device_uuid=uuid.UUID(bytes=device_uuid),
        device_type=body[2] if len(body) > 2 else None,
        firmware_uuid=firmware_uuid,
        nonce=nonce,
        cose=cose,
    )
