"""SIGINT and SIGTERM for `fleet run`, from the command's first line to its last.

How this works
--------------
``fleet run --json`` prints exactly one JSON document whatever instant a SIGTERM lands. The
default actions (die; KeyboardInterrupt wherever the code happens to be) would break that while
modules are imported and the plan is loaded, before the run's watcher exists. So the command
line's entry calls :func:`catch` first: one Python-level handler that only records the signal.
Before the run starts, `fleet run` looks at :func:`received` and, when a signal came, reports an
interrupted run that sent nothing. The run's watcher (:class:`Watch`) keeps that same handler
(there is no instant at which a signal has its default action), first hands out what was
recorded, and is woken by later signals through ``signal.set_wakeup_fd`` (which also wakes the
event loop when the kernel delivers the signal to another thread). After the run the handler
stays: a late signal is recorded and changes nothing while the document is written. The other
commands get the default handlers back (:func:`release`), and a signal recorded meanwhile is
raised again.

A signal that lands while the interpreter itself starts, before fleet's first line runs, still
has its default action: no Python code runs yet to catch it.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType, TracebackType
    from typing import Self

__all__ = ["Watch", "catch", "received", "release"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def catch() -> None:
    """Record SIGINT and SIGTERM from now on instead of acting on them (main thread only)."""
    _received.clear()  # a signal of an earlier run of this process is not this one's
    for signum in _SIGNALS:
        signal.signal(signum, _record)


def catching() -> bool:
    """Whether :func:`catch` is in force."""
    return all(signal.getsignal(signum) is _record for signum in _SIGNALS)


def release() -> None:
    """The default handlers back; the first signal recorded meanwhile is raised again."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _received:
        signal.raise_signal(_received[0])


def received() -> int | None:
    """The first signal recorded since :func:`catch`, if any (None when it is not in force)."""
    return _received[0] if _received and catching() else None


class Watch:
    """The signals of one run, in order, starting with any recorded before the run began
    (when :func:`catch` was in force; otherwise it is put in force for the watch and the
    previous handlers come back after it). Use on the event loop's (main) thread."""

    def __init__(self) -> None:
        import socket  # not at the top: see next()

        self._seen = 0
        self._previous: dict[int, Any] = {}
        self._reader, self._writer = socket.socketpair()
        self._wakeup = -1

    def __enter__(self) -> Self:
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        if not catching():
            self._previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
            self._seen = len(_received)
            catch()
        self._wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        signal.set_wakeup_fd(self._wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._reader.close()
        self._writer.close()

    async def next(self) -> int:
        """The next signal; waits for one."""
        import anyio  # not at the top: the command line imports this module first of all

        while self._seen >= len(_received):
            await anyio.wait_readable(self._reader)
            try:
                while self._reader.recv(256):
                    pass
            except BlockingIOError:
                pass
        self._seen += 1
        return _received[self._seen - 1]
