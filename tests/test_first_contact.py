"""First contact: a port where nothing answers fails fast and says why, from real peers (a pty
nobody serves, pty peers that send what a wrong baud rate, a Zephyr shell or a log console
send, the simulator), and other processes holding a port are named."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from fleet.device import DeviceSession, NoAnswer
from fleet.diagnose import diagnose
from fleet.plan import load_plan
from fleet.run import RunOptions, run_plan
from fleet.transport import open_serial
from tests.runhelpers import run_json, wait_for, write_plan
from tests.simproc import run_sim

CAUSES = ("AT interface", "baudrate", "rtscts")


@contextmanager
def pty_peer(reply: Callable[[bytes], bytes] | None = None) -> Iterator[str]:
    """A pseudo-terminal whose far end answers each chunk it reads with ``reply(chunk)``
    (``None``: nothing reads or writes it); yields the path fleet opens."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # nobody has the other side open right now
                time.sleep(0.02)
                continue
            if reply is not None and data:
                os.write(master, reply(data))

    thread = threading.Thread(target=serve, daemon=True)
    if reply is not None:
        thread.start()
    try:
        yield path
    finally:
        stop.set()
        if reply is not None:
            thread.join()
        os.close(master)


def garbage(data: bytes) -> bytes:
    """What 115200-baud text looks like to a host reading at another rate."""
    return bytes((b * 37 + 0x81) % 256 for b in data) + b"\xfe\x00\x8f"


def zephyr_shell(data: bytes) -> bytes:
    """A Zephyr shell with colours: echo, 'command not found', the green prompt."""
    out = data.replace(b"\r", b"\r\n")
    if b"\r" in data:
        word = data.strip().split(b" ")[0].decode()
        out += f"{word}: command not found\r\n".encode() + b"\x1b[1;32muart:~$ \x1b[m"
    return out


def log_console(data: bytes) -> bytes:
    """A log console that redraws its line with VT100 codes and never answers."""
    return b"\x1b[8D\x1b[J\x1b[1;31m[00:00:01.100,000] <err> app: no AT host\x1b[m\r\n"


async def probe(path: str, interface: str = "auto", terminator: str = "auto") -> NoAnswer:
    async def opener() -> anyio.abc.ByteStream:
        return await open_serial(path)

    session = DeviceSession(opener, port=path, probe_timeout=0.3, interface=interface,
                            terminator=terminator)
    await session.open()
    try:
        with pytest.raises(NoAnswer) as caught:
            await session.probe()
    finally:
        await session.close()
    return caught.value


@pytest.mark.parametrize(("peer", "line", "kind", "words"), [
    (None, ("auto", "auto"), "nothing", ("nothing received at all", "then LF, then NUL",
                                         *CAUSES)),
    (None, ("at", "cr"), "nothing", ("ending in cr", "`terminator` (cr now)",
                                     "CONFIG_AT_HOST_TERMINATION", *CAUSES)),
    (garbage, ("auto", "auto"), "garbage", ("not AT lines", "wrong baud rate", "baudrate",
                                            "rtscts")),
    (zephyr_shell, ("at", "cr"), "shell", ("Zephyr shell", "prompt", "echoed",
                                           "`at <command>`", "`interface: auto`")),
    # interface auto: the shell is asked `at AT`, which this one does not know
    (zephyr_shell, ("auto", "auto"), "shell", ("Zephyr shell", "no `at` command",
                                               "CONFIG_AT_SHELL")),
    (log_console, ("auto", "auto"), "ansi", ("ANSI/VT100", "AT interface")),
])
def test_the_probe_tells_what_answers_instead_of_an_at_host(
        peer: Callable[[bytes], bytes] | None, line: tuple[str, str], kind: str,
        words: tuple[str, ...]) -> None:
    with pty_peer(peer) as path:
        error = anyio.run(probe, path, *line, backend="asyncio")
    assert error.diagnosis.kind == kind, error
    for word in words:
        assert word in str(error), (word, str(error))


def test_diagnoses_from_byte_tables() -> None:
    def kind(heard: bytes, rtscts: bool = True) -> str:
        return diagnose(heard, sent="AT", baudrate=115200, rtscts=rtscts, tries=2,
                        waited=6).kind

    assert kind(b"") == "nothing"
    assert kind(b"\x00\xff\x81\xfe\x13\x99") == "garbage"
    assert kind(b"AT\r\n") == "shell"  # the command echoed back
    assert kind(b"mosh:~$ ") == "shell"
    assert kind(b"\x1b[1;31merror\x1b[m") == "ansi"
    assert kind(b"*** Booting nRF Connect SDK ***\r\nhello\r\n") == "text"
    off = diagnose(b"", sent="AT", baudrate=9600, rtscts=False, tries=2, waited=6).message()
    assert "9600 now" in off and "`rtscts: true`" in off


def test_a_port_where_nothing_answers_fails_fast_with_default_settings(tmp_path: Path) -> None:
    with pty_peer() as path:
        plan = write_plan(tmp_path, ports=path, defaults="{}")
        code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=120)
    assert code == 1, err
    # From the run's start to its last log line: the slot's own waits, not how long a loaded
    # machine takes to start a Python process.
    times = [datetime.fromisoformat(json.loads(line)["timestamp"])
             for line in err.splitlines() if line.startswith("{")]
    elapsed = (times[-1] - times[0]).total_seconds()
    error = doc["devices"][0]["error"]
    assert "nothing answers" in error and "nothing received at all" in error, error
    for cause in CAUSES:
        assert cause in error, (cause, error)
    assert "no answer to AT yet" in err  # said on the terminal while it happens
    print(f"nothing answers: the slot failed after {elapsed:.1f} s")
    assert elapsed < 15


def _run_in_process(plan_path: Path, journal: Path) -> tuple[float, dict]:  # type: ignore[type-arg]
    plan = load_plan(plan_path)
    started = time.monotonic()
    outcome = anyio.run(lambda: run_plan(plan, RunOptions(journal=journal, handle_signals=False)),
                        backend="asyncio")
    return time.monotonic() - started, outcome.document()


def test_a_silent_simulated_modem_fails_within_10_s(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", defaults="{timeout_s: 1, retries: 3}",
                      extra="simulator: {faults: ['silent:1.0']}\n")
    elapsed, doc = _run_in_process(plan, tmp_path / "j.sqlite")
    device = doc["devices"][0]
    assert device["outcome"] == "failed"
    assert "nothing answers" in device["error"], device["error"]
    print(f"silent modem: the slot failed after {elapsed:.1f} s")
    assert elapsed < 10


HOLD = ("import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY); "
        "print('holding', flush=True); time.sleep(120)")


@contextmanager
def holder(path: str | Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds ``path`` open (and never reads it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_process_holding_a_dead_port_is_named_in_the_error(tmp_path: Path) -> None:
    with pty_peer() as path, holder(path) as other:
        plan = write_plan(tmp_path, ports=path, defaults="{probe_timeout_s: 0.3}")
        _, doc = _run_in_process(plan, tmp_path / "j.sqlite")
    error = doc["devices"][0]["error"]
    assert "nothing answers" in error, error
    assert f"other processes have this port open: pid {other.pid} (" in error, error
    assert "python" in error, error


def test_a_process_holding_a_working_port_of_fleet_sim_is_named_in_a_warning(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 2) as sim, holder(sim.ports[1]) as other:
        wait_for(lambda: os.path.exists(sim.ports[1]), "the simulator's port")
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"))
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    assert [d["outcome"] for d in doc["devices"]] == ["done", "done"]
    warnings = [line for line in err.splitlines() if "other processes have this port" in line]
    assert len(warnings) == 1, err
    assert f"pid {other.pid} (" in warnings[0] and "modem1" in warnings[0], warnings
    assert f"pid {sim.proc.pid} " not in err  # the simulator is the device side, not a rival
