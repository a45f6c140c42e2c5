"""The journal's engine: one SQLite connection (WAL, ``synchronous=FULL``), a lock, and
group commits.

Concurrent callers queue operations; when no batch is running, one of them takes the whole queue
and runs it in one transaction on the loop's thread (one connection, so one writer; why not a
worker thread: see ``_run_batch``); the others wait for that batch to end - all woken at once by
one event, not handed a lock one by one, which with hundreds of slots would cost a loop iteration
each - and every caller returns only after the COMMIT that contains its operation. Each call is
shielded from cancellation, so a Ctrl-C never leaves half an operation. A journal is locked
(``flock`` on the database file itself, see :mod:`fleet.journal.files`) by the run using it; a
killed run's lock goes with its process.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from fleet.errors import JournalError
from fleet.journal.files import open_database, sqlite_failure
from fleet.journal.schema import SCHEMA

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

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int, *,
                 read_only: bool = False) -> None:
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self._begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"  #: a reader takes no write lock
        self._pending: list[_Op] = []
        self._running: anyio.Event | None = None  #: set when the running batch ends
        self._closed = False
        self.commits = 0
        #: the first write that failed (a full disk, an I/O error), for the run's record: the
        #: caller that met it may have reported it as something else (a failed device)
        self.write_error: str | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open_sync(cls, path: Path | str, *, create: bool = True, station: str | None = None,
                  plan: str | None = None) -> Self:
        """Open and lock the journal at ``path`` (see :mod:`fleet.journal.files`). With
        ``create=False`` (``--check``) it is only read, and a journal that does not exist is not
        created: an empty one in memory stands in for it. ``station``: refuse a journal made
        for another station; a new journal records it (and ``plan``)."""
        path = Path(path)
        if not create and not path.exists():
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.executescript(SCHEMA)
            return cls(path, conn, -1)
        conn, lock_fd = open_database(path, create=create, station=station, plan=plan)
        return cls(path, conn, lock_fd, read_only=not create)

    @classmethod
    async def open(cls, path: Path | str, *, create: bool = True, station: str | None = None,
                   plan: str | None = None) -> Self:
        """Open (creating it unless ``create=False``) and lock the journal at ``path``."""
        return await anyio.to_thread.run_sync(
            lambda: cls.open_sync(path, create=create, station=station, plan=plan))

    async def aclose(self) -> None:
        self._closed = True  # a late caller gets a JournalError, never a closed connection
        with anyio.CancelScope(shield=True):
            while self._running is not None:
                await self._running.wait()
            self._running = closing = anyio.Event()  # no batch may start while it closes
            try:
                await anyio.to_thread.run_sync(self._conn.close)
            finally:
                self._running = None
                closing.set()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    # --- the group-commit engine ---------------------------------------------------------------

    def _apply(self, batch: list[_Op]) -> bool:
        """The operations one after another; False as soon as one raises (the caller then
        rolls the transaction back and runs :meth:`_apply_isolated`). Operations only touch the
        database, so running them again after a rollback is safe."""
        conn = self._conn
        for op in batch:
            try:
                op.result = op.fn(conn)
            except Exception:
                return False
        return True

    def _apply_isolated(self, batch: list[_Op]) -> None:
        """Each operation in a savepoint of its own: a failing one leaves nothing behind and the
        others still commit. Three more statements per operation, so only after :meth:`_apply`
        met a failing one (an error: the flow's operations do not fail)."""
        conn = self._conn
        for op in batch:
            conn.execute("SAVEPOINT op")
            try:
                op.result = op.fn(conn)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                op.error = exc
            conn.execute("RELEASE op")

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def _run_batch(self, batch: list[_Op]) -> None:
        """One transaction for the whole batch, on the event loop's thread.

        Measured at 256 slots: in a worker thread, every statement waited for the busy loop to
        hand back the GIL and every batch for the loop to pick up the thread's result, so a
        journal write took 50-130 ms and slots spent more time waiting on the journal than on
        their modems. Here a batch blocks the loop for its statements (tens of microseconds
        each) and one fsync at COMMIT (about a millisecond on an SSD, more on an SD card): the
        serial ports buffer meanwhile and command timeouts are seconds, so nothing is lost, and
        the fsync is shared by every operation of the batch. BEGIN IMMEDIATE cannot wait for
        another fleet run: the journal's lock keeps them out (a foreign program writing to
        it could make it wait up to the 5 s busy timeout)."""
        try:
            self._conn.execute(self._begin)
            if not self._apply(batch):
                self._conn.execute("ROLLBACK")
                self._conn.execute(self._begin)
                self._apply_isolated(batch)
            self._conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            self._rollback()
            failure = f"journal write failed: {sqlite_failure(exc)}"
            for op in batch:
                op.error = JournalError(failure)
            self.write_error = self.write_error or failure
        except BaseException:  # KeyboardInterrupt on the loop's thread: leave no open transaction
            self._rollback()
            raise
        for op in batch:
            op.done = True

    async def _execute(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")
        op = _Op(fn)
        self._pending.append(op)
        with anyio.CancelScope(shield=True):
            # Invariant: an op not done is either pending or in the running batch.
            while not op.done:
                running = self._running
                if running is not None:
                    await running.wait()
                    continue
                if self._closed:  # queued before the journal was closed, never run
                    if op in self._pending:
                        self._pending.remove(op)
                    raise JournalError(f"journal {self.path} is closed")
                self._running = ended = anyio.Event()
                batch: list[_Op] = []
                try:
                    # Let the operations queued in this turn of the loop join the batch.
                    await anyio.lowlevel.checkpoint()
                    batch, self._pending = self._pending, []
                    self._run_batch(batch)
                finally:
                    for other in batch:
                        if not other.done:  # the batch itself failed unexpectedly
                            other.error = JournalError("journal batch did not run")
                            other.done = True
                    self._running = None
                    ended.set()
        if op.error is not None:
            if isinstance(op.error, JournalError):
                raise op.error
            reason = (sqlite_failure(op.error) if isinstance(op.error, sqlite3.Error)
                      else str(op.error))
            raise JournalError(f"journal operation failed: {reason}") from op.error
        result: T = op.result
        return result
