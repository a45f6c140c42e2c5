"""The transport-independent part of the simulator: modems, faults, timing, persistence, and the
session loop that serves one connection to one modem.

How this works
--------------
:class:`SimCore` owns every :class:`~fleet.sim.model.Modem`, one :class:`FaultDice` and one jitter
generator per modem, the :class:`StateWriter` and the :class:`EventLog`. A transport (pty, TCP,
in-process memory stream) wraps a connection in a :class:`Link` and awaits :meth:`SimCore.serve`,
which reads bytes, feeds the modem's :class:`~fleet.sim.lines.ModemLine` (an AT host or a
shell, one per modem: what a shell was switched to outlives a connection), sends what the line
prints by itself (a shell's echo and prompt) and, per command for the modem:

1. logs it; rolls silent / disconnect / reboot (each ends the command);
2. asks the model for the reply (the faults that depend on the command - keygen-fail,
   keygen-bad-uuid, list-no-sha, list-drop, swap, swap-unattested - are rolled inside, when
   they can apply);
3. sleeps what is left of the profile's delay for the work done (+ the slow fault), counted
   from the moment the command arrived;
4. if the state changed, waits until the state file holding the change is written
   (lost-answer drops the port here, after the key is safely stored; so does list-drop, and
   swap and swap-unattested, which first put another board with the same IMEI in the modem's
   place);
5. frames the answer as the line prints it, applies urc-storm and garble to the bytes and sends
   them, paced in the realistic profile.

:meth:`serve` returns :attr:`Ending.DROPPED` when a fault drops the port (the transport then closes
the connection, or makes a new pty) and :attr:`Ending.CLOSED` when the host went away.
"""

from __future__ import annotations

import enum
import random
from typing import Protocol

import anyio
import anyio.lowlevel

from fleet.at import encode_final
from fleet.nrf91 import MODELS
from fleet.sim.config import SimConfig
from fleet.sim.faults import SLOW_EXTRA_S, FaultDice, FaultName, garble, urc_storm
from fleet.sim.lines import ModemLine, Output, Refused, make_line
from fleet.sim.model import Modem
from fleet.sim.persist import EventLog, StateWriter
from fleet.sim.reply import SYSTEM_ENTROPY, Entropy
from fleet.sim.state import StateRenderer, parse_state

__all__ = ["USB_FRAME_S", "Ending", "Link", "LinkClosed", "SimCore", "load_modems"]

#: What the ``endless-answer`` fault repeats for a command without information lines.
_ENDLESS_LINE = ('%CMNG: 16842753,0,"2C43952EE9E000FF2ACC4E2ED0897C0A72AD5FA72C3D934E81741CBD5'
                 '4F05BD1"')

#: A USB full-speed frame: in the realistic profile, output lines that arrive within one frame of
#: each other are written together (see ``SimCore._send``).
USB_FRAME_S = 0.001


class LinkClosed(Exception):
    """The connection under a :class:`Link` is gone."""


class Link(Protocol):
    """One connection to one modem, as the session loop sees it."""

    async def receive(self) -> bytes:
        """Some bytes from the host (never empty); raises :class:`LinkClosed`."""
        ...

    async def send(self, data: bytes) -> None:
        """Send all of ``data`` to the host; raises :class:`LinkClosed`."""
        ...


class Ending(enum.Enum):
    """Why :meth:`SimCore.serve` returned."""

    CLOSED = "closed"  #: the host closed the connection
    DROPPED = "dropped"  #: a fault dropped the port: the transport must close it


def load_modems(config: SimConfig) -> tuple[list[Modem], list[Modem]]:
    """``(served, all)``: the modems of the state file (if any) completed up to ``count`` with
    new ones. Modems in the file beyond ``count`` are kept (and written back) but not served."""
    existing: dict[int, Modem] = {}
    path = config.state_path
    if path is not None and path.exists():
        try:
            existing = parse_state(path.read_bytes(), capacity=config.capacity)
        except ValueError as exc:
            raise ValueError(f"state file {path}: {exc}") from exc
    for modem in existing.values():
        modem.store.capacity = max(config.capacity, len(modem.store))
    served = [existing.get(i) or Modem.create(seed=config.seed, index=i,
                                              model=MODELS[config.model],
                                              function_mode=config.function_mode,
                                              capacity=config.capacity)
              for i in range(config.count)]
    extra = [m for i, m in sorted(existing.items()) if i >= config.count]
    return served, served + extra


class SimCore:
    """Everything a transport needs to serve modems."""

    def __init__(self, config: SimConfig, *, entropy: Entropy = SYSTEM_ENTROPY) -> None:
        self.config = config
        self.timing = config.timing
        self.modems, self._all = load_modems(config)
        self.entropy = entropy
        self.dice = [FaultDice(config.faults, i, config.seed) for i in range(config.count)]
        self.lines: list[ModemLine] = [make_line(config) for _ in range(config.count)]
        self._jitter = [random.Random(f"fleet-sim/timing/{config.seed}/{i}")
                        for i in range(config.count)]
        renderer = StateRenderer()
        self.writer = StateWriter(config.state_path, lambda: renderer.render(self._all))
        self.log = EventLog(config.log_path)
        self._claims: dict[int, object] = {}
        if config.state_path is not None:
            self.writer.mark_dirty()  # the first write creates (or completes) the file

    # -- one live connection per modem (TCP, in-process) --------------------------------------

    def claim(self, index: int) -> object | None:
        """A token for the only live connection to modem ``index``, or None if it has one."""
        if index in self._claims:
            return None
        token = object()
        self._claims[index] = token
        return token

    def release(self, index: int, token: object) -> None:
        """Give the claim back (a no-op when a newer connection holds it)."""
        if self._claims.get(index) is token:
            del self._claims[index]

    def _swap(self, index: int, fault: FaultName) -> None:
        """Another board with the same IMEI in modem ``index``'s place (the swap fault; for
        swap-unattested an nRF9160); the state file keeps the board now there."""
        old = self.modems[index]
        new = old.swapped(seed=self.config.seed, model=(
            MODELS["nrf9160"] if fault is FaultName.SWAP_UNATTESTED else None))
        self.modems[index] = new
        self._all[self._all.index(old)] = new
        self.lines[index] = make_line(self.config)  # another board's firmware starts afresh

    # -- the session loop ----------------------------------------------------------------------

    async def serve(self, index: int, link: Link) -> Ending:
        """Serve modem ``index`` over ``link`` until the host leaves or a fault drops it."""
        while True:
            try:
                data = await link.receive()
            except LinkClosed:
                return Ending.CLOSED
            for item in self.lines[index].receive(data):
                if isinstance(item, Output | Refused):
                    if isinstance(item, Refused):
                        self.log.command(index, "", error=item.reason)
                    if not await self._send(link, item.data):
                        return Ending.CLOSED
                    continue
                ending = await self._command(index, item.text, link)
                if ending is not None:
                    return ending

    async def _command(self, index: int, text: str, link: Link) -> Ending | None:
        modem = self.modems[index]
        dice = self.dice[index]
        self.log.command(index, text)
        if dice.roll(FaultName.SILENT):
            self.log.fault(index, FaultName.SILENT.value, text)
            return None
        if dice.roll(FaultName.DISCONNECT):
            self.log.fault(index, FaultName.DISCONNECT.value, text)
            return Ending.DROPPED
        if dice.roll(FaultName.REBOOT):
            modem.reboot()
            self.lines[index] = make_line(self.config)  # the firmware starts again too
            self.writer.mark_dirty()
            self.log.fault(index, FaultName.REBOOT.value, text)
            return None

        # A modem's delay runs from the moment it got the command: hundreds of real modems make
        # their keys at the same time, so the time this one process spends computing for the
        # others must not be added on top.
        received = anyio.current_time()
        reply = modem.handle(text, entropy=self.entropy, faults=dice.roll)
        if reply.fault is not None:
            self.log.fault(index, reply.fault.value, text)
        version = self.writer.mark_dirty() if reply.changed else 0
        delay = self.timing.delay(reply.work, self._jitter[index].random())
        if dice.roll(FaultName.SLOW):
            self.log.fault(index, FaultName.SLOW.value, text)
            delay += SLOW_EXTRA_S
        delay -= anyio.current_time() - received
        if delay > 0:
            await anyio.sleep(delay)
        await self.writer.wait_written(version)
        if reply.fault in (FaultName.SWAP, FaultName.SWAP_UNATTESTED):
            self._swap(index, reply.fault)
            await self.writer.wait_written(self.writer.mark_dirty())
        if reply.drop:
            return Ending.DROPPED
        if reply.key_made and dice.roll(FaultName.LOST_ANSWER):
            self.log.fault(index, FaultName.LOST_ANSWER.value, text)
            return Ending.DROPPED

        if dice.roll(FaultName.ENDLESS_ANSWER):
            self.log.fault(index, FaultName.ENDLESS_ANSWER.value, text)
            return await self._endless(link, self.lines[index], reply.lines)
        line = self.lines[index]
        if dice.roll(FaultName.URC_STORM):
            self.log.fault(index, FaultName.URC_STORM.value, text)
            data = line.frame(urc_storm([*reply.lines, encode_final(reply.final)], dice.rng))
        else:
            data = line.answer(reply.lines, reply.final)
        if dice.roll(FaultName.GARBLE):
            self.log.fault(index, FaultName.GARBLE.value, text)
            data = garble(data, dice.rng)
        if not await self._send(link, data):
            return Ending.CLOSED
        return None

    async def _endless(self, link: Link, line: ModemLine,
                       lines: tuple[str, ...] | list[str]) -> Ending:
        """The ``endless-answer`` fault: well-formed lines and never a final one, until the
        host goes away (a link's buffer makes the pace when the host stops reading)."""
        block = line.frame(lines or [_ENDLESS_LINE]) * 64
        while await self._send(link, block):
            await anyio.lowlevel.checkpoint()  # the other modems go on meanwhile
        return Ending.CLOSED

    async def _send(self, link: Link, data: bytes) -> bool:
        """Send ``data`` (paced at the profile's baud rate); False when the host is gone."""
        rate = self.timing.bytes_per_s
        try:
            if rate is None:
                await link.send(data)
                return True
            # Each line is written when its last byte would have come off a UART at this rate:
            # the host acts on whole lines, so that is the timing it sees on hardware, at one
            # write per line instead of one per few bytes. A line that takes no longer than a
            # USB frame to arrive (``OK``, ``+CFUN: 0``) goes in one write with the line before
            # it, as a USB-to-UART bridge hands the host both in one transfer.
            chunk, wait = b"", 0.0
            for part in data.splitlines(keepends=True):
                took = len(part) / rate
                if chunk and took > USB_FRAME_S:
                    await anyio.sleep(wait)
                    await link.send(chunk)
                    chunk, wait = b"", 0.0
                chunk += part
                wait += took
            await anyio.sleep(wait)
            await link.send(chunk)
        except LinkClosed:
            return False
        return True
