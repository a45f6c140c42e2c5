"""The journal's records: what it tells the provisioning flow and the record builder (the
states of keys and certificates it holds are :mod:`fleet.state`'s).

Every record is a frozen, keyword-only dataclass; outcomes are string enums whose values are the
words stored in the journal, so a row with a word the journal never writes is refused when it is
read (``ValueError``, a :class:`fleet.errors.JournalError` to the caller) instead of being
reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from fleet.records import DeviceOutcome, KeyOutcome
from fleet.state import CertState, KeyState
from fleet.usbid import UsbIdentity

__all__ = ["DeviceInfo", "KeyResult", "KeyRow", "RunInfo", "RunReport", "SlotRow", "utc_now"]


def utc_now() -> str:
    """Now as RFC 3339 UTC with a ``Z`` and microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    usb: UsbIdentity | None = None  #: of the port the device was found on (a usb: form)
    interface: str | None = None  #: how the device was reached (None: not recorded)
    terminator: str | None = None
    attestation_token: str | None = None  #: the %ATTESTTOKEN read in the run, if any
    attestation_read_at: str | None = None


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
    #: after it) was sent and its answer never arrived, or (``answer_not_captured``) arrived
    #: and was not captured
    write_unresolved: bool
    #: fleet sent a delete of the key in this sec_tag in this run that the modem did not
    #: refuse (it may have taken effect even if its answer was lost)
    deleted: bool
    #: the pending %KEYGEN was answered, but its answer was not captured (it failed
    #: verification, or carried a device UUID the journal holds for another IMEI)
    answer_not_captured: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """Everything the journal holds of one run: the one source of its records."""

    slots: tuple[SlotRow, ...]
    keys: tuple[KeyRow, ...]
    certs: tuple[CertState, ...]
