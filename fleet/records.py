"""What a run produced, per device and per key: the records the run layer (from the journal)
hands to the manifest and to ``--json`` output.

Frozen, keyword-only dataclasses. Outcomes are string enums whose values are the words used in the
manifest and the JSON output.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from fleet.usbid import UsbIdentity

__all__ = ["ANSWER_OUTCOMES", "REPORTED_OUTCOMES", "AttestationRecord", "CertOutcome",
           "DeviceOutcome", "DeviceRecord", "KeyOutcome", "KeyRecord", "RunRecord",
           "outcome_word"]


class KeyOutcome(enum.StrEnum):
    """What happened to one key of one device."""

    GENERATED = "generated"  #: a new key was generated and its answer captured and verified
    UNCHANGED = "unchanged"  #: the key was already there with its answer in the journal
    CHANGED = "changed"  #: endorsement key whose public key differs from the journal's
    RECOVERED = "recovered"  #: interrupted KEYGEN: the unseen key was deleted and made again
    PRE_EXISTING = "pre-existing"  #: a key was there before fleet ran and `if_exists: keep`
    FAILED = "failed"  #: the key could not be provisioned (see `error`)
    #: a write to it (%KEYGEN or a delete) was sent and its answer never arrived, or arrived
    #: and was not captured (the run stopped, or no retry was left): a key may be on the
    #: device that nobody saw (the next run recovers it)
    INTERRUPTED = "interrupted"
    NOT_ATTEMPTED = "not-attempted"  #: the device failed or the run stopped before this key


#: Outcomes that claim a captured %KEYGEN answer: such a key without one fails verification.
ANSWER_OUTCOMES = frozenset({KeyOutcome.GENERATED, KeyOutcome.UNCHANGED, KeyOutcome.CHANGED,
                             KeyOutcome.RECOVERED})
#: Outcomes whose key is reported with the captured answer the journal holds for it, when it
#: holds one (a pre-existing endorsement key has one, a kept client key none).
REPORTED_OUTCOMES = ANSWER_OUTCOMES | {KeyOutcome.PRE_EXISTING}


class CertOutcome(enum.StrEnum):
    """What happened to a key's client certificate or CA chain (``certificate.outcome``,
    ``ca_chain.outcome`` in the manifest)."""

    ISSUED = "issued"  #: a certificate was issued for this CSR and written
    WRITTEN = "written"  #: the chain was written
    UNCHANGED = "unchanged"  #: it was already on the device
    REWRITTEN = "rewritten"  #: fleet's confirmed certificate or chain was missing: written again
    PRE_EXISTING = "pre-existing"  #: one fleet did not write was kept
    FAILED = "failed"
    #: issued (or chosen, for a chain) to be written, and the run stopped before the modem was
    #: seen to list it: it may be on the device; the next run finds out
    INTERRUPTED = "interrupted"


class DeviceOutcome(enum.StrEnum):
    """What happened to one device."""

    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  #: the run stopped while the slot was being worked on
    NOT_STARTED = "not-started"  #: the run stopped before the slot's turn came (--concurrency)


def outcome_word(outcome: str, *, check: bool) -> str:
    """A device outcome as the screen says it: in ``--check`` a device the check went through
    is ``checked`` (nothing was done to it; the document keeps its outcome ``done``)."""
    return "checked" if check and outcome == DeviceOutcome.DONE else outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """One key of one device."""

    name: str
    sec_tag: int
    type: str  #: "client_key" or "endorsement_key"
    response: str  #: "csr" or "public_key"
    outcome: KeyOutcome
    keygen_answer: str | None = None  #: the raw "<body>.<cose>" value, as the modem sent it
    csr_pem: str | None = None
    public_key_pem: str | None = None
    cose_payload: dict[str, Any] | None = None  #: KeygenPayload.to_dict()
    error: str | None = None
    attempts: int = 0
    #: fleet deleted the key that was in this sec_tag in this run (`if_exists: replace`, or an
    #: unseen key being recovered), whatever came after
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  #: later additions (certificates...)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationRecord:
    """The ``%ATTESTTOKEN`` a device gave in a run (plans with ``attestation_token: true``)."""

    token: str  #: ``<b64url CBOR body>.<b64url COSE_Sign1>``, as the modem sent it
    read_at: str  #: RFC 3339, UTC


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRecord:
    """One device (identified by IMEI) in one slot."""

    slot: str
    port: str
    imei: str | None
    device_uuid: str | None
    model: str | None
    firmware: str | None
    outcome: DeviceOutcome
    keys: tuple[KeyRecord, ...] = ()
    error: str | None = None
    #: a write may have reached the device in this invocation (a delete that succeeded, a
    #: %KEYGEN sent, a function mode or a certificate written): Ansible's ``changed``
    changed: bool = False
    usb: UsbIdentity | None = None  #: the USB identity of ``port``, when a usb: form found it
    #: how fleet reached the device: ``at`` or ``shell``, and the line end it sent (``cr``,
    #: ``lf``, ``crlf``, ``nul``); None when it was not reached
    interface: str | None = None
    terminator: str | None = None
    attestation: AttestationRecord | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One `fleet run`."""

    run_id: str
    station: str
    plan_path: str
    plan_sha256: str
    started_at: str  #: RFC 3339, UTC
    ended_at: str
    complete: bool  #: False for a partial (interrupted) run
    tool_version: str
    devices: tuple[DeviceRecord, ...] = ()
