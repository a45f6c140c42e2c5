"""The ``fleet sim`` server: every modem on a pty (and optionally on TCP), until cancelled.

How this works
--------------
:func:`run_server` raises the open-file limit (a pty costs two descriptors, a TCP listener one),
builds the :class:`SimCore` (reading ``--state``), writes the state once, opens every pty and link
and every TCP listener, and only then reports :class:`Ready` through ``task_status`` (so the
caller's ready line is true when printed). Cancelling it (SIGINT/SIGTERM in ``fleet sim``) stops
every session; the state writer's last write is shielded, then the ptys are closed and the links
removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from fleet.fdio import raise_fd_limit
from fleet.sim.config import SimConfig
from fleet.sim.core import SimCore
from fleet.sim.ports import PtyPort, serve_tcp

__all__ = ["Ready", "run_server"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """Where the ports are, once every one of them is ready."""

    links: tuple[Path, ...]
    tcp: tuple[str, int, int] | None  #: (host, first port, last port)

    def describe(self) -> str:
        """The one line ``fleet sim`` prints."""
        first, last = self.links[0], self.links[-1]
        where = str(first) if first == last else f"{first} .. {last}"
        text = f"fleet sim: {len(self.links)} modem{'s' if len(self.links) != 1 else ''} " \
               f"ready: {where}"
        if self.tcp is not None:
            host, low, high = self.tcp
            text += f"; tcp {host}:{low}" + (f"..{high}" if high != low else "")
        return text


def _prepare(config: SimConfig, directory: Path) -> tuple[SimCore, list[PtyPort]]:
    raise_fd_limit()
    core = SimCore(config)
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    core.log.open()
    return core, [PtyPort(i, directory / f"modem{i}") for i in range(config.count)]


async def run_server(config: SimConfig, directory: Path, listen: tuple[str, int] | None = None,
                     *, task_status: anyio.abc.TaskStatus[Ready] = anyio.TASK_STATUS_IGNORED
                     ) -> None:
    """Serve ``config.count`` modems on ptys linked from ``directory`` (and on TCP ports
    ``listen[1] + i`` when ``listen`` is given) until cancelled."""
    core, ports = _prepare(config, directory)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(core.writer.run)
            await core.writer.flush()
            for port in ports:
                port.open()
                tg.start_soon(port.run, core)
            if listen is not None:
                host, base = listen
                for index in range(config.count):
                    await tg.start(serve_tcp, core, index, host, base + index)
            task_status.started(Ready(
                links=tuple(p.link for p in ports),
                tcp=None if listen is None else
                (listen[0], listen[1], listen[1] + config.count - 1)))
            await anyio.sleep_forever()
    finally:
        # After the task group: no task waits on a pty any more when it is closed.
        for port in ports:
            port.close()
        core.log.close()
