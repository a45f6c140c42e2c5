"""The journal's records: what it tells the provisioning flow and the record builder.

Every record is a frozen, keyword-only dataclass; states and outcomes are enums (string enums,
whose values are the words stored in the journal), so a row with a word the journal never
writes is refused when it is read (``ValueError``, a :class:`fleet.errors.JournalError` to the
caller) instead of being reported.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet.records import CertOutcome, DeviceOutcome, KeyOutcome

__all__ = ["CertState", "CertStateKind", "DeviceInfo", "KeyResult", "KeyRow", "KeyState",
           "KeyStateKind", "PendingIntent", "RunInfo", "RunReport", "SlotRow", "utc_now"]


def utc_now() -> str:
    """Now as RFC 3339 UTC with a ``Z`` and microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingIntent:
    """A %KEYGEN whose outcome is unknown (the run died, timed out or lost the answer)."""

    step_id: int
    present_before: bool


class KeyStateKind(enum.StrEnum):
    """What the journal holds for one key of one device (``keys.state``)."""

    CAPTURED = "captured"  #: fleet made it and holds its verified answer
    PRE_EXISTING = "pre-existing"  #: it was there before fleet and was kept
    DELETED = "deleted"  #: fleet deleted it
    INTENT = "intent"  #: a %KEYGEN was sent; no answer captured (see ``pending``)


class CertStateKind(enum.StrEnum):
    """What the journal holds for a certificate or chain (``certs.state``)."""

    ISSUED = "issued"  #: fleet signed it (or chose the chain) and is about to write it
    CONFIRMED = "confirmed"  #: the modem lists exactly the bytes fleet wrote
    PRE_EXISTING = "pre-existing"  #: one fleet did not write, kept


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyState:
    """What the journal knows about one key of one device."""

    state: KeyStateKind | None = None  #: None: never seen
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
    #: the journal's last step id when this invocation began: the steps after it are this
    #: invocation's (what it may have changed)
    steps_before: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CertState:
    """What the journal knows of one certificate (type 1) or chain (type 0) of a device."""

    imei: str
    sec_tag: int
    type: int
    state: CertStateKind | None = None  #: None: only a result
    source_sha256: str | None = None  #: hex SHA-256 of the CSR body it was issued for
    pem: str | None = None  #: the exact text written (or read, for a pre-existing one)
    sha256: str | None = None  #: upper-case hex SHA-256 the modem lists for it
    serial: str | None = None
    issuer: str | None = None
    not_after: str | None = None
    cmng_sha256: str | None = None  #: the SHA the modem listed when it was confirmed
    run_id: str | None = None  #: the run of ``outcome``
    outcome: CertOutcome | None = None
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
    outcome: KeyOutcome
    error: str | None
    attempts: int
    replace: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotRow:
    """The device of one slot in one run, as journaled (a slot whose board was swapped during
    the run has a row per device)."""

    slot: str
    port: str
    imei: str | None  #: None: the slot failed before its device was identified
    outcome: DeviceOutcome | None  #: None: the invocation working on it died
    error: str | None
    device_uuid: str | None  #: of the board in the slot (None: never confirmed)
    model: str | None
    firmware: str | None
    #: a write to this device in the invocation (``RunInfo.steps_before``) may have reached it
    changed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRow:
    """One key's result in one run, with what the journal holds for the key."""

    slot: str
    imei: str
    key_name: str
    sec_tag: int
    key_type: int
    outcome: KeyOutcome
    error: str | None
    attempts: int
    answer: str | None  #: the key's captured %KEYGEN answer (verified when it was captured)
    cmng_sha: str | None
    #: a write to the key in this run (its pending %KEYGEN, or a delete with nothing captured
    #: after it) was sent and its answer never arrived
    write_unresolved: bool
    #: fleet sent a delete of the key in this sec_tag in this run that the modem did not
    #: refuse (it may have taken effect even if its answer was lost)
    deleted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """Everything the journal holds of one run: the one source of its records."""

    slots: tuple[SlotRow, ...]
    keys: tuple[KeyRow, ...]
    certs: tuple[CertState, ...]
