"""What reads the host's bytes in front of a simulated modem: an AT host or a Zephyr shell.

How this works
--------------
A :class:`ModemLine` turns the bytes the host sends into :data:`Input` items, in order: a
command for the modem (:class:`ToModem`), bytes the line itself prints (a shell's echo, prompt
and messages: :class:`Output`), or a command the line refused for its length
(:class:`Refused`, answered with the bytes it carries). The session loop
(:meth:`fleet.sim.core.SimCore.serve`) hands each modem command to the model and prints the
answer through :meth:`ModemLine.answer`, which frames the lines as this line prints them.

:class:`AtHostLine` is ``lib/at_host``: the codec's modem side read with the build-time
terminator (:class:`fleet.at.ModemConnection`), answers framed as the modem sends them.
The shell is :class:`fleet.sim.shell.ShellLine`. :func:`make_line` picks one for a
:class:`~fleet.sim.config.SimConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fleet.at import NEED_DATA, Error, Final, ModemConnection, encode_final
from fleet.at.line import Interface, Terminator
from fleet.errors import LineTooLong
from fleet.sim.config import SimConfig

__all__ = ["AtHostLine", "Input", "ModemLine", "Output", "Refused", "ToModem", "make_line"]


@dataclass(frozen=True, slots=True)
class ToModem:
    """A command line for the modem (terminator removed)."""

    text: str


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes the line prints by itself."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """A command the line discarded (too long): ``reason`` for the log, ``data`` to send."""

    reason: str
    data: bytes


Input = ToModem | Output | Refused


class ModemLine(Protocol):
    """The part of the firmware that reads the host's bytes."""

    def receive(self, data: bytes) -> list[Input]:
        """What ``data`` (bytes from the host) amounts to, in order."""
        ...

    def frame(self, lines: Sequence[str]) -> bytes:
        """Lines the modem printed (a response, URCs), as the host receives them."""
        ...

    def answer(self, lines: Sequence[str], final: Final) -> bytes:
        """A modem command's whole answer as the host receives it (a shell adds its prompt)."""
        ...


class AtHostLine:
    """``lib/at_host`` built with ``terminator``: the modem's bytes go out as they are."""

    def __init__(self, terminator: Terminator) -> None:
        self._codec = ModemConnection(terminator=terminator)

    def receive(self, data: bytes) -> list[Input]:
        self._codec.receive_data(data)
        out: list[Input] = []
        while True:
            try:
                event = self._codec.next_event()
            except LineTooLong as exc:
                out.append(Refused(f"{exc} (answered ERROR)",
                                   ModemConnection.response((), Error())))
                continue
            if event is NEED_DATA:
                return out
            out.append(ToModem(event.text))

    def frame(self, lines: Sequence[str]) -> bytes:
        return ModemConnection.frame(lines)

    def answer(self, lines: Sequence[str], final: Final) -> bytes:
        return ModemConnection.frame([*lines, encode_final(final)])


def make_line(config: SimConfig) -> ModemLine:
    """A fresh line (one per connection: a shell's half-typed command does not survive a
    dropped port any more than the prompt does)."""
    if config.interface is Interface.SHELL:
        from fleet.sim.shell import ShellLine

        return ShellLine(config)
    return AtHostLine(config.terminator)
