"""``%ATTESTTOKEN`` answers: ``"<base64url body>.<base64url COSE_Sign1>"``.

The body is CBOR ``[message type (1), device UUID (16 bytes), device type, firmware UUID,
nonce]`` (nRF91x1, mfw >= 2.0.0). fleet uses it to learn the device UUID before the first
``%KEYGEN``, so ``{device_uuid}`` can be used in a plan's CSR attributes, and keeps it in the
record when a plan asks for it (``attestation_token: true``: nRF Cloud claims a device with it).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from fleet.credentials.cose import CoseSign1, decode_cbor, decode_cose_sign1
from fleet.credentials.keygen import b64url_decode
from fleet.errors import CredentialError

__all__ = ["ATTEST_MESSAGE_TYPE", "AttestToken", "attest_token_problem", "parse_attest_token"]

#: The body's message type of an attestation token ("Device identity message v1").
ATTEST_MESSAGE_TYPE = 1

_LINE = re.compile(r'\s*%ATTESTTOKEN:\s*"([^"]*)"\s*\Z')


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestToken:
    """A decoded attestation token."""

    value: str  #: ``<body>.<signature block>``, as the modem sent it
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
        value=value,
        message_type=message_type,
        device_uuid=uuid.UUID(bytes=device_uuid),
        device_type=body[2] if len(body) > 2 else None,
        firmware_uuid=firmware_uuid,
        nonce=nonce,
        cose=cose,
    )


def attest_token_problem(value: str, device_uuid: uuid.UUID | None) -> str | None:
    """Why ``value`` is not an attestation token of the device ``device_uuid`` (the UUID of its
    ``%KEYGEN`` answers; None for a device with none captured yet), or None: it must decode,
    be a device identity message and carry that UUID."""
    try:
        token = parse_attest_token(value)
    except CredentialError as exc:
        return f"it does not decode: {exc}"
    if token.value != value:
        return "it is not a bare '<body>.<signature block>' value"
    if token.message_type != ATTEST_MESSAGE_TYPE:
        return (f"its message type is {token.message_type}, not {ATTEST_MESSAGE_TYPE} (a device "
                "identity message)")
    if device_uuid is not None and token.device_uuid != device_uuid:
        return f"it is from device {token.device_uuid}, not {device_uuid}"
    return None
