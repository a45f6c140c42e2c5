"""The journal's SQLite schema, its migration, and the row helpers shared by its parts."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fleet.records import CertOutcome
from fleet.state import CertState, CertStateKind, KeyState, KeyStateKind, PendingIntent
from fleet.usbid import UsbIdentity

__all__ = ["CERT_FIELDS", "KEY_COLUMNS", "SCHEMA", "cert_state", "key_state", "key_states",
           "migrate", "record_keygen_intent", "usb_column", "usb_from_column"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, plan_path TEXT NOT NULL, plan_sha256 TEXT NOT NULL,
    station TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, status TEXT NOT NULL,
    pid INTEGER, tool_version TEXT);
CREATE TABLE IF NOT EXISTS devices (
    imei TEXT PRIMARY KEY, device_uuid TEXT, model TEXT, firmware TEXT,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, restore_mode INTEGER);
CREATE TABLE IF NOT EXISTS keys (
    imei TEXT NOT NULL, sec_tag INTEGER NOT NULL, type INTEGER NOT NULL,
    state TEXT NOT NULL, answer TEXT, cmng_sha TEXT, run_id TEXT, updated_at TEXT NOT NULL,
    pending_step INTEGER, pending_present_before INTEGER,
    csr_pem TEXT, public_key_pem TEXT, cose_payload TEXT, disputed TEXT,
    PRIMARY KEY (imei, sec_tag, type));
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, slot TEXT NOT NULL,
    imei TEXT, key_name TEXT, sec_tag INTEGER, type INTEGER, action TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1, command TEXT, detail TEXT,
    intent_at TEXT NOT NULL, done_at TEXT, outcome TEXT, answer TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS run_devices (
    run_id TEXT NOT NULL, slot TEXT NOT NULL, imei TEXT NOT NULL, port TEXT NOT NULL,
    outcome TEXT, error TEXT, updated_at TEXT NOT NULL,
    device_uuid TEXT, model TEXT, firmware TEXT, usb TEXT, interface TEXT, terminator TEXT,
    attestation_token TEXT, attestation_read_at TEXT, PRIMARY KEY (run_id, slot, imei));
CREATE TABLE IF NOT EXISTS run_keys (
    run_id TEXT NOT NULL, slot TEXT NOT NULL, imei TEXT NOT NULL, key_name TEXT NOT NULL,
    sec_tag INTEGER NOT NULL, type INTEGER NOT NULL, outcome TEXT NOT NULL, error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL,
    PRIMARY KEY (run_id, slot, imei, key_name));
CREATE INDEX IF NOT EXISTS steps_by_key ON steps (imei, sec_tag, type);
CREATE TABLE IF NOT EXISTS certs (
    imei TEXT NOT NULL, sec_tag INTEGER NOT NULL, type INTEGER NOT NULL, state TEXT,
    source_sha256 TEXT, pem TEXT, sha256 TEXT, serial TEXT, issuer TEXT, not_after TEXT,
    cmng_sha256 TEXT, run_id TEXT, outcome TEXT, error TEXT, updated_at TEXT NOT NULL,
    PRIMARY KEY (imei, sec_tag, type));
"""

KEY_COLUMNS = ("state, answer, cmng_sha, pending_step, pending_present_before, csr_pem, "
                "public_key_pem, cose_payload, disputed")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


#: The ``schema`` row of a journal's ``meta`` table. Journals of earlier versions are brought up
#: to date by :func:`migrate` (they all say "1"); a journal that says anything else was made by
#: a version of fleet that this one does not know, and is refused.
SCHEMA_VERSION = "1"


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns later versions use to a journal made by an earlier one."""
    have = _columns(conn, "keys")
    for column in ("csr_pem", "public_key_pem", "cose_payload", "disputed"):
        if column not in have:
            conn.execute(f"ALTER TABLE keys ADD COLUMN {column} TEXT")
    # Each run's device row holds the identity of the board that was in the slot (two boards
    # may report one IMEI); earlier journals kept it per IMEI only.
    if "device_uuid" not in _columns(conn, "run_devices"):
        for column in ("device_uuid", "model", "firmware"):
            conn.execute(f"ALTER TABLE run_devices ADD COLUMN {column} TEXT")
        conn.execute("UPDATE run_devices SET (device_uuid, model, firmware) = (SELECT "
                     "d.device_uuid, d.model, d.firmware FROM devices d WHERE "
                     "d.imei = run_devices.imei)")
    # Then, in the order they came: the USB identity of the port a slot's device was found on
    # (a usb: form, as JSON); how the device was reached (interface and line end); the
    # %ATTESTTOKEN read in the run (attestation_token: true) and when. Unknown for older runs.
    for group in (("usb",), ("interface", "terminator"),
                  ("attestation_token", "attestation_read_at")):
        if group[0] not in _columns(conn, "run_devices"):
            for column in group:
                conn.execute(f"ALTER TABLE run_devices ADD COLUMN {column} TEXT")


def record_keygen_intent(conn: sqlite3.Connection, step_id: int, imei: str,
                          sec_tag: int | None, key_type: int | None, *, present_before: bool,
                          now: str) -> None:
    """Make ``step_id`` the key's pending %KEYGEN.

    An unresolved earlier %KEYGEN it supersedes is remembered in the step's detail (so a refusal
    of this one makes that one pending again), and a key absent before an earlier unresolved
    %KEYGEN stays known as absent-before. A %KEYGEN sent for an absent key forgets the captured
    answer of a key that is no longer there: until this one is captured, nothing is.
    """
    row = conn.execute("SELECT pending_step, pending_present_before FROM keys WHERE imei = ? "
                       "AND sec_tag = ? AND type = ?", (imei, sec_tag, key_type)).fetchone()
    earlier = row[0] if row is not None else None
    absent_before = not present_before or (earlier is not None and not row[1])
    if earlier is not None:
        detail = json.loads(conn.execute("SELECT detail FROM steps WHERE id = ?",
                                         (step_id,)).fetchone()[0] or "{}")
        detail["supersedes"] = {"step": earlier, "present_before": bool(row[1])}
        conn.execute("UPDATE steps SET detail = ? WHERE id = ?",
                     (json.dumps(detail, sort_keys=True), step_id))
    conn.execute(
        "INSERT INTO keys (imei, sec_tag, type, state, updated_at, pending_step, "
        "pending_present_before) VALUES (?, ?, ?, 'intent', ?, ?, ?) "
        "ON CONFLICT (imei, sec_tag, type) DO UPDATE SET pending_step = excluded.pending_step, "
        "pending_present_before = excluded.pending_present_before, "
        "updated_at = excluded.updated_at",
        (imei, sec_tag, key_type, now, step_id, 0 if absent_before else 1))
    if not present_before:
        conn.execute("UPDATE keys SET state = 'intent', answer = NULL, cmng_sha = NULL, "
                     "csr_pem = NULL, public_key_pem = NULL, cose_payload = NULL "
                     "WHERE imei = ? AND sec_tag = ? AND type = ?", (imei, sec_tag, key_type))


def key_state(row: tuple[Any, ...]) -> KeyState:
    pending = None
    if row[3] is not None:
        pending = PendingIntent(step_id=row[3], present_before=bool(row[4]))
    return KeyState(state=KeyStateKind(row[0]) if row[0] else None, answer=row[1],
                    cmng_sha=row[2], pending=pending, csr_pem=row[5], public_key_pem=row[6],
                    cose_payload=json.loads(row[7]) if row[7] else None, disputed=row[8])


def key_states(conn: sqlite3.Connection, imei: str
                ) -> tuple[tuple[tuple[int, int], KeyState], ...]:
    rows = conn.execute(f"SELECT {KEY_COLUMNS}, sec_tag, type FROM keys WHERE imei = ?",
                        (imei,)).fetchall()
    return tuple(((row[9], row[10]), key_state(row[:9])) for row in rows)

#: Columns of the ``certs`` table, in the order of :class:`CertState`'s fields.
CERT_FIELDS = tuple(CertState.__dataclass_fields__)
_CERT_STATE = CERT_FIELDS.index("state")
_CERT_OUTCOME = CERT_FIELDS.index("outcome")


def cert_state(row: tuple[Any, ...]) -> CertState:
    """The :class:`CertState` of a ``certs`` row selected as ``CERT_FIELDS``."""
    values = dict(zip(CERT_FIELDS, row, strict=True))
    values["state"] = CertStateKind(row[_CERT_STATE]) if row[_CERT_STATE] else None
    values["outcome"] = CertOutcome(row[_CERT_OUTCOME]) if row[_CERT_OUTCOME] else None
    return CertState(**values)


def usb_column(usb: UsbIdentity | None) -> str | None:
    """The ``run_devices.usb`` text of a USB identity."""
    return None if usb is None else json.dumps(usb.to_dict(), sort_keys=True)


def usb_from_column(text: str | None) -> UsbIdentity | None:
    """The identity :func:`usb_column` wrote; ValueError for a row it did not write."""
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"run_devices.usb is not JSON: {exc}") from None
    return UsbIdentity.from_dict(data)
