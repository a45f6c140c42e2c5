"""The device session against real peers: the in-process simulator, and a scripted modem on an
in-memory byte stream (the codec's modem side). Identify, URC routing, a timeout and what it
leaves behind, EOF, a busy port, reopen and re-identify, a board swapped. Backoff waits go
through the policy's injected sleep (nothing waits for them); a command timeout is a fraction
of a second."""

from __future__ import annotations

import math
import os
import termios
import tty
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from fleet.at import Command, CommandLine, ModemConnection, Ok
from fleet.device import DeviceSession, DeviceSwapped
from fleet.errors import DeviceTimeout, PortBusy, TransportError
from fleet.retry import RetryPolicy
from fleet.sim import InProcessSimulator, SimConfig
from fleet.sim.inprocess import MemoryByteStream
from fleet.transport import open_port
from tests.simproc import run_sim

pytestmark = pytest.mark.anyio
SHORT = 0.2  #: a command timeout (s) that only a silent peer reaches


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _policy(waits: list[float]) -> RetryPolicy:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return RetryPolicy(attempts=3, reopen_attempts=3, sleep=sleep)


@asynccontextmanager
async def _simulator(count: int = 1, *faults: str) -> AsyncIterator[InProcessSimulator]:
    async with InProcessSimulator(SimConfig(count=count, faults=faults)) as sim:
        yield sim


def _session(opener: Callable[[], Awaitable[anyio.abc.ByteStream]],
             waits: list[float] | None = None) -> DeviceSession:
    return DeviceSession(opener, port="test", policy=_policy([] if waits is None else waits),
                         probe_timeout=SHORT)


async def test_identify_reads_the_imei_twice_and_the_firmware_and_the_model_on_request() -> None:
    async with _simulator() as sim:
        session = _session(lambda: sim.connect(0))
        await session.open()
        await session.probe()
        identity = await session.identify(timeout=5)
        modem = sim.modems[0]
        assert identity.imei == modem.imei
        assert identity.firmware == modem.firmware
        assert await session.read_model(timeout=5)  # the modem's AT+CGMM line
        await session.close()


async def test_a_busy_port_is_port_busy() -> None:
    async with _simulator() as sim:
        first = _session(lambda: sim.connect(0))
        await first.open()
        second = _session(lambda: sim.connect(0))
        with pytest.raises(PortBusy):
            await second.open()
        await first.close()
        await second.open()  # free again once the first one closed it
        await second.close()


async def test_a_timeout_leaves_the_session_to_recover_and_refuses_commands_until_then() -> None:
    async with _simulator(1, "silent:1.0") as sim:
        session = _session(lambda: sim.connect(0))
        await session.open()
        with pytest.raises(DeviceTimeout, match="no answer within"):
            await session.command(Command.read("+CFUN"), timeout=SHORT)
        assert session.needs_recover
        with pytest.raises(TransportError, match="needs recover"):
            await session.command(Command.read("+CFUN"), timeout=SHORT)
        await session.close()


async def test_recover_reopens_and_re_identifies_the_same_board() -> None:
    async with _simulator() as sim:
        session = _session(lambda: sim.connect(0))
        await session.open()
        await session.identify(timeout=5)
        await session.close()  # the line went away
        await session.recover(timeout=5)
        assert session.is_open and not session.needs_recover
        assert (await session.read_imei(timeout=5)) == sim.modems[0].imei
        await session.close()


async def test_recover_finds_another_board_swapped_in() -> None:
    async with _simulator(2) as sim:
        index = 0

        async def opener() -> anyio.abc.ByteStream:
            return await sim.connect(index)

        session = _session(opener)
        await session.open()
        await session.identify(timeout=5)
        await session.close()
        index = 1  # the slot now holds the other board
        with pytest.raises(DeviceSwapped, match="device swapped"):
            await session.recover(timeout=5)
        await session.close()


async def test_a_port_that_does_not_come_back_fails_after_the_policys_reopens() -> None:
    waits: list[float] = []
    opened = 0

    async def opener() -> anyio.abc.ByteStream:
        nonlocal opened
        opened += 1
        raise TransportError("test: no such port")

    session = _session(opener, waits)
    with pytest.raises(TransportError, match=r"after reopening the port 3 time\(s\)"):
        await session.recover(timeout=SHORT)
    assert opened == 3
    assert waits == [0.5, 1.0]  # backoff between the reopens, through the injected sleep


@asynccontextmanager
async def _scripted(answer: Callable[[str], bytes | None]) -> AsyncIterator[DeviceSession]:
    """A session whose peer answers each command line with ``answer(line)`` (the codec's
    modem side splits the host's bytes into commands); ``None`` hangs the line up."""
    to_modem_send, to_modem_receive = anyio.create_memory_object_stream[bytes](math.inf)
    to_host_send, to_host_receive = anyio.create_memory_object_stream[bytes](math.inf)
    host = MemoryByteStream(to_modem_send, to_host_receive)
    modem = MemoryByteStream(to_host_send, to_modem_receive)

    async def serve() -> None:
        codec = ModemConnection()
        try:
            while True:
                codec.receive_data(await modem.receive())
                while isinstance(event := codec.next_event(), CommandLine):
                    reply = answer(event.text)
                    if reply is None:
                        await modem.aclose()
                        return
                    await modem.send(reply)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def opener() -> anyio.abc.ByteStream:
        return host

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        session = _session(opener)
        await session.open()
        yield session
        await modem.aclose()
        tg.cancel_scope.cancel()


async def test_urcs_around_and_inside_an_answer_are_routed_aside() -> None:
    def answer(line: str) -> bytes:
        if line.upper() == "AT+CFUN?":
            return (b"+CEREG: 2\r\n%XSIM: 1\r\n+CFUN: 4\r\n+CEREG: 5\r\n"
                    + ModemConnection.response((), Ok()))
        return b""

    async with _scripted(answer) as session:
        response = await session.command(Command.read("+CFUN"), timeout=5)
        assert response.lines == ("+CFUN: 4",)
        assert await session.read_function_mode(timeout=5) == 4


async def test_a_peer_that_hangs_up_is_a_lost_connection() -> None:
    async with _scripted(lambda line: None) as session:
        with pytest.raises(TransportError, match="connection lost during AT"):
            await session.command(Command.read("+CFUN"), timeout=5)
        assert session.needs_recover


async def test_open_port_over_a_pty_is_exclusive_and_talks_to_the_modem(tmp_path: Path) -> None:
    with run_sim(tmp_path, 1) as sim:
        port = str(sim.ports[0])
        session = _session(lambda: open_port(port))
        await session.open()
        with pytest.raises(PortBusy, match="in use by another process"):
            await open_port(port)  # two runs never drive one port
        await session.probe()
        assert (await session.identify(timeout=5)).imei == sim.modem_state(0)["imei"]
        await session.close()
    with pytest.raises(TransportError, match="does not exist"):
        await open_port(str(tmp_path / "no-such-port"))
    with pytest.raises(TransportError, match="write sim://N"):
        await open_port("sim://x", sim=_never)
    with pytest.raises(TransportError, match="TCP port must be a number"):
        await open_port("socket://nohost")


@pytest.mark.parametrize(("xonxoff", "dsrdtr"), [(True, False), (False, True), (False, False)])
async def test_the_ports_flow_control_is_what_the_plan_says(xonxoff: bool, dsrdtr: bool) -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        stream = await open_port(path, rtscts=False, xonxoff=xonxoff, dsrdtr=dsrdtr)
        try:
            iflag, _, cflag = termios.tcgetattr(slave)[:3]
            assert bool(iflag & termios.IXON) == bool(iflag & termios.IXOFF) == xonxoff
            assert not cflag & termios.CRTSCTS  # rtscts off, with or without DSR/DTR
        finally:
            await stream.aclose()
    finally:
        os.close(master)
        os.close(slave)


async def _never(index: int) -> anyio.abc.ByteStream:  # pragma: no cover - never called
    raise AssertionError(index)


async def test_a_port_that_does_not_take_a_write_at_once_gets_it_later() -> None:
    """More than a pty buffers, to a peer that reads only later: the transport queues what the
    port did not take and sends it when the port is writable, without holding up the event
    loop meanwhile (the peer's reads run in it too)."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        os.set_blocking(master, False)
        stream = await open_port(os.ttyname(slave))
        payload = bytes(range(256)) * 4096  # 1 MiB, far more than a pty holds
        received = bytearray()
        with anyio.fail_after(20):
            await stream.send(payload)
            while len(received) < len(payload):
                await anyio.wait_readable(master)
                received += os.read(master, 65536)
        assert bytes(received) == payload
        await stream.aclose()
    finally:
        os.close(master)
        os.close(slave)
