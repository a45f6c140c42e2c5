"""The journal's records: what it tells the provisioning flow and the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["CertState", "DeviceInfo", "KeyResult", "KeyState", "PendingIntent", "RunInfo",
           "utc_now"]


def utc_now() -> str:
    """Now as RFC 3339 UTC with a ``Z`` and microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingIntent:
    """A %KEYGEN whose outcome is unknown (the run died, timed out or lost the answer)."""

    step_id: int
    present_before: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyState:
    """What the journal knows about one key of one device."""

    state: str | None = None  #: "captured", "pre-existing", "deleted" or None (never seen)
    answer: str | None = None  #: the captured, verified %KEYGEN answer
    cmng_sha: str | None = None
    pending: PendingIntent | None = None
    #: What the captured answer yields (stored at capture, so a re-run need not decode it again)
    csr_pem: str | None = None
    public_key_pem: str | None = None
    cose_payload: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """What the journal knew of a device before this run saw it."""

    device_uuid: str | None = None
    restore_mode: int | None = None  #: function mode to restore, left by an interrupted run
    keys: tuple[tuple[tuple[int, int], KeyState], ...] = ()  #: ((sec_tag, type), state) pairs


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    run_id: str
    started_at: str
    resumed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CertState:
    """What the journal knows of one certificate (type 1) or chain (type 0) of a device."""

    imei: str
    sec_tag: int
    type: int
    state: str | None = None  #: "issued", "confirmed", "pre-existing" or None (only a result)
    source_sha256: str | None = None  #: hex SHA-256 of the CSR body it was issued for
    pem: str | None = None  #: the exact text written (or read, for a pre-existing one)
    sha256: str | None = None  #: upper-case hex SHA-256 the modem lists for it
    serial: str | None = None
    issuer: str | None = None
    not_after: str | None = None
    cmng_sha256: str | None = None  #: the SHA the modem listed when it was confirmed
    run_id: str | None = None  #: the run of ``outcome``
    outcome: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyResult:
    """A key's result in a run (a ``run_keys`` row), as :meth:`Journal.key_result` takes it."""

    run_id: str
    slot: str
    imei: str
    key_name: str
    sec_tag: int
    key_type: int
    outcome: str
    error: str | None
    attempts: int
    replace: bool = False
