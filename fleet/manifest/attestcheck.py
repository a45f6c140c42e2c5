"""Verify a manifest device's ``attestation`` field (plans with ``attestation_token: true``).

How this works: the field is optional (a device of a plan without ``attestation_token`` has none,
and neither has any manifest written before it existed). When present it must be an object
``{"token": "<body>.<signature block>", "read_at": "<RFC 3339 UTC>"}`` whose token decodes
(CBOR body, COSE_Sign1 signature block), is a device identity message, and carries the device's
``device_uuid``: the UUID every ``%KEYGEN`` answer of the device carries too. The token's
signature is by the device's identity key, which only nRF Cloud knows: it is not checked here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from fleet.credentials import attest_token_problem

__all__ = ["check_attestation"]

Add = Callable[[str, bool, str, str], None]


def _read_at_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "read_at must be an RFC 3339 time in UTC"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return f"read_at {value!r} is not an RFC 3339 time"
    if moment.utcoffset() != timedelta(0):
        return f"read_at {value!r} is not in UTC"
    return None


def check_attestation(device: Mapping[str, Any], device_uuid: uuid.UUID | None, where: str,
                      add: Add) -> int:
    """Check ``device["attestation"]`` when there is one; returns how many tokens were checked
    (0 or 1)."""
    if "attestation" not in device:
        return 0
    field = device["attestation"]
    if not isinstance(field, Mapping) or set(field) != {"token", "read_at"}:
        add("attestation", False, "attestation: expected an object {token, read_at}", where)
        return 1
    token = field["token"]
    problem = ("token must be a string" if not isinstance(token, str)
               else attest_token_problem(token, device_uuid)) or _read_at_problem(
                   field["read_at"])
    if problem is None and device_uuid is None:
        problem = "the device has an attestation token but no device_uuid"
    add("attestation", problem is None, "attestation token of this device" if problem is None
        else f"attestation: {problem}", where)
    return 1
