"""The one builder of a run's records: the manifest's devices, the ``--json`` document and the
end-of-run summary all come from the :class:`fleet.records.RunRecord` built here.

How this works
--------------
A real run's record is built from the journal alone (:meth:`fleet.journal.Journal.run_report`),
never from what the slots kept in memory, so what is signed, what Ansible reads and what the
operator sees cannot drift apart:

- every planned slot appears: a slot the run never reached is ``not-started``, one whose
  invocation died is ``interrupted``;
- a key whose ``%KEYGEN`` was sent and never answered is ``interrupted``, not ``not-attempted``;
- the fields derived from a captured ``%KEYGEN`` answer (CSR, public key, COSE payload) are
  derived again from the answer, which is checked again (every structural rule, the key's
  sec_tag and payload id, the device's UUID): a damaged journal row is reported as a failed key
  saying so, never as a key;
- a device's ``changed`` is whether a write to it may have reached it in this invocation (from
  the journal's steps: a delete, a ``%KEYGEN``, a function mode or a certificate write that the
  modem did not refuse).

``--check`` writes nothing to the journal: its record is built from the slots' results
(:func:`check_record`), and goes through the same document and summary builders.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from fleet import __version__
from fleet.at import delete_credential
from fleet.certs.report import certificate_extra
from fleet.credentials import (
    CredentialType,
    Expectation,
    KeygenAnswer,
    attest_token_problem,
    check_keygen,
    parse_keygen,
)
from fleet.errors import CredentialError
from fleet.journal import CertState, KeyRow, RunInfo, RunReport, SlotRow
from fleet.manifest import RESPONSE_PAYLOAD_IDS, answer_fields
from fleet.plan import KeySpec, Plan, Slot
from fleet.records import (
    ANSWER_OUTCOMES,
    REPORTED_OUTCOMES,
    AttestationRecord,
    CertOutcome,
    DeviceOutcome,
    DeviceRecord,
    KeyOutcome,
    KeyRecord,
    RunRecord,
    outcome_word,
)

__all__ = ["FINAL_OUTCOMES", "build_run_record", "check_record", "run_document",
           "summary_lines"]

#: Device outcomes after which a slot needs nothing more from this run.
FINAL_OUTCOMES = frozenset({DeviceOutcome.DONE, DeviceOutcome.FAILED})
_TYPES: Mapping[int, str] = {CredentialType.CLIENT_PRIVATE_KEY: "client_key",
                             CredentialType.ENDORSEMENT_KEY: "endorsement_key"}
_CERT, _CHAIN = CredentialType.CLIENT_CERT, CredentialType.ROOT_CA_CERT
_INTERRUPTED_WRITE = ("a write to this key (%KEYGEN or a delete) was sent and its answer never "
                      "arrived (the run stopped, or the device was lost, first): the next run "
                      "finds out what the device holds (a key nobody saw is recovered)")
_UNCAPTURED_ANSWER = ("its %KEYGEN was answered, but fleet did not capture the answer (for the "
                      "reason above): a key nobody can vouch for may be on the device; the next "
                      "run finds out what the device holds (and recovers such a key)")


def not_attempted(key: KeySpec, **extra: Any) -> KeyRecord:
    """The record of a key that was never worked on (or, in ``--check``, only planned)."""
    return KeyRecord(name=key.name, sec_tag=key.sec_tag, type=key.type.value,
                     response=key.response.value, outcome=KeyOutcome.NOT_ATTEMPTED, extra=extra)


def not_started(slot: Slot, why: str = "the run stopped before this slot's turn came"
                ) -> DeviceRecord:
    """The record of a slot the run stopped before reaching (or, ``why``, never worked on)."""
    return DeviceRecord(slot=slot.name, port=slot.port, imei=None, device_uuid=None, model=None,
                        firmware=None, outcome=DeviceOutcome.NOT_STARTED,
                        keys=tuple(not_attempted(k) for k in slot.keys), error=why,
                        usb=slot.usb)


_UNSELECTED = "not worked on yet: the run so far was limited to other slots (--only)"


def _answer_problem(answer: KeygenAnswer, row: KeyRow, response: str,
                    device_uuid: str | None) -> str | None:
    """Why a journaled answer cannot be this key's (None: it can): every rule of
    :func:`fleet.credentials.check_keygen`, with the key's sec_tag and payload id and the
    device's UUID as expected (no UUID: the caller says why)."""
    try:
        device = None if device_uuid is None else uuid.UUID(device_uuid)
    except ValueError:
        return f"the device UUID the journal holds, {device_uuid!r}, is not a UUID"
    expect = Expectation(sec_tag=row.sec_tag, payload_id=RESPONSE_PAYLOAD_IDS[response],
                         device_uuid=device)
    failed = [check.detail for check in check_keygen(answer, expect) if not check.ok]
    return "; ".join(failed) or None


def _failed_key(row: KeyRow, response: str, error: str) -> KeyRecord:
    return KeyRecord(name=row.key_name, sec_tag=row.sec_tag,
                     type=_TYPES.get(row.key_type, "unknown"), response=response,
                     outcome=KeyOutcome.FAILED, attempts=row.attempts, deleted=row.deleted,
                     error=error)


def _key_record(row: KeyRow, spec: KeySpec | None, device_uuid: str | None,
                certs: Mapping[tuple[str, int, int], CertState]) -> KeyRecord:
    response = spec.response.value if spec is not None else (
        "csr" if row.key_type == CredentialType.CLIENT_PRIVATE_KEY else "public_key")
    outcome, error = row.outcome, row.error
    unresolved = _UNCAPTURED_ANSWER if row.answer_not_captured else _INTERRUPTED_WRITE
    if outcome is KeyOutcome.NOT_ATTEMPTED and row.write_unresolved:
        outcome, error = KeyOutcome.INTERRUPTED, error or unresolved
    elif outcome is KeyOutcome.FAILED and row.write_unresolved:
        # The key gave up with a write unresolved (no retry left, or none could reopen the
        # port): not a key that is not there, but one nobody knows of.
        outcome, error = KeyOutcome.INTERRUPTED, f"{error}; {unresolved}"
    if outcome in ANSWER_OUTCOMES and row.answer is None:
        # An earlier invocation of the run captured it; a later one lost the capture (a new
        # %KEYGEN for the tag, or the capture taken back): the record has no answer to show.
        outcome, error = (KeyOutcome.INTERRUPTED, unresolved) if row.write_unresolved \
            else (KeyOutcome.FAILED, error or "the journal no longer holds the answer this run "
                  "captured for this key: the next run finds out what the device holds")
    answer: KeygenAnswer | None = None
    reported = outcome in REPORTED_OUTCOMES
    if row.answer is not None and (reported or outcome is KeyOutcome.FAILED):
        try:
            if not isinstance(row.answer, str):  # SQLite keeps what an edit stored: a BLOB
                raise CredentialError(f"it is {type(row.answer).__name__}, not text")
            answer = parse_keygen(row.answer)
            problem = _answer_problem(answer, row, response, device_uuid)
        except CredentialError as exc:
            problem = f"it does not decode ({exc})"
        if problem is not None and not reported:
            answer = None  # a failed key keeps its own error; its answer is left out
        elif problem is not None:
            return _failed_key(row, response, f"the journal's captured answer for this key is "
                               f"not reported: {problem} (the journal was changed outside "
                               "fleet: restore it from a backup, or delete the key with "
                               f"{delete_credential(row.sec_tag, row.key_type)} so that the next "
                               "run makes a new one)")
        elif device_uuid is None and reported:
            return _failed_key(row, response, "the journal holds no device UUID for this "
                               "device (a journal written by an earlier fleet): the next run "
                               "confirms it with %ATTESTTOKEN and reports the key")
    extra: dict[str, Any] = {"cmng_sha256": row.cmng_sha} if row.cmng_sha else {}
    if spec is not None and spec.ca is not None and answer is not None:
        where = (row.imei, row.sec_tag)
        extra.update(certificate_extra(
            certs.get((*where, _CERT)), certs.get((*where, _CHAIN)) if spec.ca.chain else None,
            csr_sha256=hashlib.sha256(answer.body).hexdigest()))
    # A key that failed only because its certificate did keeps its captured answer.
    cert_failed = extra.get("certificate", {}).get("outcome") == CertOutcome.FAILED
    fields: dict[str, Any] = {}
    if answer is not None and (reported or cert_failed):
        fields = answer_fields(answer)
    return KeyRecord(
        name=row.key_name, sec_tag=row.sec_tag, type=_TYPES.get(row.key_type, "unknown"),
        response=response, outcome=outcome, error=error, attempts=row.attempts,
        deleted=row.deleted, extra=extra, **fields)


def _device_record(row: SlotRow, slot: Slot | None, plan: Plan, keys: Sequence[KeyRow],
                   certs: Mapping[tuple[str, int, int], CertState]) -> DeviceRecord:
    order = {name: i for i, name in enumerate(plan.keys)}
    by_name = {k.key_name: k for k in keys}
    records = [_key_record(k, plan.keys.get(k.key_name), row.device_uuid, certs)
               for k in sorted(keys, key=lambda k: order.get(k.key_name, len(order)))]
    if slot is not None:  # planned keys the journal has no result for were never reached
        records += [not_attempted(spec) for spec in slot.keys if spec.name not in by_name]
        records.sort(key=lambda k: order.get(k.name, len(order)))
    outcome = row.outcome or DeviceOutcome.INTERRUPTED
    error = row.error if row.outcome is not None else (
        row.error or "the invocation working on this slot stopped before it finished")
    failed = [k for k in records if k.outcome is KeyOutcome.FAILED]
    if outcome is DeviceOutcome.DONE and failed:  # a key the journal cannot vouch for
        outcome = DeviceOutcome.FAILED
        error = "; ".join(f"{k.name}: {k.error}" for k in failed)
    device_uuid = _uuid_or_none(row.device_uuid)
    attestation, problem = _attestation(row, device_uuid)
    if problem is not None:
        outcome = DeviceOutcome.FAILED
        error = "; ".join(filter(None, (error, problem)))
    return DeviceRecord(slot=row.slot, port=row.port, imei=row.imei,
                        device_uuid=device_uuid, model=row.model,
                        firmware=row.firmware, outcome=outcome, keys=tuple(records),
                        error=error, changed=row.changed, usb=row.usb,
                        interface=row.interface, terminator=row.terminator,
                        attestation=attestation)


def _attestation(row: SlotRow, device_uuid: str | None
                 ) -> tuple[AttestationRecord | None, str | None]:
    """The journal's attestation token of the device, checked again: one that is not this
    device's is never reported (the device fails, saying why)."""
    if row.attestation_token is None:
        return None, None
    problem = attest_token_problem(row.attestation_token,
                                   None if device_uuid is None else uuid.UUID(device_uuid))
    if problem is None and not row.attestation_read_at:
        problem = "the journal holds no time it was read"
    if problem is not None or row.attestation_read_at is None:
        return None, f"the journal's attestation token is not reported: {problem}"
    return AttestationRecord(token=row.attestation_token, read_at=row.attestation_read_at), None


def _uuid_or_none(text: str | None) -> str | None:
    """The journal's device UUID when it is one (a damaged one is reported by each key that
    would carry it, never signed)."""
    try:
        return None if text is None else str(uuid.UUID(text))
    except ValueError:
        return None


def build_run_record(report: RunReport, plan: Plan, run: RunInfo, *, ended_at: str,
                     complete: bool, unrecorded: Mapping[str, DeviceRecord] | None = None,
                     ) -> RunRecord:
    """The record of ``run`` as the journal has it (see the module docstring).

    ``complete`` is what the caller asks for (the run was neither interrupted nor limited to
    some slots); the record is complete only when, besides, every planned slot's latest device
    reached a final outcome. ``unrecorded`` (only for a journal that failed, whose record is
    never signed): what the slots of this invocation saw, for the slots the journal has no row
    of; they are reported as failed, never as not started.
    """
    certs = {(c.imei, c.sec_tag, c.type): c for c in report.certs}
    keys: dict[tuple[str, str], list[KeyRow]] = {}
    for key in report.keys:
        keys.setdefault((key.slot, key.imei), []).append(key)
    rows: dict[str, list[SlotRow]] = {}
    for row in report.slots:
        rows.setdefault(row.slot, []).append(row)
    devices: list[DeviceRecord] = []
    final = True
    planned = {slot.name: slot for slot in plan.slots}
    for slot in plan.slots:
        slot_rows = rows.get(slot.name, [])
        if not slot_rows:
            memory = (unrecorded or {}).get(slot.name)
            if memory is None:
                devices.append(not_started(slot))
            else:
                devices.append(replace(memory, outcome=DeviceOutcome.FAILED,
                                       error=memory.error or "its result was not journaled"))
            final = False
            continue
        records = [_device_record(r, slot, plan, keys.get((r.slot, r.imei or ""), []), certs)
                   for r in slot_rows]
        devices += records
        # The slot's latest device must be finished; when the latest attempt never learnt
        # which board was there, so must every earlier one (it may be that same board). A
        # board swapped out for another (a later IMEI) does not hold the run open.
        settled = records if records[-1].imei is None else records[-1:]
        final = final and all(r.outcome in FINAL_OUTCOMES for r in settled)
    for slot in plan.unselected:  # --only: the plan's other slots, as far as the run got
        slot_rows = rows.get(slot.name, [])
        devices += [_device_record(r, slot, plan, keys.get((r.slot, r.imei or ""), []), certs)
                    for r in slot_rows] or [not_started(slot, _UNSELECTED)]
    planned.update((slot.name, slot) for slot in plan.unselected)
    for name, slot_rows in rows.items():  # slots no longer in the plan
        if name not in planned:
            devices += [_device_record(r, None, plan, keys.get((r.slot, r.imei or ""), []),
                                       certs) for r in slot_rows]
    return RunRecord(run_id=run.run_id, station=plan.station, plan_path=str(plan.path),
                     plan_sha256=plan.sha256, started_at=run.started_at, ended_at=ended_at,
                     complete=complete and final, tool_version=__version__,
                     devices=tuple(devices))


def check_record(plan: Plan, run: RunInfo, devices: Mapping[str, DeviceRecord], *,
                 ended_at: str) -> RunRecord:
    """The record of a ``--check`` run (nothing journaled): each slot's result as it came,
    ``not-started`` for a slot it never reached."""
    return RunRecord(run_id=run.run_id, station=plan.station, plan_path=str(plan.path),
                     plan_sha256=plan.sha256, started_at=run.started_at, ended_at=ended_at,
                     complete=False, tool_version=__version__,
                     devices=(*(devices.get(s.name) or not_started(s) for s in plan.slots),
                              *(not_started(s, _UNSELECTED) for s in plan.unselected)))


def _key_document(key: KeyRecord) -> dict[str, Any]:
    document = {"name": key.name, "sec_tag": key.sec_tag, "type": key.type,
                "response": key.response, "outcome": key.outcome.value, "error": key.error,
                "attempts": key.attempts, "deleted": key.deleted, "csr_pem": key.csr_pem,
                "public_key_pem": key.public_key_pem}
    document.update({name: key.extra[name] for name in ("certificate", "ca_chain")
                     if name in key.extra})
    return document


def run_document(record: RunRecord, *, check: bool, resumed: bool, interrupted: bool,
                 manifest: str | None, manifest_error: str | None,
                 journal_error: str | None = None,
                 planned: Mapping[str, Iterable[dict[str, Any]]] | None = None,
                 ) -> dict[str, Any]:
    """The one JSON document `fleet run --json` prints (what Ansible reads), from ``record``.
    ``planned`` (``--check``): per slot, what a real run would do."""
    devices = []
    counts: dict[str, int] = {}
    for device in record.devices:
        counts[device.outcome.value] = counts.get(device.outcome.value, 0) + 1
        entry: dict[str, Any] = {
            "slot": device.slot, "port": device.port, "imei": device.imei,
            "device_uuid": device.device_uuid, "model": device.model,
            "firmware": device.firmware, "interface": device.interface,
            "terminator": device.terminator, "outcome": device.outcome.value,
            "error": device.error,
            "changed": device.changed, "keys": [_key_document(k) for k in device.keys],
            "usb": device.usb.to_dict() if device.usb is not None else None,
            "attestation_token": device.attestation.token if device.attestation else None,
        }
        if check:
            entry["planned"] = list((planned or {}).get(device.slot, ()))
        devices.append(entry)
    failed = any(d.outcome is DeviceOutcome.FAILED for d in record.devices)
    return {
        "changed": any(d.changed for d in record.devices),
        "failed": failed or manifest_error is not None or journal_error is not None,
        "interrupted": interrupted,
        "check": check,
        "run_id": record.run_id,
        "resumed": resumed,
        "station": record.station,
        "plan": record.plan_path,
        "complete": record.complete,
        "manifest": manifest,
        "manifest_error": manifest_error,
        "journal_error": journal_error,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "summary": {"devices": len(devices), **counts},
        "devices": devices,
    }


def _key_words(key: dict[str, Any]) -> str:
    words = f"{key['name']}={key['outcome']}"
    for part, label in (("certificate", "cert"), ("ca_chain", "chain")):
        if isinstance(key.get(part), Mapping):
            words += f" {label}={key[part]['outcome']}"
    if key.get("deleted"):
        words += " (old key deleted)"
    return words


def _summary_line(document: Mapping[str, Any]) -> str:
    """The last word on a run, e.g. ``ok: 8 devices: 8 done; devices were changed``."""
    summary = dict(document["summary"])
    total = summary.pop("devices", 0)
    counts = ", ".join(f"{n} {outcome_word(outcome, check=document['check'])}"
                       for outcome, n in summary.items())
    line = f"{total} device{'' if total == 1 else 's'}" + (f": {counts}" if counts else "")
    if document["check"]:
        line += "; a real run would " + ("change them" if document["changed"] else
                                         "change nothing")
        # a key a real run would fail fails its device: the check says so, not only "ok"
        failing = sum(any(p["action"] == "fail" for p in d.get("planned", ()))
                      for d in document["devices"])
        if failing:
            line += f" and fail {failing} device{'' if failing == 1 else 's'} (see above)"
    else:
        line += "; devices were changed" if document["changed"] else "; nothing was changed"
    if document["interrupted"]:
        return f"interrupted: {line}; run again to resume"
    return f"{'FAILED' if document['failed'] else 'ok'}: {line}"


def summary_lines(document: Mapping[str, Any]) -> list[str]:
    """The end-of-run summary an operator reads, line by line, from the ``--json`` document
    (so the screen says what the document and the manifest say)."""
    lines = []
    for device in document["devices"]:
        # --check: the lines below say what a real run would do to each key
        keys = "" if document["check"] else ", ".join(_key_words(k) for k in device["keys"])
        outcome = outcome_word(device["outcome"], check=document["check"])
        line = f"{device['slot']:<10} {device['imei'] or '-':<16} {outcome:<12} {keys}".rstrip()
        if device["error"]:
            line += f"  ({device['error']})"
        lines.append(line)
        for key in device["keys"]:
            cert = key.get("certificate")
            if isinstance(cert, Mapping) and cert.get("serial"):
                lines.append(f"{'':<10} {key['name']}: certificate serial {cert['serial']} "
                             f"from {cert['issuer']}, valid until {cert['not_after']}")
        for planned in device.get("planned", []):
            action = ("nothing to do" if planned["action"] == "nothing"
                      else f"would {planned['action']}")
            lines.append(f"{'':<10} {planned['name']} (sec_tag {planned['sec_tag']}): "
                         f"{action}: {planned['reason']}")
    lines.append(_summary_line(document))
    if document["manifest"]:
        lines.append(f"manifest: {document['manifest']}")
    if document.get("manifest_error"):
        lines.append(f"manifest NOT written: {document['manifest_error']}")
    if document.get("journal_error"):
        lines.append(f"journal write FAILED: {document['journal_error']}")
    return lines
