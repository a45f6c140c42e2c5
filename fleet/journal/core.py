"""The journal's runs, devices, keys, steps and per-run results (see :mod:`fleet.journal`)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from fleet.credentials import CredentialType
from fleet.errors import JournalError
from fleet.journal.certs import CertJournal
from fleet.journal.records import (
    DeviceInfo,
    KeyResult,
    KeyRow,
    RunInfo,
    RunReport,
    SlotRow,
    utc_now,
)
from fleet.journal.schema import (
    CERT_FIELDS,
    KEY_COLUMNS,
    cert_state,
    key_state,
    key_states,
    record_keygen_intent,
    usb_column,
    usb_from_column,
)
from fleet.records import REPORTED_OUTCOMES, DeviceOutcome, KeyOutcome
from fleet.state import KeyState, KeyStateKind
from fleet.usbid import UsbIdentity

__all__ = ["WRITE_ACTIONS", "Journal"]

#: Outcomes of earlier invocations of the same run that a later one must not hide.
_STICKY = (KeyOutcome.GENERATED, KeyOutcome.RECOVERED, KeyOutcome.CHANGED,
           KeyOutcome.PRE_EXISTING)
_HIDDEN_BY_STICKY = (KeyOutcome.UNCHANGED, KeyOutcome.FAILED, KeyOutcome.NOT_ATTEMPTED)
#: Step actions that write to the device: one not refused by the modem may have changed it
#: (except a %KEYGEN for an endorsement key that was there: it answers with that key).
WRITE_ACTIONS = ("keygen", "delete", "cfun", "cert_write", "chain_write")


class Journal(CertJournal):
    """Open with :meth:`open`; every method is durable when it returns."""

    # --- runs ----------------------------------------------------------------------------------

    async def start_run(self, *, run_id: str, plan_path: str, plan_sha256: str, station: str,
                        tool_version: str, fresh: bool) -> RunInfo:
        """Resume the latest unfinished run of the same plan, or start ``run_id``."""

        def op(conn: sqlite3.Connection) -> RunInfo:
            # Only the run holding the lock writes, so an intent without an outcome belongs to
            # a run that died: its effect is unknown (pending %KEYGEN intents stay pending).
            conn.execute("UPDATE steps SET outcome = 'unknown', error = 'the run died before "
                         "the outcome was recorded', done_at = ? WHERE outcome IS NULL",
                         (utc_now(),))
            conn.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
            steps_before = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM steps")
                               .fetchone()[0])
            if not fresh:
                row = conn.execute(
                    "SELECT run_id, started_at FROM runs WHERE plan_sha256 = ? AND station = ? "
                    "AND status = 'interrupted' ORDER BY started_at DESC LIMIT 1",
                    (plan_sha256, station)).fetchone()
                if row is not None:
                    conn.execute("UPDATE runs SET status = 'running', pid = ? WHERE run_id = ?",
                                 (os.getpid(), row[0]))
                    return RunInfo(run_id=row[0], started_at=row[1], resumed=True,
                                   steps_before=steps_before)
            now = utc_now()
            conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running', ?, ?)",
                         (run_id, plan_path, plan_sha256, station, now, os.getpid(),
                          tool_version))
            return RunInfo(run_id=run_id, started_at=now, resumed=False,
                           steps_before=steps_before)

        return await self._execute(op)

    async def finish_run(self, run_id: str, *, status: str, ended_at: str | None = None) -> str:
        """Mark the run ``complete`` or ``interrupted`` (a later run of the plan resumes an
        interrupted one); returns the end time."""
        now = ended_at or utc_now()
        await self._execute(lambda c: c.execute(
            "UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ?", (status, now, run_id)))
        return now

    # --- devices and keys ----------------------------------------------------------------------

    async def device_seen(self, *, imei: str, model: str, firmware: str,
                          device_uuid: str | None, run_id: str | None = None,
                          slot: str | None = None, port: str | None = None,
                          usb: UsbIdentity | None = None, interface: str | None = None,
                          terminator: str | None = None) -> DeviceInfo:
        """Record the device; returns what the journal knew of it before. With ``run_id``, the
        slot's device row of the run is made in the same transaction (no outcome yet: a run
        killed from here on still reports the device, ``interrupted``), with the identity of
        the board the slot holds, the USB identity of its port and the line it was reached
        through (``interface``, ``terminator``)."""

        def op(conn: sqlite3.Connection) -> DeviceInfo:
            now = utc_now()
            row = conn.execute("SELECT device_uuid, restore_mode FROM devices WHERE imei = ?",
                               (imei,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, NULL)",
                             (imei, device_uuid, model, firmware, now, now))
                info = DeviceInfo(keys=key_states(conn, imei))
            else:
                conn.execute(
                    "UPDATE devices SET model = ?, firmware = ?, last_seen = ?, "
                    "device_uuid = COALESCE(device_uuid, ?) WHERE imei = ?",
                    (model, firmware, now, device_uuid, imei))
                info = DeviceInfo(device_uuid=row[0], restore_mode=row[1],
                                  keys=key_states(conn, imei))
            if run_id is not None and slot is not None and port is not None:
                conn.execute("DELETE FROM run_devices WHERE run_id = ? AND slot = ? AND "
                             "imei = ''", (run_id, slot))
                conn.execute(
                    "INSERT INTO run_devices (run_id, slot, imei, port, outcome, error, "
                    "updated_at, device_uuid, model, firmware, usb, interface, terminator) "
                    "VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, "
                    "slot, imei) DO UPDATE SET port = excluded.port, updated_at = "
                    "excluded.updated_at, device_uuid = COALESCE(excluded.device_uuid, "
                    "device_uuid), model = excluded.model, firmware = excluded.firmware, "
                    "usb = excluded.usb, interface = excluded.interface, "
                    "terminator = excluded.terminator",
                    (run_id, slot, imei, port, now, info.device_uuid or device_uuid, model,
                     firmware, usb_column(usb), interface, terminator))
            return info

        return await self._execute(op)

    async def device_info(self, imei: str) -> DeviceInfo:
        """What the journal knows of a device (read only)."""

        def op(conn: sqlite3.Connection) -> DeviceInfo:
            row = conn.execute("SELECT device_uuid, restore_mode FROM devices WHERE imei = ?",
                               (imei,)).fetchone()
            if row is None:
                return DeviceInfo(keys=key_states(conn, imei))
            return DeviceInfo(device_uuid=row[0], restore_mode=row[1],
                              keys=key_states(conn, imei))

        return await self._execute(op)

    async def set_restore_mode(self, imei: str, mode: int | None) -> None:
        """Remember the function mode to restore (set before fleet changes it; ``None`` once it
        is restored), so a run killed while the modem was offline restores the right mode."""
        if mode is None:
            await self._execute(lambda c: c.execute(
                "UPDATE devices SET restore_mode = NULL WHERE imei = ?", (imei,)))
        else:
            await self._execute(lambda c: c.execute(
                "UPDATE devices SET restore_mode = COALESCE(restore_mode, ?) WHERE imei = ?",
                (mode, imei)))

    async def model_of(self, imei: str) -> str | None:
        """The model recorded for an IMEI, if any."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT model FROM devices WHERE imei = ?", (imei,)).fetchone()
            return None if row is None or not row[0] else str(row[0])

        return await self._execute(op)

    async def claim_device_uuid(self, imei: str, device_uuid: str, *, run_id: str | None = None,
                                slot: str | None = None) -> str | None:
        """Record ``device_uuid`` for ``imei`` (and for the slot's device row of ``run_id``)
        unless the journal knows it under another IMEI; returns that other IMEI (nothing
        recorded), or None. One transaction."""
        return await self._execute(
            lambda conn: _claim_device_uuid(conn, imei, device_uuid, run_id=run_id, slot=slot))

    async def device_uuid_owner(self, imei: str, device_uuid: str) -> str | None:
        """The other IMEI the journal knows ``device_uuid`` under, if any (read only)."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT imei FROM devices WHERE device_uuid = ? AND imei != ? "
                               "LIMIT 1", (device_uuid, imei)).fetchone()
            return None if row is None else str(row[0])

        return await self._execute(op)

    async def key_state(self, imei: str, sec_tag: int, key_type: int) -> KeyState:
        def op(conn: sqlite3.Connection) -> KeyState:
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM keys WHERE imei = ? AND sec_tag = ? AND type = ?",
                (imei, sec_tag, key_type)).fetchone()
            return KeyState() if row is None else key_state(row)

        return await self._execute(op)

    # --- steps ---------------------------------------------------------------------------------

    async def intent(self, *, run_id: str, slot: str, imei: str | None, action: str,
                     key_name: str | None = None, sec_tag: int | None = None,
                     key_type: int | None = None, attempt: int = 1, command: str | None = None,
                     detail: dict[str, Any] | None = None) -> int:
        """Durably record that ``action`` is about to be done; returns the step id.

        For ``action="keygen"`` the key's pending intent is set (``detail["present_before"]``).
        """

        def op(conn: sqlite3.Connection) -> int:
            now = utc_now()
            cur = conn.execute(
                "INSERT INTO steps (run_id, slot, imei, key_name, sec_tag, type, action, "
                "attempt, command, detail, intent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, slot, imei, key_name, sec_tag, key_type, action, attempt, command,
                 json.dumps(detail or {}, sort_keys=True), now))
            step_id = int(cur.lastrowid or 0)
            if action == "keygen" and imei is not None:
                record_keygen_intent(conn, step_id, imei, sec_tag, key_type,
                                      present_before=bool((detail or {}).get("present_before")),
                                      now=now)
            return step_id

        return await self._execute(op)

    async def outcome(self, step_id: int, *, outcome: str, answer: str | None = None,
                      error: str | None = None, cmng_sha: str | None = None,
                      derived: dict[str, Any] | None = None,
                      result: KeyResult | None = None,
                      device_uuid: str | None = None) -> str | None:
        """Durably record the outcome of a step (``ok``, ``error`` or ``unknown``), and with
        ``result`` the key's result in the run too, in the same transaction (as
        :meth:`key_result`: one journal round trip instead of two).

        A ``keygen`` step with ``ok`` stores the captured answer as the key's state; ``ok`` or
        ``error`` resolve the key's pending intent; ``unknown`` leaves it pending. A ``delete``
        step with ``ok`` clears the key's state.

        ``device_uuid`` (a ``keygen`` ``ok`` of a device whose UUID the journal does not hold
        yet) is claimed for the step's IMEI in the same transaction as the capture, so no
        captured answer is ever without its device's UUID. When the journal knows that UUID
        under another IMEI nothing is captured (the step becomes ``unknown``, its key stays
        pending) and that IMEI is returned; otherwise None.
        """
        if outcome not in ("ok", "error", "unknown"):
            raise ValueError(f"invalid step outcome {outcome!r}")

        def op(conn: sqlite3.Connection) -> str | None:
            now = utc_now()
            row = conn.execute("SELECT action, imei, sec_tag, type, run_id, slot FROM steps "
                               "WHERE id = ?", (step_id,)).fetchone()
            if row is None:
                raise JournalError(f"no step {step_id}")
            action, imei, sec_tag, key_type, run_id, slot = row
            if action == "keygen" and outcome == "ok" and device_uuid is not None:
                owner = _claim_device_uuid(conn, imei, device_uuid, run_id=run_id, slot=slot)
                if owner is not None:
                    conn.execute("UPDATE steps SET outcome = 'unknown', answer = ?, error = ?, "
                                 "done_at = ? WHERE id = ?",
                                 (answer, f"device UUID {device_uuid} belongs to IMEI {owner}",
                                  now, step_id))
                    return owner
            conn.execute("UPDATE steps SET outcome = ?, answer = ?, error = ?, done_at = ? "
                         "WHERE id = ?", (outcome, answer, error, now, step_id))
            key = (imei, sec_tag, key_type)
            if action == "keygen" and outcome == "ok":
                extra = derived or {}
                payload = extra.get("cose_payload")
                conn.execute("UPDATE keys SET state = 'captured', answer = ?, cmng_sha = ?, "
                             "run_id = ?, updated_at = ?, pending_step = NULL, disputed = NULL, "
                             "csr_pem = ?, "
                             "public_key_pem = ?, cose_payload = ? WHERE imei = ? "
                             "AND sec_tag = ? AND type = ?",
                             (answer, cmng_sha, run_id, now, extra.get("csr_pem"),
                              extra.get("public_key_pem"),
                              json.dumps(payload, sort_keys=True) if payload else None, *key))
            elif action == "keygen" and outcome == "error":
                # The modem refused it: this %KEYGEN made nothing. An earlier unresolved one it
                # superseded may still have made the key (a 519 says a key is there): that one
                # is pending again.
                detail = json.loads(conn.execute("SELECT detail FROM steps WHERE id = ?",
                                                 (step_id,)).fetchone()[0] or "{}")
                earlier = detail.get("supersedes") or {}
                conn.execute("UPDATE keys SET pending_step = ?, pending_present_before = ?, "
                             "updated_at = ? WHERE imei = ? AND sec_tag = ? AND type = ? "
                             "AND pending_step = ?",
                             (earlier.get("step"), 1 if earlier.get("present_before") else 0,
                              now, *key, step_id))
            elif action == "delete" and outcome == "ok":
                conn.execute("UPDATE keys SET state = 'deleted', answer = NULL, cmng_sha = NULL, "
                             "csr_pem = NULL, public_key_pem = NULL, cose_payload = NULL, "
                             "pending_step = NULL, disputed = NULL, updated_at = ? WHERE imei = ? "
                             "AND sec_tag = ? AND type = ?", (now, *key))
            if result is not None:
                _record_key_result(conn, result)
            return None

        return await self._execute(op)

    async def another_boards_answer(self, step_id: int, *, answer: str, error: str,
                                    previous: KeyState) -> None:
        """A ``keygen`` step answered by another board than the one the journal knows under its
        IMEI (or by the real board with a corrupted answer: nobody can tell): the step's outcome
        is ``unknown``, and the key's state goes back to ``previous`` (what the journal held
        before this invocation worked on the key), disputed with ``error``. No pending intent of
        the other board is left for a later run to take as the real board's (it would delete
        a key it never made), and the captured answer is not reported for a key that may not
        be the one on the device: the decision fails the key while the dispute stands."""

        def op(conn: sqlite3.Connection) -> None:
            now = utc_now()
            row = conn.execute("SELECT run_id, slot, imei, sec_tag, type FROM steps WHERE id = ? "
                               "AND action = 'keygen'", (step_id,)).fetchone()
            if row is None:
                raise JournalError(f"no keygen step {step_id}")
            conn.execute("UPDATE steps SET outcome = 'unknown', answer = ?, error = ?, "
                         "done_at = ? WHERE id = ?", (answer, error, now, step_id))
            pending = previous.pending
            conn.execute(
                "UPDATE keys SET state = ?, answer = ?, cmng_sha = ?, csr_pem = ?, "
                "public_key_pem = ?, cose_payload = ?, pending_step = ?, "
                "pending_present_before = ?, disputed = ?, updated_at = ? WHERE imei = ? "
                "AND sec_tag = ? AND type = ?",
                (str(previous.state or KeyStateKind.INTENT), previous.answer, previous.cmng_sha,
                 previous.csr_pem, previous.public_key_pem,
                 json.dumps(previous.cose_payload, sort_keys=True)
                 if previous.cose_payload else None,
                 pending.step_id if pending else None,
                 1 if pending and pending.present_before else 0, error, now, *row[2:]))
            _not_the_journals_board(conn, run_id=row[0], slot=row[1], imei=row[2],
                                    device_uuid=None)

        await self._execute(op)

    async def another_board(self, *, run_id: str, slot: str, imei: str,
                            device_uuid: str | None) -> None:
        """The board in ``slot`` attested ``device_uuid`` (None: it would not say), not the UUID
        the journal holds for ``imei``: the run's record of the slot gives the board's UUID,
        not the journal's."""
        await self._execute(lambda conn: _not_the_journals_board(
            conn, run_id=run_id, slot=slot, imei=imei, device_uuid=device_uuid))

    async def suspect_capture(self, *, imei: str, sec_tag: int, key_type: int,
                              reason: str) -> None:
        """Take back the capture of a key whose answer turned out wrong (its device UUID could
        not be confirmed): its %KEYGEN becomes unresolved again, so the next run treats the key
        as one fleet made but nobody saw the answer of (recovered)."""

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT id, detail FROM steps WHERE imei = ? AND sec_tag = ? AND type = ? AND "
                "action = 'keygen' AND outcome = 'ok' ORDER BY id DESC LIMIT 1",
                (imei, sec_tag, key_type)).fetchone()
            if row is None:
                return
            present = 1 if json.loads(row[1] or "{}").get("present_before") else 0
            conn.execute("UPDATE steps SET outcome = 'unknown', error = ? WHERE id = ?",
                         (reason, row[0]))
            conn.execute("UPDATE keys SET state = 'intent', answer = NULL, csr_pem = NULL, "
                         "public_key_pem = NULL, cose_payload = NULL, pending_step = ?, "
                         "pending_present_before = ?, updated_at = ? WHERE imei = ? AND "
                         "sec_tag = ? AND type = ?",
                         (row[0], present, utc_now(), imei, sec_tag, key_type))

        await self._execute(op)

    async def mark_pre_existing(self, *, imei: str, sec_tag: int, key_type: int,
                                cmng_sha: str | None) -> None:
        await self._execute(lambda c: c.execute(
            "INSERT INTO keys (imei, sec_tag, type, state, cmng_sha, updated_at) "
            "VALUES (?, ?, ?, 'pre-existing', ?, ?) ON CONFLICT (imei, sec_tag, type) DO UPDATE "
            "SET state = 'pre-existing', cmng_sha = excluded.cmng_sha, updated_at = "
            "excluded.updated_at WHERE keys.state IS NOT 'captured'",
            (imei, sec_tag, key_type, cmng_sha, utc_now())))

    async def set_cmng_shas(self, imei: str, shas: Mapping[tuple[int, int], str]) -> None:
        """Record the SHA-256 the modem listed for keys of ``imei``, by (sec_tag, type)."""
        await self._execute(lambda c: c.executemany(
            "UPDATE keys SET cmng_sha = ? WHERE imei = ? AND sec_tag = ? AND type = ?",
            [(sha, imei, sec_tag, key_type) for (sec_tag, key_type), sha in shas.items()]))

    async def attestation(self, *, run_id: str, slot: str, imei: str, token: str) -> None:
        """Keep the ``%ATTESTTOKEN`` just read from the device in the slot's row of the run
        (a later invocation of the run replaces it with the one it reads)."""
        await self._execute(lambda c: c.execute(
            "UPDATE run_devices SET attestation_token = ?, attestation_read_at = ? WHERE "
            "run_id = ? AND slot = ? AND imei = ?", (token, utc_now(), run_id, slot, imei)))

    # --- per-run results -----------------------------------------------------------------------

    async def slot_result(self, *, run_id: str, slot: str, port: str, imei: str | None,
                          outcome: str | None, error: str | None,
                          usb: UsbIdentity | None = None) -> None:
        """Record the result of the device in a slot for this run. A run resumed after the
        board in the slot was swapped keeps both devices (keyed by slot and IMEI); a slot that
        failed before its device was identified (IMEI unknown) is replaced by its device once
        a later invocation identifies it. ``usb``: the USB identity of the slot's port (None
        keeps what the row holds)."""

        def op(conn: sqlite3.Connection) -> None:
            if imei:
                conn.execute("DELETE FROM run_devices WHERE run_id = ? AND slot = ? AND imei = ''",
                             (run_id, slot))
            conn.execute(
                "INSERT INTO run_devices (run_id, slot, imei, port, outcome, error, updated_at, "
                "usb) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, slot, imei) DO UPDATE "
                "SET port = excluded.port, outcome = excluded.outcome, error = excluded.error, "
                "updated_at = excluded.updated_at, usb = COALESCE(excluded.usb, usb)",
                (run_id, slot, imei or "", port, outcome, error, utc_now(), usb_column(usb)))

        await self._execute(op)

    async def key_result(self, result: KeyResult) -> KeyOutcome:
        """Record a key's outcome in this run; returns the outcome kept. Within one run (which
        may span several invocations after interruptions) a later ``unchanged``, ``failed``,
        ``interrupted`` or ``not-attempted`` never replaces an earlier ``generated``/
        ``recovered``/``changed``/``pre-existing`` (a later failure's error is still recorded),
        unless ``replace``."""
        return await self._execute(lambda conn: _record_key_result(conn, result))

    async def run_report(self, run_id: str, *, steps_before: int = 0) -> RunReport:
        """Everything the journal holds of run ``run_id``, as typed records: each slot's device
        (``changed`` for writes after step ``steps_before``), each key's result with its
        captured answer, and the certificates with an outcome in the run."""
        writes = ", ".join(f"'{action}'" for action in WRITE_ACTIONS)
        same_key = ("d.run_id = r.run_id AND d.slot = r.slot AND d.imei = r.imei AND "
                    "d.sec_tag = r.sec_tag AND d.type = r.type")

        def op(conn: sqlite3.Connection) -> RunReport:
            slots = tuple(
                SlotRow(slot=r[0], port=r[1], imei=r[2] or None,
                        outcome=DeviceOutcome(r[3]) if r[3] else None, error=r[4],
                        device_uuid=r[5], model=r[6], firmware=r[7], attestation_token=r[8],
                        attestation_read_at=r[9], changed=bool(r[10]),
                        usb=usb_from_column(r[11]), interface=r[12], terminator=r[13])
                for r in conn.execute(
                    "SELECT s.slot, s.port, s.imei, s.outcome, s.error, s.device_uuid, s.model, "
                    "s.firmware, s.attestation_token, s.attestation_read_at, EXISTS (SELECT 1 "
                    "FROM steps w WHERE w.run_id = s.run_id AND w.slot = s.slot AND "
                    "w.imei = s.imei AND w.id > ? AND w.action IN "
                    f"({writes}) AND w.outcome IS NOT 'error' AND NOT (w.action = 'keygen' "
                    f"AND w.type = {int(CredentialType.ENDORSEMENT_KEY)} AND "
                    "COALESCE(json_extract(w.detail, '$.present_before'), 0))), s.usb, "
                    "s.interface, s.terminator FROM run_devices s WHERE s.run_id = ? "
                    "ORDER BY s.slot, s.updated_at",
                    (steps_before, run_id)))
            keys = tuple(
                KeyRow(slot=r[0], imei=r[1], key_name=r[2], sec_tag=r[3], key_type=r[4],
                       outcome=KeyOutcome(r[5]), error=r[6], attempts=r[7], answer=r[8],
                       cmng_sha=r[9], write_unresolved=bool(r[10] or r[11]),
                       deleted=bool(r[12]), answer_not_captured=bool(r[13]))
                for r in conn.execute(
                    "SELECT r.slot, r.imei, r.key_name, r.sec_tag, r.type, r.outcome, r.error, "
                    "r.attempts, CASE WHEN k.state = 'captured' THEN k.answer END, k.cmng_sha, "
                    "EXISTS (SELECT 1 FROM steps p WHERE p.id = k.pending_step AND "
                    "p.run_id = r.run_id AND p.slot = r.slot), "
                    # a delete whose answer never came, with nothing captured after it
                    f"EXISTS (SELECT 1 FROM steps d WHERE {same_key} AND d.action = 'delete' "
                    "AND d.outcome IS NOT 'ok' AND d.outcome IS NOT 'error' AND NOT EXISTS "
                    "(SELECT 1 FROM steps g WHERE g.run_id = d.run_id AND g.slot = d.slot AND "
                    "g.imei = d.imei AND g.sec_tag = d.sec_tag AND g.type = d.type AND "
                    "g.id > d.id AND g.action = 'keygen' AND g.outcome = 'ok')), "
                    # a delete the modem did not refuse: it may have taken effect
                    f"EXISTS (SELECT 1 FROM steps d WHERE {same_key} AND d.action = 'delete' "
                    "AND d.outcome IS NOT 'error'), "
                    # the pending %KEYGEN's answer came, and was not captured
                    "EXISTS (SELECT 1 FROM steps p WHERE p.id = k.pending_step AND "
                    "p.run_id = r.run_id AND p.slot = r.slot AND p.answer IS NOT NULL) "
                    "FROM run_keys r LEFT JOIN keys k ON k.imei = r.imei AND "
                    "k.sec_tag = r.sec_tag AND k.type = r.type WHERE r.run_id = ? "
                    "ORDER BY r.slot, r.key_name", (run_id,)))
            certs = tuple(cert_state(row) for row in conn.execute(
                f"SELECT {', '.join(CERT_FIELDS)} FROM certs WHERE run_id = ? "
                "ORDER BY imei, sec_tag, type", (run_id,)))
            return RunReport(slots=slots, keys=keys, certs=certs)

        return await self._execute(op)


def _record_key_result(conn: sqlite3.Connection, result: KeyResult) -> KeyOutcome:
    """The ``run_keys`` row of :meth:`Journal.key_result`; returns the outcome kept."""
    row = conn.execute("SELECT outcome, attempts FROM run_keys WHERE run_id = ? AND slot = ? "
                       "AND imei = ? AND key_name = ?",
                       (result.run_id, result.slot, result.imei, result.key_name)).fetchone()
    kept, total = result.outcome, result.attempts
    if row is not None:
        total += int(row[1])
        if (not result.replace and result.outcome in _HIDDEN_BY_STICKY
                and row[0] in _STICKY):
            kept = KeyOutcome(row[0])  # its captured answer stays this run's; the error is kept
    conn.execute("INSERT OR REPLACE INTO run_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (result.run_id, result.slot, result.imei, result.key_name, result.sec_tag,
                  result.key_type, kept.value, result.error, total, utc_now()))
    return kept


def _not_the_journals_board(conn: sqlite3.Connection, *, run_id: str, slot: str, imei: str,
                            device_uuid: str | None) -> None:
    """The slot's device row of the run made at identification gives the UUID the journal
    holds for the IMEI; the board there turned out to be another one: the row gives
    ``device_uuid`` (None: which board it is is not known). Unless the run already has an
    answer of the known board for this slot (a key reported with its answer, or one captured
    whose certificate then failed), which carries the journal's UUID: those keys are that
    board's, and the slot's error says what came after."""
    answered = ", ".join(f"'{outcome}'" for outcome in sorted(REPORTED_OUTCOMES))
    conn.execute(
        "UPDATE run_devices SET device_uuid = ? WHERE run_id = ? AND slot = ? AND imei = ? AND "
        "NOT EXISTS (SELECT 1 FROM run_keys k WHERE k.run_id = run_devices.run_id AND "
        f"k.slot = run_devices.slot AND k.imei = run_devices.imei AND k.outcome IN ({answered})) "
        "AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = run_devices.run_id AND "
        "s.slot = run_devices.slot AND s.imei = run_devices.imei AND s.action = 'keygen' AND "
        "s.outcome = 'ok')", (device_uuid, run_id, slot, imei))


def _claim_device_uuid(conn: sqlite3.Connection, imei: str, device_uuid: str, *,
                       run_id: str | None, slot: str | None) -> str | None:
    row = conn.execute("SELECT imei FROM devices WHERE device_uuid = ? AND imei != ? LIMIT 1",
                       (device_uuid, imei)).fetchone()
    if row is not None:
        return str(row[0])
    conn.execute("UPDATE devices SET device_uuid = ? WHERE imei = ? AND device_uuid IS NULL",
                 (device_uuid, imei))
    conn.execute("UPDATE run_devices SET device_uuid = ? WHERE run_id = ? AND slot = ? AND "
                 "imei = ?", (device_uuid, run_id, slot, imei))
    return None
