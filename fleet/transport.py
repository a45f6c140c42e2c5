"""Open a port URL and get a byte stream (an ``anyio.abc.ByteStream``).

Port forms:
- a device path (``/dev/ttyACM0``, ``/dev/serial/by-id/...``, a simulator link ``DIR/modem3``):
  pyserial-asyncio-fast's transport over :class:`PollSerial`, opened EXCLUSIVELY (``flock``), so
  two runs never drive one port (a port another process holds is told by the lock's errno,
  EWOULDBLOCK, or the open's EBUSY);
- ``socket://host:port``: a TCP serial server such as ser2net (one client per port is the
  server's rule);
- ``sim://N``: modem N of the in-process simulator (see :mod:`fleet.sim`).

Why not pyserial's default POSIX class: its ``read()`` calls ``select()``, which fails for file
descriptors >= 1024 - about 200 ports in one process, since pyserial also opens two pipes per
port. :class:`PollSerial` reads with one non-blocking read (:func:`fleet.fdio.read_ready`, the
reader the simulator's ptys use too) when the event loop (epoll) says the port is readable, so
there is no descriptor limit; :func:`fleet.fdio.raise_fd_limit` lifts the process's soft
RLIMIT_NOFILE so hundreds of ports fit. Writes go through the transport, which (in the -fast fork
of pyserial-asyncio) writes at once when nothing is queued and registers a writer with the event
loop only for what the port did not take. Port URLs are parsed by
:func:`fleet.porturl.parse_port`.

Foreign exceptions (``serial.SerialException``, ``OSError``) are mapped to
:class:`fleet.errors.TransportError` / :class:`fleet.errors.PortBusy` here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import serial
import serial.serialposix
import serial_asyncio_fast

from fleet.errors import PortBusy, TransportError
from fleet.fdio import FdClosed, read_ready
from fleet.porturl import DevicePath, SimPorts, SocketPort, parse_port

__all__ = ["PollSerial", "SerialStream", "open_port"]

_READ_HIGH_WATER = 256 * 1024
#: What the exclusive open meets on a port another process holds: the ``flock`` (EWOULDBLOCK,
#: which is EAGAIN on Linux) or a tty another program opened with TIOCEXCL (EBUSY).
_BUSY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY})


class PollSerial(serial.serialposix.PosixPollSerial):
    """pyserial's poll-based POSIX class, with a read that never blocks and never polls.

    The asyncio transport calls ``read`` only when epoll reported the descriptor readable, so a
    single non-blocking ``os.read`` is enough; EOF or EIO (the device is gone: a USB adapter was
    pulled, a pty's other end closed) raises ``SerialException``, which the transport turns into
    ``connection_lost``.
    """

    def read(self, size: int = 1) -> bytes:
        if not self.is_open or self.fd is None:
            raise serial.PortNotOpenError()
        try:
            return read_ready(self.fd, size)
        except FdClosed as exc:
            raise serial.SerialException(f"device disconnected ({exc})") from exc

    def write(self, b: Any, /) -> int:
        """One non-blocking write; returns how much the port took. A full port raises
        BlockingIOError, which the transport answers by queueing the rest and waiting for the
        port to be writable (pyserial's own ``write`` with ``write_timeout=0`` retries a full
        port in a loop, spinning the event loop until it drains)."""
        if not self.is_open or self.fd is None:
            raise serial.PortNotOpenError()
        try:
            return os.write(self.fd, b)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            raise serial.SerialException(f"write failed: {exc.strerror or exc}") from exc


class _SerialTransport(serial_asyncio_fast.SerialTransport):
    """pyserial-asyncio-fast's transport, with its writer removed once queued output drained.

    The library (0.16) writes at once and queues what the port did not take, but once the queue
    has drained it leaves its writer registered: the next writable event finds the queue empty
    and fails an assertion, on every loop iteration. Removing the writer then is the fix
    proposed upstream."""

    def _write_ready(self) -> None:
        super()._write_ready()
        if not self._write_buffer:
            self._remove_writer()


class _Bridge(asyncio.Protocol):
    """Collects what the serial transport delivers, for :class:`SerialStream` to hand out."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.Event()
        self.error: BaseException | None = None
        self.transport: serial_asyncio_fast.SerialTransport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, serial_asyncio_fast.SerialTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.readable.set()
        if len(self.buffer) > _READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        self.closed.set()
        self.readable.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class SerialStream(anyio.abc.ByteStream):
    """An anyio byte stream over a pyserial-asyncio-fast transport (asyncio backend)."""

    def __init__(self, port: str, transport: serial_asyncio_fast.SerialTransport,
                 bridge: _Bridge) -> None:
        self.port = port
        self._transport = transport
        self._bridge = bridge

    async def receive(self, max_bytes: int = 65536) -> bytes:
        bridge = self._bridge
        while not bridge.buffer:
            if bridge.closed.is_set():
                if bridge.error is not None:
                    raise anyio.BrokenResourceError(str(bridge.error))
                raise anyio.EndOfStream
            bridge.readable.clear()
            await bridge.readable.wait()
        data = bytes(bridge.buffer[:max_bytes])
        del bridge.buffer[:max_bytes]
        low = len(bridge.buffer) < _READ_HIGH_WATER // 2
        if bridge.paused and low and not bridge.closed.is_set():
            bridge.paused = False
            self._transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        bridge = self._bridge
        if bridge.closed.is_set() or self._transport.is_closing():
            raise anyio.BrokenResourceError(f"{self.port}: port closed")
        await bridge.writable.wait()
        self._transport.write(item)

    async def send_eof(self) -> None:
        raise NotImplementedError("serial ports have no end-of-file")

    async def aclose(self) -> None:
        if not self._transport.is_closing():
            serial_port = self._transport.serial
            if serial_port is not None:
                # Drop unsent output first: closing a tty waits for queued output to drain (up
                # to 30 s on Linux), which a hung device with flow control never does.
                with contextlib.suppress(serial.SerialException, OSError):
                    serial_port.reset_output_buffer()
            self._transport.abort()
        with anyio.move_on_after(2):
            await self._bridge.closed.wait()


def _open_serial_sync(path: str, baudrate: int, rtscts: bool, xonxoff: bool,
                      dsrdtr: bool) -> PollSerial:
    try:
        port = PollSerial(port=None, baudrate=baudrate, rtscts=rtscts, xonxoff=xonxoff,
                          dsrdtr=dsrdtr, exclusive=True, timeout=0, write_timeout=0)
        port.port = path
        port.open()
    except serial.SerialException as exc:
        if exc.errno in _BUSY:
            raise PortBusy(
                f"{path} is in use by another process (another fleet run or a terminal program)"
            ) from exc
        raise TransportError(f"cannot open {path}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot open {path}: {exc}") from exc
    try:
        port.reset_input_buffer()
    except (serial.SerialException, OSError) as exc:
        port.close()
        raise TransportError(f"cannot open {path}: {exc}") from exc
    return port


async def open_serial(path: str, *, baudrate: int = 115200, rtscts: bool = True,
                      xonxoff: bool = False, dsrdtr: bool = False) -> SerialStream:
    """Open a serial device exclusively and wrap it as a byte stream (flow control: RTS/CTS,
    XON/XOFF and DSR/DTR as asked)."""
    if not os.path.exists(path):
        raise TransportError(f"{path} does not exist (unplugged? wrong path?)")
    port = _open_serial_sync(path, baudrate, rtscts, xonxoff, dsrdtr)
    loop = asyncio.get_running_loop()
    bridge = _Bridge()
    transport = _SerialTransport(loop, bridge, port)
    return SerialStream(path, transport, bridge)


async def open_socket(address: SocketPort, *,
                      connect_timeout: float = 10.0) -> anyio.abc.ByteStream:
    """Connect to ``socket://host:port`` (ser2net or ``fleet sim --listen``)."""
    try:
        with anyio.fail_after(connect_timeout):
            stream = await anyio.connect_tcp(address.host, address.port)
    except TimeoutError as exc:
        raise TransportError(f"{address}: no connection within {connect_timeout:g} s") from exc
    except OSError as exc:
        raise TransportError(f"{address}: {exc.strerror or exc}") from exc
    return stream


SimConnector = Callable[[int], Awaitable[anyio.abc.ByteStream]]


async def open_port(
    url: str,
    *,
    baudrate: int = 115200,
    rtscts: bool = True,
    xonxoff: bool = False,
    dsrdtr: bool = False,
    sim: SimConnector | None = None,
) -> anyio.abc.ByteStream:
    """Open ``url`` (device path, ``socket://host:port`` or ``sim://N``)."""
    try:
        target = parse_port(url)
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    if isinstance(target, SimPorts):
        if target.first != target.last:
            raise TransportError(f"invalid simulator port {url!r} (expected sim://N)")
        if sim is None:
            raise TransportError(f"{url}: no in-process simulator is running")
        return await sim(target.first)
    if isinstance(target, SocketPort):
        return await open_socket(target)
    if not isinstance(target, DevicePath):  # a usb: form names ports; a plan expands it
        raise TransportError(f"{url}: a usb: form is expanded into device paths by the plan, "
                             "it cannot be opened itself")
    return await open_serial(target.path, baudrate=baudrate, rtscts=rtscts, xonxoff=xonxoff,
                             dsrdtr=dsrdtr)
