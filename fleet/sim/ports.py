"""Real transports for the simulator: pseudo-terminals and TCP listeners.

How this works
--------------
:class:`PtyPort` gives modem ``i`` a pty from ``os.openpty()``: the slave is put in raw mode and
KEPT OPEN by the simulator (so reading the master never fails with EIO while no host has the port
open), the master is non-blocking and read by a reader registered once with the asyncio event loop
(its epoll, never select(), so hundreds of ports work; not ``anyio.wait_readable``, which adds and
removes the descriptor around every read: two ``epoll_ctl`` calls per command, a sixth of the
simulator's time with hundreds of modems). ``DIR/modem<i>`` is a symlink to the slave's
``/dev/pts/N``, replaced atomically (symlink to a temp name, rename over the link). When a fault
drops the port, a NEW pty is made and linked first, then the old one is closed: the host sees its
port fail (EIO / hang-up) and finds the replacement by opening the same link again.

:func:`serve_tcp` listens on one TCP port for modem ``i`` (``socket://HOST:PORT+i``). One
connection at a time: a second one is closed at once while the first is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from pathlib import Path

import anyio
import anyio.abc

from fleet.fdio import FdClosed, read_ready
from fleet.sim.core import Ending, LinkClosed, SimCore

__all__ = ["PtyPort", "StreamLink", "relink", "serve_tcp"]

_READ_SIZE = 65536


def relink(target: str, link: Path) -> None:
    """Make ``link`` a symlink to ``target``, atomically (it never disappears in between)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class _Pty:
    """One open pty pair."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        try:
            tty.setraw(self.slave)
            os.set_blocking(self.master, False)
            self.name = os.ttyname(self.slave)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class _PtyLink:
    """The master side of one pty while a session is served (:meth:`close` when it ends)."""

    def __init__(self, pty: _Pty) -> None:
        self._pty = pty
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._closed: LinkClosed | None = None
        self._ready = asyncio.Event()
        self._reading = False
        self._start_reading()

    def _start_reading(self) -> None:
        if not self._reading and self._closed is None:
            self._loop.add_reader(self._pty.master, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._pty.master)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = read_ready(self._pty.master, _READ_SIZE)
        except FdClosed as exc:
            self._closed = LinkClosed(str(exc))
            self._stop_reading()
        else:
            if not data:
                return
            self._buffer += data
            if len(self._buffer) >= _READ_SIZE:  # a host that floods: stop reading until drained
                self._stop_reading()
        self._ready.set()

    async def receive(self) -> bytes:
        while not self._buffer:
            if self._closed is not None:
                raise self._closed
            self._ready.clear()
            await self._ready.wait()
        data = bytes(self._buffer)
        self._buffer.clear()
        self._start_reading()
        return data

    def close(self) -> None:
        self._stop_reading()

    async def send(self, data: bytes) -> None:
        fd = self._pty.master
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await anyio.wait_writable(fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise LinkClosed(str(exc)) from exc
            view = view[written:]


class PtyPort:
    """Modem ``index`` on a pty, reachable through the symlink ``link``."""

    def __init__(self, index: int, link: Path) -> None:
        self.index = index
        self.link = link
        self._pty: _Pty | None = None

    def open(self) -> None:
        """Create the pty and the link (call before :meth:`run`). A stale link from an earlier
        run is replaced; anything else at that path is refused (ValueError)."""
        if os.path.lexists(self.link) and not self.link.is_symlink():
            raise ValueError(f"{self.link} exists and is not a symlink: not replacing it")
        self._pty = _Pty()
        relink(self._pty.name, self.link)

    def _replace(self) -> None:
        old = self._pty
        self._pty = _Pty()
        relink(self._pty.name, self.link)
        if old is not None:
            old.close()

    def close(self, *, unlink: bool = True) -> None:
        """Close the pty and remove the link (a dangling link could later point at a pty that
        belongs to some other program)."""
        if self._pty is not None:
            self._pty.close()
            self._pty = None
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                if self.link.is_symlink():
                    self.link.unlink()

    async def run(self, core: SimCore) -> None:
        """Serve forever; a dropped port is replaced by a fresh pty behind the same link."""
        while True:
            assert self._pty is not None
            link = _PtyLink(self._pty)
            try:
                await core.serve(self.index, link)
            finally:
                link.close()
            # Ending.DROPPED (a fault) or CLOSED (cannot happen while we hold the slave; if the
            # pty broke anyway, a fresh one is the right answer too).
            self._replace()


class StreamLink:
    """A :class:`~fleet.sim.core.Link` over an anyio byte stream (TCP, in-process)."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def receive(self) -> bytes:
        try:
            return await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError,
                OSError) as exc:
            raise LinkClosed(type(exc).__name__) from exc

    async def send(self, data: bytes) -> None:
        try:
            await self._stream.send(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            raise LinkClosed(type(exc).__name__) from exc


async def serve_stream(core: SimCore, index: int, stream: anyio.abc.ByteStream) -> Ending | None:
    """Serve one connection to modem ``index`` and close it; None if the modem was busy."""
    async with stream:
        token = core.claim(index)
        if token is None:
            return None
        try:
            return await core.serve(index, StreamLink(stream))
        finally:
            core.release(index, token)


async def serve_tcp(core: SimCore, index: int, host: str, port: int, *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``host:port`` for modem ``index`` until cancelled."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        await serve_stream(core, index, stream)

    async with listener:
        task_status.started()
        await listener.serve(handle)
