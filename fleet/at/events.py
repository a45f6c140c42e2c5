"""Events of the AT line protocol, shared by the host and the modem side of the codec.

Host side (bytes from the modem in): :class:`InformationLine`, :class:`Urc`, :class:`StrayLine`
and the final results :class:`Ok`, :class:`Error`, :class:`CmeErrorLine`, :class:`CmsErrorLine`.
Modem side (bytes from the host in): :class:`CommandLine`.

All events are frozen, slotted, keyword-only dataclasses that validate on construction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet.errors import CmeCode

__all__ = [
    "NEED_DATA",
    "CmeErrorLine",
    "CmsErrorLine",
    "CommandLine",
    "Error",
    "Event",
    "Final",
    "HostEvent",
    "InformationLine",
    "NeedData",
    "Ok",
    "ShellRefusal",
    "StrayLine",
    "Urc",
]


class NeedData(enum.Enum):
    """Sentinel type: the codec needs more bytes before it can produce an event."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


def _check_line(text: str) -> None:
    if "\r" in text or "\n" in text:
        raise ValueError(f"a line event cannot contain a line terminator: {text!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class InformationLine:
    """One information line of the pending command's response (e.g. ``+CFUN: 4``)."""

    text: str

    def __post_init__(self) -> None:
        _check_line(self.text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Urc:
    """An unsolicited result code (``+CEREG: 1,...``, ``%XSIM: 1``), never part of a response."""

    text: str

    def __post_init__(self) -> None:
        _check_line(self.text)


@dataclass(frozen=True, slots=True, kw_only=True)
class StrayLine:
    """A line that arrived while no command was pending and that is not a URC.

    Typically the late answer of a command that was abandoned after a timeout.
    """

    text: str

    def __post_init__(self) -> None:
        _check_line(self.text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ok:
    """Final result ``OK``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """Final result ``ERROR`` (no detail: the modem has ``AT+CMEE=0`` or it is a syntax error)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CmeErrorLine:
    """Final result ``+CME ERROR: <code>``."""

    code: CmeCode | int

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int) or self.code < 0:
            raise ValueError(f"CME error code must be a non-negative int, not {self.code!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CmsErrorLine:
    """Final result ``+CMS ERROR: <code>`` (SMS errors; not expected from key commands)."""

    code: int

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int) or self.code < 0:
            raise ValueError(f"CMS error code must be a non-negative int, not {self.code!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellRefusal:
    """Final: a Zephyr shell refused the command instead of running it (nothing reached the
    modem, except after ``send-failed``). ``kind``: ``not-found``, ``usage``, ``buffer``,
    ``send-failed`` or ``error``; ``reason`` says why and what the firmware needs."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandLine:
    """Modem side: one complete command line received from the host (terminator removed)."""

    text: str


Final = Ok | Error | CmeErrorLine | CmsErrorLine
HostEvent = (InformationLine | Urc | StrayLine | Ok | Error | CmeErrorLine | CmsErrorLine
             | ShellRefusal)
Event = HostEvent | CommandLine
