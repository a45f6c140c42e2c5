"""Scale: hundreds of ports in one process, file descriptors past 1024, slots in parallel.

pyserial's default POSIX class reads with select(), which fails for descriptors >= 1024. These
tests push fleet's own descriptors past 1024 first (by holding ~1100 spare ones), so a
regression to select()-based I/O fails here, and they check from the simulator's log that slots
really run at the same time (a regression to serialised slots fails too).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from fleet.at import Command
from fleet.device import DeviceSession
from fleet.fdio import raise_fd_limit
from fleet.plan import load_plan
from fleet.run import RunOptions, run_plan
from fleet.transport import open_port
from tests.runhelpers import write_plan
from tests.simproc import run_sim


@pytest.fixture
def high_fds() -> Iterator[None]:
    """Hold enough descriptors that everything fleet opens next is numbered above 1024."""
    soft = raise_fd_limit()
    if soft < 4096:
        pytest.skip(f"RLIMIT_NOFILE is {soft}; need 4096 to test descriptors past 1024")
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in spare:
            os.close(fd)


def _highest_fd() -> int:
    return max(int(name) for name in os.listdir("/proc/self/fd"))


def test_256_ports_in_one_process_past_fd_1024(tmp_path: Path, high_fds: None) -> None:
    with run_sim(tmp_path, 256) as sim:

        async def main() -> set[str]:
            sessions = []
            for port in sim.ports:
                async def opener(port: Path = port) -> anyio.abc.ByteStream:
                    return await open_port(str(port))

                session = DeviceSession(opener, port=str(port))
                await session.open()
                sessions.append(session)
            assert _highest_fd() > 1024 + 256
            imeis: set[str] = set()

            async def ask(session: DeviceSession) -> None:
                answer = await session.command(Command.set("+CGSN", 1), timeout=20)
                imeis.add(answer.first("+CGSN:").strip('"'))

            async with anyio.create_task_group() as tg:
                for session in sessions:
                    tg.start_soon(ask, session)
            for session in sessions:
                await session.close()
            return imeis

        imeis = anyio.run(main, backend="asyncio")
    assert len(imeis) == 256


def _overlap(sim_log: list[dict[str, object]], seconds: float) -> int:
    """The most modems whose %KEYGEN was received within any `seconds` window."""
    times = sorted(float(r["time"]) for r in sim_log  # type: ignore[arg-type]
                   if str(r.get("command", "")).upper().startswith("AT%KEYGEN=16842753"))
    best = 0
    start = 0
    for end, when in enumerate(times):
        while when - times[start] > seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def _run_in_process(plan_path: Path, journal: Path) -> object:
    plan = load_plan(plan_path)
    return anyio.run(lambda: run_plan(plan, RunOptions(journal=journal, handle_signals=False)),
                     backend="asyncio")


def test_64_slots_run_in_parallel_past_fd_1024(tmp_path: Path, high_fds: None) -> None:
    with run_sim(tmp_path, 64, "--profile", "realistic") as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"),
                          slot_keys="[tls]")
        outcome = _run_in_process(plan, tmp_path / "j.sqlite")
        assert outcome.exit_code == 0  # type: ignore[attr-defined]
        assert len(outcome.record.devices) == 64  # type: ignore[attr-defined]
        # Each %KEYGEN takes 1.5 s in the realistic profile: with slots in parallel, (nearly)
        # all 64 arrive within one such window; serialised slots would give 1.
        assert _overlap(sim.log_lines(), 1.5) >= 48


@pytest.mark.slow
def test_256_slots_full_run(tmp_path: Path, high_fds: None) -> None:
    with run_sim(tmp_path, 256, "--profile", "realistic") as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"))
        outcome = _run_in_process(plan, tmp_path / "j.sqlite")
        assert outcome.exit_code == 0  # type: ignore[attr-defined]
        assert len(outcome.record.devices) == 256  # type: ignore[attr-defined]
        assert _overlap(sim.log_lines(), 1.5) >= 200
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 4096
