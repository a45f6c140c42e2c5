"""The crash-safe journal: SQLite (stdlib), WAL, ``synchronous=FULL``, one writer.

How this works
--------------
Every side effect on a device is bracketed by two durable writes: an *intent* step row before the
command is sent and its *outcome* after the answer (``ok``: done and, for a %KEYGEN, the answer
captured and verified; ``error``: the modem refused, nothing changed; ``unknown``: timeout,
disconnect or an unverifiable answer - the command may or may not have taken effect). A run killed
with SIGKILL at any instant therefore leaves, for every key, either a captured answer or an
unresolved intent, and the next run decides from that (see :mod:`fleet.provision.decide`).

Tables: ``runs``; ``devices`` (by IMEI, with the device UUID once known); ``keys`` (what fleet
knows about each (IMEI, sec_tag, type): the captured answer, a pre-existing marker, the latest
unresolved %KEYGEN intent); ``steps`` (the append-only log of intents and outcomes, with attempt
counts and errors); ``run_devices`` and ``run_keys`` (per-run results, for the manifest);
``certs`` (per (IMEI, sec_tag, type 1 or 0): the certificate or chain fleet issued or found, the
SHA-256 of the CSR it was issued for, its confirmation, and the latest run's outcome for it).

Writes are group-committed: concurrent callers queue operations; whoever holds the lock runs the
whole queue in one transaction in a worker thread (one SQLite connection, so one writer) and every
caller returns only after the COMMIT that contains its operation. Each call is shielded from
cancellation, so a Ctrl-C never leaves half an operation. A journal is locked (``flock`` on
``<journal>.lock``) by the run using it; a killed run's lock goes with its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from fleet.errors import JournalError

__all__ = ["CertState", "DeviceInfo", "Journal", "KeyState", "PendingIntent", "RunInfo",
           "utc_now"]

T = TypeVar("T")

_SCHEMA = """
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
    csr_pem TEXT, public_key_pem TEXT, cose_payload TEXT,
    PRIMARY KEY (imei, sec_tag, type));
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, slot TEXT NOT NULL,
    imei TEXT, key_name TEXT, sec_tag INTEGER, type INTEGER, action TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1, command TEXT, detail TEXT,
    intent_at TEXT NOT NULL, done_at TEXT, outcome TEXT, answer TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS run_devices (
    run_id TEXT NOT NULL, slot TEXT NOT NULL, imei TEXT NOT NULL, port TEXT NOT NULL,
    outcome TEXT, error TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, slot, imei));
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

#: Outcomes of earlier invocations of the same run that a later "unchanged" must not hide.
_STICKY = ("generated", "recovered", "changed", "pre-existing")


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


_KEY_COLUMNS = ("state, answer, cmng_sha, pending_step, pending_present_before, csr_pem, "
                "public_key_pem, cose_payload")


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns later versions use to a journal made by an earlier one."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(keys)")}
    for column in ("csr_pem", "public_key_pem", "cose_payload"):
        if column not in have:
            conn.execute(f"ALTER TABLE keys ADD COLUMN {column} TEXT")


def _record_keygen_intent(conn: sqlite3.Connection, step_id: int, imei: str,
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


def _key_state(row: tuple[Any, ...]) -> KeyState:
    pending = None
    if row[3] is not None:
        pending = PendingIntent(step_id=row[3], present_before=bool(row[4]))
    return KeyState(state=row[0], answer=row[1], cmng_sha=row[2], pending=pending,
                    csr_pem=row[5], public_key_pem=row[6],
                    cose_payload=json.loads(row[7]) if row[7] else None)


def _key_states(conn: sqlite3.Connection, imei: str
                ) -> tuple[tuple[tuple[int, int], KeyState], ...]:
    rows = conn.execute(f"SELECT {_KEY_COLUMNS}, sec_tag, type FROM keys WHERE imei = ?",
                        (imei,)).fetchall()
    return tuple(((row[8], row[9]), _key_state(row[:8])) for row in rows)


class _Op:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class Journal:
    """Open with :meth:`open`; every method is durable when it returns."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self._pending: list[_Op] = []
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self.commits = 0

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open_sync(cls, path: Path | str, *, create: bool = True) -> Journal:
        """Open and lock the journal at ``path``. With ``create=False`` (``--check``) a journal
        that does not exist is not created: an empty one in memory stands in for it."""
        path = Path(path)
        if not create and not path.exists():
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.executescript(_SCHEMA)
            return cls(path, conn, -1)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot use journal {path}: {exc.strerror or exc} "
                               "(choose another place with --journal)") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(lock_fd)
            raise JournalError(
                f"journal {path} is in use by another fleet run (pid {holder}); wait for it to "
                "finish or use another --journal"
            ) from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            _migrate(conn)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', '1')")
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise JournalError(f"journal {path} cannot be used: {exc}") from exc
        return cls(path, conn, lock_fd)

    @classmethod
    async def open(cls, path: Path | str, *, create: bool = True) -> Journal:
        """Open (creating it unless ``create=False``) and lock the journal at ``path``."""
        return await anyio.to_thread.run_sync(lambda: cls.open_sync(path, create=create))

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await anyio.to_thread.run_sync(self._conn.close, limiter=self._limiter)
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    # --- the group-commit engine ---------------------------------------------------------------

    def _run_batch(self, batch: list[_Op]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    op.error = exc
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for op in batch:
                op.error = JournalError(f"journal write failed: {exc}")
        for op in batch:
            op.done = True

    async def _execute(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        op = _Op(fn)
        self._pending.append(op)
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if not op.done:
                    batch, self._pending = self._pending, []
                    await anyio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
        if op.error is not None:
            if isinstance(op.error, JournalError):
                raise op.error
            raise JournalError(f"journal operation failed: {op.error}") from op.error
        result: T = op.result
        return result

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
            if not fresh:
                row = conn.execute(
                    "SELECT run_id, started_at FROM runs WHERE plan_sha256 = ? AND station = ? "
                    "AND status = 'interrupted' ORDER BY started_at DESC LIMIT 1",
                    (plan_sha256, station)).fetchone()
                if row is not None:
                    conn.execute("UPDATE runs SET status = 'running', pid = ? WHERE run_id = ?",
                                 (os.getpid(), row[0]))
                    return RunInfo(run_id=row[0], started_at=row[1], resumed=True)
            now = utc_now()
            conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, 'running', ?, ?)",
                         (run_id, plan_path, plan_sha256, station, now, os.getpid(),
                          tool_version))
            return RunInfo(run_id=run_id, started_at=now, resumed=False)

        return await self._execute(op)

    async def finish_run(self, run_id: str, *, status: str, ended_at: str | None = None) -> str:
        """Mark the run ``complete`` or ``interrupted`` (a later run of the plan resumes an
        interrupted one); returns the end time."""
        now = ended_at or utc_now()
        await self._execute(lambda c: c.execute(
            "UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ?", (status, now, run_id)))
        return now

    async def run_row(self, run_id: str) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            cur = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
            if row is None:
                raise JournalError(f"no run {run_id} in the journal")
            return dict(zip(names, row, strict=True))

        return await self._execute(op)

    # --- devices and keys ----------------------------------------------------------------------

    async def device_seen(self, *, imei: str, model: str, firmware: str,
                          device_uuid: str | None) -> DeviceInfo:
        """Record the device; returns what the journal knew of it before."""

        def op(conn: sqlite3.Connection) -> DeviceInfo:
            now = utc_now()
            row = conn.execute("SELECT device_uuid, restore_mode FROM devices WHERE imei = ?",
                               (imei,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, NULL)",
                             (imei, device_uuid, model, firmware, now, now))
                return DeviceInfo(keys=_key_states(conn, imei))
            conn.execute(
                "UPDATE devices SET model = ?, firmware = ?, last_seen = ?, "
                "device_uuid = COALESCE(device_uuid, ?) WHERE imei = ?",
                (model, firmware, now, device_uuid, imei))
            return DeviceInfo(device_uuid=row[0], restore_mode=row[1],
                              keys=_key_states(conn, imei))

        return await self._execute(op)

    async def device_info(self, imei: str) -> DeviceInfo:
        """What the journal knows of a device (read only)."""

        def op(conn: sqlite3.Connection) -> DeviceInfo:
            row = conn.execute("SELECT device_uuid, restore_mode FROM devices WHERE imei = ?",
                               (imei,)).fetchone()
            if row is None:
                return DeviceInfo(keys=_key_states(conn, imei))
            return DeviceInfo(device_uuid=row[0], restore_mode=row[1],
                              keys=_key_states(conn, imei))

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

    async def imei_of_device_uuid(self, device_uuid: str) -> str | None:
        """The IMEI the journal knows a device UUID under, if any."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT imei FROM devices WHERE device_uuid = ? LIMIT 1",
                               (device_uuid,)).fetchone()
            return None if row is None else str(row[0])

        return await self._execute(op)

    async def set_device_uuid(self, imei: str, device_uuid: str) -> None:
        await self._execute(lambda c: c.execute(
            "UPDATE devices SET device_uuid = ? WHERE imei = ? AND device_uuid IS NULL",
            (device_uuid, imei)))

    async def key_state(self, imei: str, sec_tag: int, key_type: int) -> KeyState:
        def op(conn: sqlite3.Connection) -> KeyState:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE imei = ? AND sec_tag = ? AND type = ?",
                (imei, sec_tag, key_type)).fetchone()
            return KeyState() if row is None else _key_state(row)

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
                _record_keygen_intent(conn, step_id, imei, sec_tag, key_type,
                                      present_before=bool((detail or {}).get("present_before")),
                                      now=now)
            return step_id

        return await self._execute(op)

    async def outcome(self, step_id: int, *, outcome: str, answer: str | None = None,
                      error: str | None = None, cmng_sha: str | None = None,
                      derived: dict[str, Any] | None = None) -> None:
        """Durably record the outcome of a step (``ok``, ``error`` or ``unknown``).

        A ``keygen`` step with ``ok`` stores the captured answer as the key's state; ``ok`` or
        ``error`` resolve the key's pending intent; ``unknown`` leaves it pending. A ``delete``
        step with ``ok`` clears the key's state.
        """
        if outcome not in ("ok", "error", "unknown"):
            raise ValueError(f"invalid step outcome {outcome!r}")

        def op(conn: sqlite3.Connection) -> None:
            now = utc_now()
            conn.execute("UPDATE steps SET outcome = ?, answer = ?, error = ?, done_at = ? "
                         "WHERE id = ?", (outcome, answer, error, now, step_id))
            row = conn.execute("SELECT action, imei, sec_tag, type, run_id FROM steps "
                               "WHERE id = ?", (step_id,)).fetchone()
            if row is None:
                raise JournalError(f"no step {step_id}")
            action, imei, sec_tag, key_type, run_id = row
            key = (imei, sec_tag, key_type)
            if action == "keygen" and outcome == "ok":
                extra = derived or {}
                payload = extra.get("cose_payload")
                conn.execute("UPDATE keys SET state = 'captured', answer = ?, cmng_sha = ?, "
                             "run_id = ?, updated_at = ?, pending_step = NULL, csr_pem = ?, "
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
                             "pending_step = NULL, updated_at = ? WHERE imei = ? AND sec_tag = ? "
                             "AND type = ?", (now, *key))

        await self._execute(op)

    async def mark_pre_existing(self, *, imei: str, sec_tag: int, key_type: int,
                                cmng_sha: str | None) -> None:
        await self._execute(lambda c: c.execute(
            "INSERT INTO keys (imei, sec_tag, type, state, cmng_sha, updated_at) "
            "VALUES (?, ?, ?, 'pre-existing', ?, ?) ON CONFLICT (imei, sec_tag, type) DO UPDATE "
            "SET state = 'pre-existing', cmng_sha = excluded.cmng_sha, updated_at = "
            "excluded.updated_at WHERE keys.state IS NOT 'captured'",
            (imei, sec_tag, key_type, cmng_sha, utc_now())))

    async def set_cmng_sha(self, *, imei: str, sec_tag: int, key_type: int, sha: str) -> None:
        await self._execute(lambda c: c.execute(
            "UPDATE keys SET cmng_sha = ? WHERE imei = ? AND sec_tag = ? AND type = ?",
            (sha, imei, sec_tag, key_type)))

    # --- per-run results -----------------------------------------------------------------------

    async def slot_result(self, *, run_id: str, slot: str, port: str, imei: str | None,
                          outcome: str | None, error: str | None) -> None:
        """Record the result of the device in a slot for this run. A run resumed after the
        board in the slot was swapped keeps both devices (keyed by slot and IMEI); a slot that
        failed before its device was identified (IMEI unknown) is replaced by its device once
        a later invocation identifies it."""

        def op(conn: sqlite3.Connection) -> None:
            if imei:
                conn.execute("DELETE FROM run_devices WHERE run_id = ? AND slot = ? AND imei = ''",
                             (run_id, slot))
            conn.execute(
                "INSERT OR REPLACE INTO run_devices VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, slot, imei or "", port, outcome, error, utc_now()))

        await self._execute(op)

    async def key_result(self, *, run_id: str, slot: str, imei: str, key_name: str,
                         sec_tag: int, key_type: int, outcome: str, error: str | None,
                         attempts: int) -> str:
        """Record a key's outcome in this run; returns the outcome kept. Within one run (which
        may span several invocations after interruptions) a later ``unchanged``, ``failed`` or
        ``not-attempted`` never replaces an earlier ``generated``/``recovered``/``changed``/
        ``pre-existing`` (a later failure's error is still recorded)."""

        def op(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT outcome, attempts FROM run_keys WHERE run_id = ? AND "
                               "slot = ? AND imei = ? AND key_name = ?",
                               (run_id, slot, imei, key_name)).fetchone()
            kept, total = outcome, attempts
            if row is not None:
                total += int(row[1])
                if outcome in ("unchanged", "failed", "not-attempted") and row[0] in _STICKY:
                    kept = row[0]  # its captured answer stays this run's; the error is kept
            conn.execute(
                "INSERT OR REPLACE INTO run_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, slot, imei, key_name, sec_tag, key_type, kept, error, total,
                 utc_now()))
            return kept

        return await self._execute(op)

    async def run_results(self, run_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(slots, keys)`` rows of one run, joined with device data and captured answers."""

        def op(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            def rows(sql: str) -> list[dict[str, Any]]:
                cur = conn.execute(sql, (run_id,))
                names = [d[0] for d in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

            slots = rows(
                "SELECT s.slot, s.port, NULLIF(s.imei, '') AS imei, s.outcome, s.error, "
                "d.device_uuid, d.model, d.firmware FROM run_devices s LEFT JOIN devices d ON "
                "d.imei = s.imei WHERE s.run_id = ? ORDER BY s.slot, s.updated_at")
            keys = rows(
                "SELECT r.slot, r.imei, r.key_name, r.sec_tag, r.type, r.outcome, r.error, "
                "r.attempts, k.answer, k.cmng_sha, k.csr_pem, k.public_key_pem, "
                "k.cose_payload FROM run_keys r LEFT JOIN keys k ON "
                "k.imei = r.imei AND k.sec_tag = r.sec_tag AND k.type = r.type "
                "WHERE r.run_id = ? ORDER BY r.slot, r.key_name")
            return slots, keys

        return await self._execute(op)

    # --- certificates (issue 8) ------------------------------------------------------------------

    async def cert_state(self, imei: str, sec_tag: int, cert_type: int) -> CertState | None:
        """What the journal knows of the certificate (type 1) or chain (type 0) in a tag."""

        def op(conn: sqlite3.Connection) -> CertState | None:
            cur = conn.execute(f"SELECT {', '.join(_CERT_FIELDS)} FROM certs WHERE imei = ? AND "
                               "sec_tag = ? AND type = ?", (imei, sec_tag, cert_type))
            row = cur.fetchone()
            return None if row is None else CertState(**dict(zip(_CERT_FIELDS, row, strict=True)))

        return await self._execute(op)

    async def cert_issued(self, *, imei: str, sec_tag: int, cert_type: int, state: str,
                          source_sha256: str | None, pem: str | None, sha256: str,
                          serial: str | None = None, issuer: str | None = None,
                          not_after: str | None = None) -> None:
        """Record a certificate before it is written (``state="issued"``: fleet signed it, or
        the chain it is about to write) or one found on the device (``"pre-existing"``)."""
        if state not in ("issued", "pre-existing"):
            raise ValueError(f"invalid certificate state {state!r}")
        await self._execute(lambda c: c.execute(
            "INSERT INTO certs (imei, sec_tag, type, state, source_sha256, pem, sha256, serial, "
            "issuer, not_after, cmng_sha256, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "NULL, ?) ON CONFLICT (imei, sec_tag, type) DO UPDATE SET state = excluded.state, "
            "source_sha256 = excluded.source_sha256, pem = excluded.pem, sha256 = "
            "excluded.sha256, serial = excluded.serial, issuer = excluded.issuer, not_after = "
            "excluded.not_after, cmng_sha256 = NULL, updated_at = excluded.updated_at",
            (imei, sec_tag, cert_type, state, source_sha256, pem, sha256, serial, issuer,
             not_after, utc_now())))

    async def cert_confirmed(self, *, imei: str, sec_tag: int, cert_type: int,
                             cmng_sha256: str) -> None:
        """The modem lists ``cmng_sha256`` for the journaled certificate: mark it confirmed
        (a pre-existing one keeps its state)."""
        await self._execute(lambda c: c.execute(
            "UPDATE certs SET cmng_sha256 = ?, state = CASE state WHEN 'issued' THEN 'confirmed' "
            "ELSE state END, updated_at = ? WHERE imei = ? AND sec_tag = ? AND type = ? AND "
            "sha256 = ?", (cmng_sha256, utc_now(), imei, sec_tag, cert_type, cmng_sha256)))

    async def cert_result(self, *, run_id: str, imei: str, sec_tag: int, cert_type: int,
                          outcome: str, error: str | None) -> str:
        """Record the outcome of a certificate in this run; returns the outcome kept. Within one
        run an ``unchanged`` never replaces an earlier outcome that changed something."""

        def op(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT run_id, outcome FROM certs WHERE imei = ? AND sec_tag = ? "
                               "AND type = ?", (imei, sec_tag, cert_type)).fetchone()
            kept = outcome
            if (row is not None and row[0] == run_id and outcome == "unchanged"
                    and row[1] in _CERT_STICKY):
                kept = row[1]
            conn.execute(
                "INSERT INTO certs (imei, sec_tag, type, run_id, outcome, error, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (imei, sec_tag, type) DO UPDATE SET "
                "run_id = excluded.run_id, outcome = excluded.outcome, error = excluded.error, "
                "updated_at = excluded.updated_at",
                (imei, sec_tag, cert_type, run_id, kept, error, utc_now()))
            return kept

        return await self._execute(op)

    async def run_certs(self, run_id: str) -> list[CertState]:
        """The certificates and chains with an outcome in run ``run_id``."""

        def op(conn: sqlite3.Connection) -> list[CertState]:
            cur = conn.execute(f"SELECT {', '.join(_CERT_FIELDS)} FROM certs WHERE run_id = ? "
                               "ORDER BY imei, sec_tag, type", (run_id,))
            return [CertState(**dict(zip(_CERT_FIELDS, row, strict=True)))
                    for row in cur.fetchall()]

        return await self._execute(op)


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


_CERT_FIELDS = tuple(CertState.__dataclass_fields__)
#: Certificate outcomes that a later "unchanged" in the same run must not hide.
_CERT_STICKY = ("issued", "written", "rewritten", "pre-existing")
