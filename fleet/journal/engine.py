"""The journal's engine: one SQLite connection (WAL, ``synchronous=FULL``), a lock file, and
group commits.

Concurrent callers queue operations; whoever holds the lock runs the whole queue in one
transaction in a worker thread (one connection, so one writer) and every caller returns only
after the COMMIT that contains its operation. Each call is shielded from cancellation, so a
Ctrl-C never leaves half an operation. A journal is locked (``flock`` on ``<journal>.lock``) by
the run using it; a killed run's lock goes with its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import anyio
import anyio.to_thread

from fleet.errors import JournalError
from fleet.journal.schema import SCHEMA, migrate

__all__ = ["JournalEngine"]

T = TypeVar("T")


class _Op:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class JournalEngine:
    """The connection, the lock and the group-commit engine (see :mod:`fleet.journal`)."""

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
    def open_sync(cls, path: Path | str, *, create: bool = True) -> Self:
        """Open and lock the journal at ``path``. With ``create=False`` (``--check``) a journal
        that does not exist is not created: an empty one in memory stands in for it."""
        path = Path(path)
        if not create and not path.exists():
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.executescript(SCHEMA)
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
            conn.executescript(SCHEMA)
            migrate(conn)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', '1')")
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise JournalError(f"journal {path} cannot be used: {exc}") from exc
        return cls(path, conn, lock_fd)

    @classmethod
    async def open(cls, path: Path | str, *, create: bool = True) -> Self:
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
