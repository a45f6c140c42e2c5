"""Who a simulated modem is: IMEI, device UUID and identity key, from a seed.

Everything here is a pure function of ``(seed, index)`` (or of the firmware string), so the same
``--seed`` gives the same fleet of modems on every run and on every machine:

- IMEI: TAC ``35265610`` + a 6-digit serial + the Luhn check digit. The serials of one seed are
  consecutive (from a seed-derived offset), so the modems of one simulator never share an IMEI.
- device UUID: 16 bytes of SHA-256(seed, index), shaped as a version-4 UUID.
- identity key: a P-256 private scalar derived from SHA-256(seed, index) with
  ``ec.derive_private_key``; it signs every ``%KEYGEN`` and ``%ATTESTTOKEN`` answer.
- firmware build UUID (``%XMODEMUUID``): derived from the firmware string alone, because on a
  real fleet every modem running one firmware build reports the same UUID.
"""

from __future__ import annotations

import hashlib
import uuid

from cryptography.hazmat.primitives.asymmetric import ec

from fleet.nrf91 import luhn_digit

__all__ = [
    "TAC",
    "derive_device_uuid",
    "derive_identity_key",
    "derive_imei",
    "firmware_uuid",
]

#: Type Allocation Code the simulated IMEIs start with (a Nordic nRF9160 TAC).
TAC = "35265610"

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _digest(seed: int, index: int, purpose: str, board: int = 0) -> bytes:
    swapped = f"/board{board}" if board else ""  # the original board's values stay as they were
    return hashlib.sha256(f"fleet-sim/{purpose}/{seed}/{index}{swapped}".encode()).digest()


def derive_imei(seed: int, index: int) -> str:
    """The 15-digit IMEI of modem ``index`` (valid Luhn digit, unique within one seed)."""
    offset = int.from_bytes(_digest(seed, 0, "imei"), "big") % 1_000_000
    body = TAC + f"{(offset + index) % 1_000_000:06d}"
    return body + luhn_digit(body)


def derive_device_uuid(seed: int, index: int, board: int = 0) -> uuid.UUID:
    """The device UUID of modem ``index`` (a version-4 UUID made from the seed); ``board``
    names another board the swap fault put in its place (0: the original)."""
    return uuid.UUID(bytes=_digest(seed, index, "device-uuid", board)[:16], version=4)


def derive_identity_key(seed: int, index: int, board: int = 0) -> ec.EllipticCurvePrivateKey:
    """The P-256 device identity key of modem ``index`` (``board``: as for the UUID)."""
    digest = _digest(seed, index, "identity-key", board)
    scalar = int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def firmware_uuid(firmware: str) -> uuid.UUID:
    """The firmware build UUID ``%XMODEMUUID`` reports for ``firmware``."""
    data = f"fleet-sim/fw/{firmware}".encode("utf-8", "surrogateescape")
    return uuid.UUID(bytes=hashlib.sha256(data).digest()[:16], version=4)
