"""Which other processes hold a serial port open (Linux: ``/proc/*/fd``).

How this works
--------------
A process that keeps a tty open (a terminal program, a ModemManager probe, a forgotten ``cat``)
takes bytes meant for fleet, or answers in its place, and fleet's exclusive lock only keeps out
programs that lock too. :func:`scan` reads every ``/proc/<pid>/fd`` link once and maps each
wanted port (by its real path) to the processes that have it open, with their command line.
fleet's own process is left out, and so is the other end of a pseudo-terminal (the process
holding the ``/dev/ptmx`` master whose ``tty-index`` is the pty's number, such as ``fleet
sim``): that is the device, not a rival. Processes fleet may not look into are skipped. Off
Linux (no ``/proc``) every answer is empty.

A run makes one scan for all its ports beside its slots, which never wait for it (a scan of
``/proc`` per slot would cost more than hundreds of slots' work); a slot that failed scans
again for its port (:func:`fresh`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import anyio

__all__ = ["Opener", "describe", "fresh", "scan"]

_PTS = re.compile(r"/dev/pts/(\d+)\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class Opener:
    """A process that holds a port open."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def _real(path: str) -> str:
    return os.path.realpath(path)


def _command(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read(4096)
    except OSError:
        raw = b""
    text = " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
    if not text:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as file:
                text = file.read().strip()
        except OSError:
            text = "?"
    return text if len(text) <= 120 else text[:117] + "..."


def _pty_index(pid: str, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("tty-index:"):
                    return int(line.split(":", 1)[1])
    except (OSError, ValueError):
        return None
    return None


def scan(ports: Iterable[str], *, proc: str = "/proc") -> dict[str, tuple[Opener, ...]]:
    """``{port: other processes holding it open}`` for each of ``ports`` (as given)."""
    wanted: dict[str, list[str]] = {}
    found: dict[str, tuple[Opener, ...]] = {}
    for port in ports:
        found[port] = ()
        if "://" not in port:  # sim:// and socket:// ports are no file of this host
            wanted.setdefault(_real(port), []).append(port)
    if not wanted or not os.path.isdir(proc):
        return found
    own = str(os.getpid())
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit() and name != own]
    except OSError:
        return found
    holders: dict[str, set[str]] = {}
    pty_masters: list[tuple[str, str]] = []  # (pid, fd) of every pty master seen
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:  # gone, or not ours to look into
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in wanted:
                holders.setdefault(target, set()).add(pid)
            elif target in ("/dev/ptmx", "/dev/pts/ptmx"):
                pty_masters.append((pid, fd))
    masters: dict[int, set[str]] = {}  # pty index -> pids holding its master
    if any(_PTS.match(real) for real in holders):  # read only when a held port is a pty
        for pid, fd in pty_masters:
            index = _pty_index(pid, fd)
            if index is not None:
                masters.setdefault(index, set()).add(pid)
    commands: dict[str, str] = {}
    for real, pids_holding in holders.items():
        match = _PTS.match(real)
        device_side = masters.get(int(match.group(1)), set()) if match else set()
        others = sorted(int(pid) for pid in pids_holding - device_side)
        openers = tuple(Opener(pid=pid, command=commands.setdefault(str(pid),
                                                                    _command(str(pid))))
                        for pid in others)
        for port in wanted[real]:
            found[port] = openers
    return found


def describe(openers: tuple[Opener, ...]) -> str:
    """``other processes have this port open: pid 1 (picocom ...), ...``."""
    return "other processes have this port open: " + ", ".join(map(str, openers))


async def fresh(port: str) -> tuple[Opener, ...]:
    """Other processes holding ``port`` open now (a scan of its own, for a slot that failed)."""
    return (await anyio.to_thread.run_sync(scan, (port,)))[port]
