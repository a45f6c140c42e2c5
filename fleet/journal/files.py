"""The journal's file: making it, locking it, telling it from other files, opening it.

How this works
--------------
A journal is one SQLite database file, whatever name it is reached by (a symlink, a hard link).
The lock is ``flock`` on a descriptor of the database file itself, so every name of one file
shares one lock, and a killed run's lock goes with its process. SQLite's own locks are POSIX
``fcntl`` locks, which on Linux are independent of ``flock``; the descriptor stays open as long
as the connection (closing another descriptor of a file drops the POSIX locks the process holds
on it, SQLite's included). The holder of a lock is named by its pid, from ``/proc/locks``.

A new journal is built in memory (schema and ``meta``: the station and plan it is made for) and
created whole under its name (:func:`fleet.atomic.create_atomic`: never half a file, never in
place of another), so fleet never leaves an empty file: an existing 0-byte file is a truncated
journal, refused rather than taken as new. Before anything is written, the file is read through
a read-only connection: a database without fleet's ``meta`` schema row is someone else's and is
refused untouched, and a journal made for another station is refused.

``--check`` (``create=False``) only reads: a shared lock (no run writes meanwhile), a
read-only connection, and ``immutable=1`` when no ``-wal`` file is beside the journal (all of it
is then in the file, and a read-only connection to a WAL database would leave ``-wal`` and
``-shm`` files behind).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

import structlog

from fleet import __version__
from fleet.atomic import create_atomic
from fleet.errors import JournalError
from fleet.journal.records import utc_now
from fleet.journal.schema import SCHEMA, SCHEMA_VERSION, migrate

__all__ = ["journal_problem", "old_journal_problem", "open_database", "runs_of_plan",
           "sqlite_failure"]

#: Where to say a journal can be named instead.
_ELSEWHERE = "--journal PATH or journal: in the plan"

_HELD = ("another program holds a write lock on it (an sqlite3 shell with a transaction open, "
         "a backup or sync tool?): close it and run again")
#: What to do about an SQLite error, by its primary result code.
_REMEDIES = {
    sqlite3.SQLITE_BUSY: _HELD,
    sqlite3.SQLITE_LOCKED: _HELD,
    sqlite3.SQLITE_FULL: "the disk is full: free some space there and run again",
    sqlite3.SQLITE_READONLY: "it cannot be written (a read-only file system or file?): make it "
    f"writable, or choose another place with {_ELSEWHERE}",
    sqlite3.SQLITE_IOERR: "the disk under it failed a read or write: check the disk and its "
    "free space, then run again",
    sqlite3.SQLITE_CORRUPT: "the file is damaged: keep a copy of it and restore the journal "
    "from a backup (fleet does not repair it; the devices keep their keys)",
}


def _primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``exc`` (``SQLITE_BUSY``...; None when it has none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def sqlite_failure(exc: sqlite3.Error) -> str:
    """SQLite's reason for ``exc``, and what to do about it where that is known."""
    code = _primary_code(exc)
    remedy = _REMEDIES.get(code) if code is not None else None
    return f"{exc}: {remedy}" if remedy else str(exc)


def open_database(path: Path, *, create: bool, station: str | None = None,
                  plan: str | None = None) -> tuple[sqlite3.Connection, int]:
    """The connection to the journal at ``path`` (made when missing and ``create``) and the
    descriptor that holds its lock (close it after the connection). ``station``: refuse a
    journal made for another one, and record it in a new journal (with ``plan``)."""
    real = Path(os.path.realpath(path))
    if create and not real.exists():
        _create(real, path, station=station, plan=plan)
    with contextlib.suppress(FileNotFoundError):  # (missing in check mode: the open says so)
        if not stat.S_ISREG(os.stat(real).st_mode):  # before an open that a FIFO would block
            raise JournalError(f"journal {path} is not a regular file (a FIFO, a device or a "
                               f"directory?): choose another place with {_ELSEWHERE}")
    try:
        fd = os.open(real, os.O_RDWR if create else os.O_RDONLY)
    except OSError as exc:
        raise JournalError(f"cannot use journal {path}: {exc.strerror or exc} "
                           f"(choose another place with {_ELSEWHERE})") from None
    try:
        _lock(fd, path, shared=not create)
        if os.fstat(fd).st_nlink != 1:
            # SQLite keeps its write-ahead log beside the name a journal is opened by: under
            # a second name, committed steps in the first name's -wal would be invisible, and
            # replayed over what was written under the second.
            raise JournalError(
                f"journal {path} has {os.fstat(fd).st_nlink} names (hard links): SQLite keeps "
                "its write-ahead log beside one name, so a journal must have exactly one. Use "
                "that one (a symbolic link to it is fine) and remove the others while no run "
                "uses it")
        if os.fstat(fd).st_size == 0:
            raise JournalError(
                f"journal {path} is an empty file (0 bytes): fleet never leaves an empty "
                "journal, so it was truncated or made by something else. Restore it from a "
                "backup, or remove it to start a new journal (keys already on the devices are "
                "then reported as pre-existing)")
        return _connect(real, path, create=create, station=station), fd
    except BaseException:
        os.close(fd)
        raise


def journal_problem(path: Path, *, station: str) -> str | None:
    """Why a run would refuse the journal at ``path`` (None: it would use it, or make it when
    there is none), for `fleet plan check`: the checks of :func:`open_database` on the read-only
    open of ``--check``, so nothing is written and no file is made."""
    if not path.exists():
        return None
    try:
        conn, fd = open_database(path, create=False, station=station)
    except JournalError as exc:
        return str(exc)
    conn.close()
    os.close(fd)
    return None


def runs_of_plan(path: Path, *, station: str, plan_sha256: str, plan_path: str) -> int:
    """How many runs of this plan (its station, and its digest or its path) the journal at
    ``path`` holds; 0 when it is not a readable fleet journal. Only reads, takes no lock."""
    try:
        conn = _read_only(Path(os.path.realpath(path)))
    except sqlite3.Error:
        return 0
    try:
        count: int = conn.execute(
            "SELECT count(*) FROM runs WHERE station = ? AND (plan_sha256 = ? OR plan_path = ?)",
            (station, plan_sha256, plan_path)).fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return count


#: Where the journal was by default before a plan's journal was its own (the current directory's).
_OLD_DEFAULT = Path(".fleet") / "journal.sqlite"


def old_journal_problem(journal: Path, *, station: str, plan_sha256: str, plan_path: Path
                        ) -> str | None:
    """Why not to run a plan whose journal is ``journal`` when the journal at the old default
    place (``.fleet/journal.sqlite`` in the current directory) holds runs of this plan and
    ``journal`` does not exist yet: the run would start an empty journal and take the keys
    fleet made for pre-existing ones (and replace them with ``if_exists: replace``). When both
    exist, a warning."""
    old = Path.cwd() / _OLD_DEFAULT
    if not old.is_file() or os.path.realpath(old) == os.path.realpath(journal):
        return None
    runs = runs_of_plan(old, station=station, plan_sha256=plan_sha256, plan_path=str(plan_path))
    if not runs:
        return None
    if journal.exists():
        structlog.get_logger().warning(
            "the journal at the old default place also holds runs of this plan; it is not used",
            old=str(old), journal=str(journal))
        return None
    return (f"{old} holds {runs} run(s) of this plan (station {station}); it is a journal at "
            "the old default place (.fleet/journal.sqlite in the current directory), but a "
            f"plan's journal is now its own, {journal}, which does not exist yet. To keep using "
            f"the old journal, run with --journal {old} or put 'journal: "
            f"{os.path.relpath(old, plan_path.parent)}' in the plan; or, while no run uses it, "
            f"move it (with any -wal file beside it) to {journal}")


def _identity(station: str | None, plan: str | None) -> list[tuple[str, str]]:
    rows = [("schema", SCHEMA_VERSION), ("created_at", utc_now())]
    if station is not None:
        rows.append(("station", station))
    if plan is not None:
        rows.append(("plan", plan))
    return rows


def _create(real: Path, shown: Path, *, station: str | None, plan: str | None) -> None:
    """Create the journal at ``real`` whole; another run creating it at the same time wins."""
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as memory:
            memory.executescript(SCHEMA)
            memory.executemany("INSERT INTO meta VALUES (?, ?)", _identity(station, plan))
            image = memory.serialize()
        with contextlib.suppress(FileExistsError):  # made by another run meanwhile: use it
            create_atomic(real, image)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise JournalError(f"cannot use journal {shown}: {reason} "
                           f"({'free some space there, or ' if full else ''}choose another "
                           f"place with {_ELSEWHERE})") from None


def _lock(fd: int, shown: Path, *, shared: bool) -> None:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise JournalError(f"cannot lock journal {shown}: {exc.strerror or exc} "
                               f"(choose another place with {_ELSEWHERE})") from None
        raise JournalError(
            f"journal {shown} is in use by another fleet run (pid {_lock_holder(fd)}); wait "
            "for it to finish or use another journal") from None


def _lock_holder(fd: int) -> str:
    """The pid holding a ``flock`` on the file of ``fd`` (from ``/proc/locks``), or
    ``unknown``. The device is matched when it can be (some file systems show another device
    number in ``stat`` than in ``/proc/locks``), the inode always."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    same_inode: list[str] = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) < 6 or fields[1] != "FLOCK":  # "->" lines wait for a lock
                    continue
                pid, where = fields[4], fields[5]
                if pid == str(os.getpid()) or not where.endswith(f":{st.st_ino}"):
                    continue
                if where == f"{device}:{st.st_ino}":
                    return pid
                same_inode.append(pid)
    except OSError:
        pass
    return same_inode[0] if len(same_inode) == 1 else "unknown"


def _read_only(real: Path) -> sqlite3.Connection:
    """A connection that writes nothing, not even ``-wal``/``-shm`` files when there is no
    ``-wal`` beside the file (``immutable``: safe when no run writes it, see the module)."""
    wal = real.with_name(real.name + "-wal").exists()
    uri = f"file:{quote(str(real))}?mode=ro" + ("" if wal else "&immutable=1")
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def _connect(real: Path, shown: Path, *, create: bool,
             station: str | None) -> sqlite3.Connection:
    conn = _read_only(real)
    try:
        _check_identity(conn, shown, station)
    except BaseException:
        conn.close()
        raise
    if not create:
        return conn
    conn.close()
    conn = sqlite3.connect(real, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        migrate(conn)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        if station is not None:  # a journal made before journals recorded it: this station's
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('station', ?)", (station,))
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise JournalError(f"journal {shown} cannot be used: {sqlite_failure(exc)}") from exc
    return conn


def _check_identity(conn: sqlite3.Connection, shown: Path, station: str | None) -> None:
    """Refuse a file that is not a fleet journal, or one made for another station."""
    try:
        tables = {row[0] for row in
                  conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = dict(conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
    except sqlite3.DatabaseError as exc:
        if _primary_code(exc) == sqlite3.SQLITE_CORRUPT:
            raise JournalError(f"journal {shown} cannot be used: {sqlite_failure(exc)}; it was "
                               "left untouched") from None
        raise JournalError(
            f"{shown} is not a fleet journal ({exc}); it was left untouched. Name this plan's "
            f"journal with {_ELSEWHERE}") from None
    if "schema" not in meta:
        found = ", ".join(sorted(tables)) or "none"
        raise JournalError(
            f"{shown} is an SQLite database but not a fleet journal (no fleet schema; tables: "
            f"{found}); it was left untouched. Name this plan's journal with {_ELSEWHERE}, "
            "or move that file away")
    if meta["schema"] != SCHEMA_VERSION:
        raise JournalError(
            f"journal {shown} has schema {meta['schema']!r}, which this fleet ({__version__}, "
            f"schema {SCHEMA_VERSION!r}) does not know: a newer fleet made it, or it was "
            "changed outside fleet; it was left untouched. Run the fleet that made it, or name "
            f"this plan's journal with {_ELSEWHERE}")
    if station is None:
        return
    made_for = meta.get("station")
    if made_for is None and "runs" in tables:  # made before journals recorded their station
        others = sorted({row[0] for row in conn.execute("SELECT DISTINCT station FROM runs")}
                        - {station})
        made_for = ", ".join(others) or None
    if made_for is not None and made_for != station:
        raise JournalError(
            f"journal {shown} belongs to station {made_for!r}, not to this plan's station "
            f"{station!r}: a journal records one station's devices and runs. Give this station "
            f"its own journal ({_ELSEWHERE}), or check the plan's station line")
