"""Run ``fleet sim`` as a subprocess for tests, and talk to its ports with PLAIN pyserial.

``LINES`` names the simulator options of each interface the end-to-end tests run over.
``run_sim(tmp_path, count, *extra_args)`` starts
``python -m fleet sim --count N --dir <tmp>/ports --log <tmp>/sim.log --state <tmp>/sim.json ...``,
waits for the ready line (failing with the simulator's stderr if it does not come), and stops it
with SIGTERM on exit. Calling it again with the same ``tmp_path`` restarts on the same state.
Nothing here uses fleet's own host code: the point is to test the simulator against a plain peer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serial

#: ``fleet sim`` options per interface: a plain AT host, and a shell built like Modem Shell
#: (wildcards off, a command buffer that holds a certificate).
LINES: dict[str, tuple[str, ...]] = {
    "at": (),
    "shell": ("--interface", "shell", "--shell-wildcards", "off", "--shell-buffer", "3584"),
}

__all__ = ["FINAL", "LINES", "SimProcess", "command", "open_port", "read_until_final", "run_sim",
           "send"]

FINAL = re.compile(r"(OK|ERROR|\+CME ERROR: \d+)\Z")
READY_TIMEOUT_S = 60.0


@dataclass
class SimProcess:
    """A running ``fleet sim``."""

    proc: subprocess.Popen[bytes]
    ports: list[Path]
    log_path: Path
    state_path: Path
    stderr_path: Path
    ready_line: str

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON line of the log so far."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def commands(self, modem: int) -> list[str]:
        """The command texts modem ``modem`` received, in order."""
        return [r["command"] for r in self.log_lines()
                if r["modem"] == modem and "fault" not in r]

    def faults(self, modem: int | None = None) -> list[dict[str, Any]]:
        """The fault lines of the log (of one modem when given)."""
        return [r for r in self.log_lines()
                if "fault" in r and (modem is None or r["modem"] == modem)]

    def state(self) -> dict[str, Any]:
        """The parsed state file."""
        result: dict[str, Any] = json.loads(self.state_path.read_text())
        return result

    def modem_state(self, index: int) -> dict[str, Any]:
        """One modem's object from the state file."""
        modem: dict[str, Any] = next(m for m in self.state()["modems"] if m["index"] == index)
        return modem

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("fleet sim did not stop within "
                                 f"{timeout}s of SIGTERM:\n{self.stderr()}") from None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


@contextlib.contextmanager
def run_sim(tmp_path: Path, count: int, *extra_args: str) -> Iterator[SimProcess]:
    """Start ``fleet sim`` with ``count`` modems under ``tmp_path``; stop it on exit."""
    ports_dir = tmp_path / "ports"
    log_path = tmp_path / "sim.log"
    state_path = tmp_path / "sim.json"
    stderr_path = tmp_path / "sim.stderr"
    args = [sys.executable, "-m", "fleet", "sim", "--count", str(count), "--dir", str(ports_dir),
            "--log", str(log_path), "--state", str(state_path), *extra_args]
    with stderr_path.open("ab") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr,
                                stdin=subprocess.DEVNULL)
    sim = SimProcess(proc=proc, ports=[ports_dir / f"modem{i}" for i in range(count)],
                     log_path=log_path, state_path=state_path, stderr_path=stderr_path,
                     ready_line="")
    try:
        sim.ready_line = _wait_ready(sim)
        yield sim
    finally:
        if proc.poll() is None:
            sim.stop()
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_ready(sim: SimProcess) -> str:
    assert sim.proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(sim.proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                sim.proc.kill()
                raise AssertionError(f"fleet sim not ready after {READY_TIMEOUT_S}s; "
                                     f"stderr:\n{sim.stderr()}")
            if sel.select(left):
                chunk = os.read(sim.proc.stdout.fileno(), 4096)
                if not chunk:
                    sim.proc.wait(10)
                    raise AssertionError(f"fleet sim exited ({sim.proc.returncode}) before "
                                         f"it was ready; stderr:\n{sim.stderr()}")
                buf += chunk
    return buf.decode().strip()


def open_port(path: Path | str, *, poll: bool = False) -> serial.Serial:
    """Open a simulator port with plain pyserial.

    ``poll`` is for tests with more than ~1000 descriptors open: pyserial's poll()-based class
    for reading, and a non-blocking write (``write_timeout=0``), because ``Serial.write`` calls
    select() after every write otherwise. Commands are short, so one write takes them whole
    (:func:`command` checks that).
    """
    if poll:
        port: serial.Serial = serial.serialposix.PosixPollSerial(
            str(path), 115200, timeout=0.05, write_timeout=0)
    else:
        port = serial.Serial(str(path), 115200, timeout=0.05)
    return port


def read_until_final(port: serial.Serial, timeout: float = 10.0) -> list[str]:
    """Lines read until (and including) a final line; raises TimeoutError with what came.
    Reads line by line, so bytes after the final line stay for the next call."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while True:
        raw = _read_line(port, deadline)
        if raw is None:
            raise TimeoutError(f"no final line within {timeout}s; got {lines!r}")
        text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if text:
            lines.append(text)
            if FINAL.match(text):
                return lines


def _read_line(port: serial.Serial, deadline: float) -> bytes | None:
    """One line (with its LF), or None at the deadline."""
    if not isinstance(port, serial.serialposix.PosixPollSerial):
        partial = b""
        while not partial.endswith(b"\n"):
            if time.monotonic() > deadline:
                return None
            partial += port.read_until(b"\n")
        return partial
    # PosixPollSerial.read breaks when poll() times out (pyserial 3.5: unbound variable, then
    # BlockingIOError), so read its descriptor with poll() here; leftovers stay on the port.
    buf: bytearray = port.__dict__.setdefault("_fleet_leftover", bytearray())
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        poller = select.poll()
        poller.register(port.fd, select.POLLIN)
        if not poller.poll(left * 1000):
            continue
        try:
            chunk = os.read(port.fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            raise serial.SerialException("port closed")
        buf += chunk
    end = buf.index(b"\n") + 1
    line = bytes(buf[:end])
    del buf[:end]
    return line


def command(port: serial.Serial, text: str, timeout: float = 10.0, *,
            shell: bool = False) -> list[str]:
    """Send ``text`` + CR and return the answer lines (final line last). ``shell``: through a
    Zephyr shell, typed as ``at <text>`` (``text`` without spaces or quotes), its echo, prompt
    and colours left out of the answer."""
    if not shell:
        send(port, text)
        return read_until_final(port, timeout)
    send(port, f"at {text}")
    lines = [re.sub(r"^[\w.-]+:~\$ ", "", re.sub(r"\x1b\[[0-9;]*m", "", line))
             for line in read_until_final(port, timeout)]
    return [line for line in lines if line and line != f"at {text}"]


def send(port: serial.Serial, text: str) -> None:
    """Send ``text`` + CR (all of it)."""
    data = text.encode() + b"\r"
    written = port.write(data)
    assert written == len(data), f"short write: {written} of {len(data)} bytes"
