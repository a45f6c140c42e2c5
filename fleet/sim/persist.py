"""Persistence for the running simulator: the group-commit state writer and the JSON-line log.

How the state writer works
--------------------------
A command that changes a modem calls :meth:`StateWriter.mark_dirty`, which returns a version
number, and awaits :meth:`StateWriter.wait_written` with it before its answer is sent. One writer
task (:meth:`StateWriter.run`) loops: wait until something is dirty, snapshot the whole state in
the event loop (consistent: nothing else runs meanwhile), write it with
:func:`fleet.atomic.write_atomic` in a worker thread, then wake every waiter whose version the
snapshot covered. Only one write is in flight; all changes made during it coalesce into the next
one, so 256 modems changing at once cost a handful of writes, not 256. A key the host has seen is
therefore always on disk. When the task is cancelled it writes once more (shielded) if anything is
still dirty. A failed write is fatal: the error propagates and the simulator stops rather than
answer with a key it could not persist.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc

from fleet.atomic import write_atomic

__all__ = ["EventLog", "StateWriter"]


class StateWriter:
    """Group-commit writer of one state file (or of nothing, when ``path`` is ``None``)."""

    def __init__(self, path: Path | None, snapshot: Callable[[], bytes]) -> None:
        self._path = path
        self._snapshot = snapshot
        self._version = 0
        self._written = 0
        self._dirty = anyio.Event()
        self._done = anyio.Event()
        self.writes = 0
        self._error: OSError | None = None  #: the write that failed: nothing is written after

    def mark_dirty(self) -> int:
        """Note a change; returns the version to pass to :meth:`wait_written`."""
        self._version += 1
        self._dirty.set()
        return self._version

    async def wait_written(self, version: int) -> None:
        """Return once a write that includes change ``version`` is on disk."""
        if self._path is None:
            return
        while self._written < version:
            if self._error is not None:
                raise self._error
            await self._done.wait()

    async def flush(self) -> None:
        """Return once everything changed so far is on disk."""
        await self.wait_written(self._version)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """The writer task. Start it with ``task_group.start``."""
        task_status.started()
        if self._path is None:
            await anyio.sleep_forever()
        try:
            while True:
                await self._dirty.wait()
                self._dirty = anyio.Event()
                await self._write_once()
        finally:
            with anyio.CancelScope(shield=True):
                if self._error is None and self._written < self._version:
                    await self._write_once()

    async def _write_once(self) -> None:
        assert self._path is not None
        version = self._version
        data = self._snapshot()
        try:
            await anyio.to_thread.run_sync(write_atomic, self._path, data)
        except OSError as exc:
            self._error = OSError(exc.errno, f"the simulator's state file {self._path} cannot "
                                  f"be written: {exc.strerror or exc}")
            self._done.set()  # the waiters raise it
            raise self._error from exc
        self.writes += 1
        self._written = version
        done, self._done = self._done, anyio.Event()
        done.set()


class EventLog:
    """``--log FILE``: one JSON object per line, appended and flushed at once."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._file: IO[str] | None = None

    def open(self) -> None:
        if self._path is not None and self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: dict[str, Any]) -> None:
        """Append ``record``; a log that cannot be written stops the simulator (an OSError
        naming the file), as its state file does: a log with lines missing would mislead."""
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as exc:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # what it still buffers cannot be written either
                file.close()
            raise OSError(exc.errno, f"the simulator's log {self._path} cannot be written: "
                          f"{exc.strerror or exc}") from exc

    def command(self, modem: int, command: str, **extra: Any) -> None:
        """One received command (exactly one line per command)."""
        self._write({"time": time.time(), "modem": modem, "command": command, **extra})

    def fault(self, modem: int, fault: str, command: str) -> None:
        """A fault that fired while handling ``command``."""
        self._write({"time": time.time(), "modem": modem, "fault": fault, "command": command})
