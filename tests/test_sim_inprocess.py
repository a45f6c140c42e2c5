"""The in-process simulator (``sim://`` ports): memory byte streams, driven by the host codec."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import anyio.abc
import pytest

from fleet.at import (
    NEED_DATA,
    CmeErrorLine,
    Command,
    Error,
    HostConnection,
    HostEvent,
    InformationLine,
    Ok,
)
from fleet.credentials import check_keygen, parse_keygen
from fleet.errors import PortBusy, TransportError
from fleet.sim import InProcessSimulator, SimConfig
from fleet.sim.core import LinkClosed, SimCore

pytestmark = pytest.mark.anyio


async def transact(stream: anyio.abc.ByteStream, host: HostConnection,
                   command: Command) -> list[HostEvent]:
    """Send ``command`` and collect events up to its final result."""
    await stream.send(host.send(command))
    events: list[HostEvent] = []
    with anyio.fail_after(10):
        while True:
            event = host.next_event()
            if event is NEED_DATA:
                host.receive_data(await stream.receive())
                continue
            events.append(event)
            if isinstance(event, Ok | Error | CmeErrorLine):
                return events


async def test_connect_and_talk_through_the_host_codec() -> None:
    async with InProcessSimulator(SimConfig(count=8, seed=3)) as sim:
        stream = await sim.connect(3)
        host = HostConnection()
        events = await transact(stream, host, Command.set("+CGSN", 1))
        assert events == [InformationLine(text=f'+CGSN: "{sim.modems[3].imei}"'), Ok()]
        events = await transact(stream, host, Command.set("%KEYGEN", 16842753, 2, 0))
        assert isinstance(events[0], InformationLine) and events[1] == Ok()
        answer = parse_keygen(events[0].text)
        identity = sim.modems[3].identity_key.public_key()
        assert all(c.ok for c in check_keygen(answer, identity_key=identity))
        assert answer.payload.device_uuid == sim.modems[3].device_uuid
        assert sim.modems[3].store.get(16842753, 2) is not None
        await stream.aclose()


async def test_port_busy_bad_index_and_reconnect() -> None:
    async with InProcessSimulator(SimConfig(count=4)) as sim:
        stream = await sim.connect(1)
        with pytest.raises(PortBusy):
            await sim.connect(1)
        for bad in (4, -1, 99):
            with pytest.raises(TransportError):
                await sim.connect(bad)
        other = await sim.connect(2)  # other modems are independent
        await stream.aclose()
        again = await sim.connect(1)  # closing frees the modem at once
        assert await transact(again, HostConnection(), Command.action()) == [Ok()]
        await again.aclose()
        await other.aclose()


async def test_disconnect_fault_closes_the_simulator_end_and_reconnect_works() -> None:
    config = SimConfig(count=3, function_mode=4, faults=("disconnect:1.0@2",))
    async with InProcessSimulator(config) as sim:
        stream = await sim.connect(2)
        await stream.send(b"AT+CFUN=0\r")
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await stream.receive()
        with pytest.raises((anyio.BrokenResourceError, anyio.ClosedResourceError)):
            await stream.send(b"AT\r")
        assert sim.modems[2].function_mode == 4  # the command was not executed
        fresh = await sim.connect(2)  # a fresh connection to the same modem
        await fresh.send(b"AT\r")
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await fresh.receive()
        healthy = await sim.connect(1)
        assert await transact(healthy, HostConnection(), Command.action()) == [Ok()]


async def test_lost_answer_keeps_the_key_in_process(tmp_path: Path) -> None:
    config = SimConfig(count=2, faults=("lost-answer:1.0@0",), state_path=tmp_path / "s.json",
                       log_path=tmp_path / "log")
    async with InProcessSimulator(config) as sim:
        stream = await sim.connect(0)
        await stream.send(b"AT%KEYGEN=5,8\r")
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await stream.receive()
        assert sim.modems[0].store.get(5, 8) is not None
        state = json.loads((tmp_path / "s.json").read_text())
        assert state["modems"][0]["credentials"][0]["sec_tag"] == 5
    log = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [r.get("fault") for r in log] == [None, "lost-answer"]


async def test_state_writes_coalesce_and_precede_answers(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    count = 64
    async with InProcessSimulator(SimConfig(count=count, state_path=path)) as sim:
        first_writes = sim.core.writer.writes
        streams = [await sim.connect(i) for i in range(count)]

        async def change(index: int) -> None:
            events = await transact(streams[index], HostConnection(), Command.set("+CFUN", 4))
            assert events == [Ok()]
            # the answer came after a write that holds this modem's change
            on_disk = json.loads(path.read_text())["modems"][index]
            assert on_disk["function_mode"] == 4

        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(change, index)
        writes = sim.core.writer.writes - first_writes
        assert 1 <= writes < count  # grouped, not one write per change
        for stream in streams:
            await stream.aclose()


async def test_realistic_profile_delays_and_paces() -> None:
    async with InProcessSimulator(SimConfig(count=1, profile="realistic")) as sim:
        stream = await sim.connect(0)
        host = HostConnection()
        start = time.monotonic()
        assert await transact(stream, host, Command.action()) == [Ok()]
        quick = time.monotonic() - start
        assert 0.02 <= quick < 0.5
        start = time.monotonic()
        assert await transact(stream, host, Command.set("+CFUN", 4)) == [Ok()]
        assert 0.2 <= time.monotonic() - start < 1.0
        await stream.send(host.send(Command.set("%KEYGEN", 7, 2, 0)))
        start = time.monotonic()
        chunks: list[tuple[float, bytes]] = []
        with anyio.fail_after(10):
            while not b"".join(c for _, c in chunks).endswith(b"OK\r\n"):
                chunk = await stream.receive()
                chunks.append((time.monotonic(), chunk))
        data = b"".join(c for _, c in chunks)
        first_line = data[: data.index(b"\n") + 1]
        assert len(first_line) > 500
        # Key generation time, then the answer line when its last byte would have come off a
        # 115200-baud UART (the simulator paces line by line); the OK after it takes less than
        # a USB frame to arrive, so it comes in the same write.
        assert chunks[0][0] - start >= 1.5 + 0.9 * (len(first_line) + 4) / 11520
        assert chunks[0][1] == first_line + b"OK\r\n"


async def test_realistic_output_is_paced_line_by_line_short_lines_joined() -> None:
    core = SimCore(SimConfig(count=1, profile="realistic"))
    writes: list[tuple[float, bytes]] = []

    class Recorder:
        async def receive(self) -> bytes:  # pragma: no cover - only send is used
            raise LinkClosed("unused")

        async def send(self, data: bytes) -> None:
            writes.append((time.monotonic(), data))

    long_a, long_b = b"%CMNG: 1,0," + b"A" * 200 + b"\r\n", b"%CMNG: 2,0," + b"B" * 200 + b"\r\n"
    start = time.monotonic()
    assert await core._send(Recorder(), long_a + b"OK\r\n" + long_b + b"+X\r\n" + b"OK\r\n")
    # A line longer than a USB frame starts a new write; short lines ride with the one before.
    assert [data for _, data in writes] == [long_a + b"OK\r\n", long_b + b"+X\r\nOK\r\n"]
    total = sum(len(data) for _, data in writes)
    assert writes[0][0] - start >= 0.9 * len(writes[0][1]) / 11520
    assert writes[1][0] - start >= 0.9 * total / 11520  # every byte still takes its time


async def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="count"):
        SimConfig(count=0)
    with pytest.raises(ValueError, match="unknown model"):
        SimConfig(count=1, model="nrf9999")
    with pytest.raises(ValueError, match="profile"):
        SimConfig(count=1, profile="slowish")
    with pytest.raises(ValueError, match="index 5 does not exist"):
        SimConfig(count=2, faults=("garble:0.1@5",))
    with pytest.raises(ValueError, match="function mode"):
        SimConfig(count=1, function_mode=3)
    with pytest.raises(TypeError):
        InProcessSimulator("sim://3")  # type: ignore[arg-type]


async def test_an_exception_in_the_body_propagates_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with InProcessSimulator(SimConfig(count=1)) as sim:
            await sim.connect(0)
            raise KeyError("boom")
    with pytest.raises(RuntimeError, match="not running"):
        sim.modems  # noqa: B018


FULL = Path("/dev/full")  #: every write to it fails with ENOSPC: a full disk
needs_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full on this system")


@needs_full
async def test_a_log_that_cannot_be_written_stops_the_simulator_not_its_caller() -> None:
    async with InProcessSimulator(SimConfig(count=2, log_path=FULL)) as sim:
        stream = await sim.connect(0)
        await stream.send(b"AT\r")
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await stream.receive()  # its line could not be logged: no answer, the port closes
        assert sim.failure == ("the built-in simulator stopped: the simulator's log /dev/full "
                               "cannot be written: No space left on device")
        with pytest.raises(TransportError, match="the built-in simulator stopped: the "):
            await sim.connect(1)
        await stream.aclose()
