"""The simulator in the caller's event loop, for ``sim://`` ports in ``fleet run`` and for tests.

How this works
--------------
:class:`InProcessSimulator` is an async context manager that runs the state writer in its own
anyio task group. :meth:`InProcessSimulator.connect` makes two memory object streams (one per
direction), starts the modem's session loop (:meth:`SimCore.serve`) on one end and hands the other
end to the caller as an :class:`anyio.abc.ByteStream`. A fault that drops the port closes the
simulator's end: the host then gets ``EndOfStream`` on receive (after any bytes already sent) and
``BrokenResourceError`` on send. Closing the host end frees the modem at once, so ``connect`` may
be called again straight away.

When the simulator cannot write its state file or its log (a full disk), it stops, as ``fleet
sim`` does: every connection is closed and ``connect`` raises :class:`TransportError` saying why
(:attr:`InProcessSimulator.failure`). Its tasks never raise into the caller's: that would cancel
the caller (a ``fleet run`` of ``sim://`` ports, which then reports the devices as lost).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from types import TracebackType

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fleet.errors import PortBusy, TransportError
from fleet.sim.config import SimConfig
from fleet.sim.core import SimCore
from fleet.sim.model import Modem
from fleet.sim.ports import StreamLink

__all__ = ["InProcessSimulator", "MemoryByteStream"]


class MemoryByteStream(anyio.abc.ByteStream):
    """A byte stream over a pair of memory object streams (one per direction)."""

    def __init__(self, send: MemoryObjectSendStream[bytes],
                 receive: MemoryObjectReceiveStream[bytes],
                 on_close: Callable[[], None] | None = None) -> None:
        self._send = send
        self._receive = receive
        self._pending = b""
        self._on_close = on_close

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            self._pending = await self._receive.receive()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        if item:
            await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
        await self._send.aclose()
        await self._receive.aclose()


class InProcessSimulator:
    """``async with InProcessSimulator(config) as sim: stream = await sim.connect(3)``."""

    def __init__(self, config: SimConfig) -> None:
        if not isinstance(config, SimConfig):
            raise TypeError("InProcessSimulator needs a SimConfig")
        self.config = config
        self._core: SimCore | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._serving: set[anyio.CancelScope] = set()
        #: why the simulator stopped (its state file or log could not be written), or None
        self.failure: str | None = None

    @property
    def core(self) -> SimCore:
        if self._core is None:
            raise RuntimeError("the simulator is not running (use 'async with')")
        return self._core

    @property
    def modems(self) -> list[Modem]:
        """The modem models, by index (for tests: ``.imei``, ``.store``, ...)."""
        return self.core.modems

    async def __aenter__(self) -> InProcessSimulator:
        core = SimCore(self.config)
        async with contextlib.AsyncExitStack() as stack:
            core.log.open()
            stack.callback(core.log.close)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(self._write_state, core)
            self._core, self._tg, self._stack = core, tg, stack.pop_all()
        try:
            await core.writer.flush()
        except OSError:  # a state file it cannot write: raised as it is (not in a group)
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._tg is not None and self._stack is not None
        tg, stack = self._tg, self._stack
        self._tg = self._stack = None
        tg.cancel_scope.cancel()
        try:
            # The body's own exception is not handed to the task group, so it propagates as it
            # is (not wrapped in an ExceptionGroup); a failure of the simulator's tasks does.
            await stack.__aexit__(None, None, None)
        finally:
            self._core = None

    async def connect(self, index: int) -> anyio.abc.ByteStream:
        """A fresh connection to modem ``index``. Raises :class:`PortBusy` while the modem has a
        live connection and :class:`TransportError` for an index that does not exist."""
        core = self.core
        if self.failure is not None:
            raise TransportError(self.failure)
        if isinstance(index, bool) or not isinstance(index, int) \
                or not 0 <= index < self.config.count:
            raise TransportError(f"sim://{index}: no such modem (count is {self.config.count})")
        token = core.claim(index)
        if token is None:
            raise PortBusy(f"sim://{index}: the modem already has a live connection")
        to_sim_send, to_sim_receive = anyio.create_memory_object_stream[bytes](math.inf)
        to_host_send, to_host_receive = anyio.create_memory_object_stream[bytes](math.inf)
        host = MemoryByteStream(to_sim_send, to_host_receive,
                                on_close=lambda: core.release(index, token))
        sim_end = MemoryByteStream(to_host_send, to_sim_receive)
        assert self._tg is not None
        self._tg.start_soon(self._serve, core, index, sim_end, token)
        return host

    async def _write_state(self, core: SimCore, *,
                           task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                           ) -> None:
        try:
            await core.writer.run(task_status=task_status)
        except OSError as exc:
            self._stop(exc)

    async def _serve(self, core: SimCore, index: int, stream: MemoryByteStream,
                     token: object) -> None:
        scope = anyio.CancelScope()
        self._serving.add(scope)
        try:
            with scope:
                async with stream:
                    await core.serve(index, StreamLink(stream))
        except OSError as exc:  # its log cannot be written
            self._stop(exc)
        finally:
            self._serving.discard(scope)
            core.release(index, token)

    def _stop(self, exc: OSError) -> None:
        """Stop serving: the state file or the log cannot be written."""
        if self.failure is None:
            self.failure = f"the built-in simulator stopped: {exc.strerror or exc}"
        for scope in self._serving:
            scope.cancel()  # also a session waiting for a state write that will never come
