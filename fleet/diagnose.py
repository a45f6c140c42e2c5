"""Why nothing answers ``AT`` on a port: a diagnosis from the bytes that came back, and what to
check.

How this works
--------------
:func:`diagnose` is pure: it gets every byte the port delivered while the first-contact probe
waited (see :meth:`fleet.device.DeviceSession.probe`) and the port's settings, and returns a
:class:`Diagnosis`: what was seen (nothing at all; bytes that are not text lines, as a wrong
baud rate gives; the prompt and echo of a Zephyr shell; ANSI/VT100 escape codes; text lines
that answer nothing) and the checks that fit it. The message always names the port's likely
causes: the wrong interface of a multi-port board, ``baudrate``, ``rtscts``, firmware without
an AT host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Diagnosis", "diagnose"]

_ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]")
_PROMPT = re.compile(rb"(?:^|[\r\n])[\w.-]{1,32}:~\$ ?")
_TEXT = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_SAMPLE = 48


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnosis:
    """What the probe heard (``kind``: ``nothing``, ``garbage``, ``shell``, ``ansi``,
    ``text``), in words, with what to check."""

    kind: str
    seen: str
    checks: tuple[str, ...]

    def message(self) -> str:
        return f"{self.seen}; check: " + "; ".join(self.checks)


def _sample(data: bytes) -> str:
    head = data[:_SAMPLE]
    return repr(head)[1:] + ("..." if len(data) > _SAMPLE else "")


def diagnose(heard: bytes, *, sent: str, baudrate: int, rtscts: bool, tries: int,
             waited: float) -> Diagnosis:
    """The diagnosis of a port that gave no final line to ``sent`` (``tries`` times, ``waited``
    seconds in all), from the bytes ``heard`` meanwhile."""
    interface = ("the port is the board's AT interface (a development kit has several serial "
                 "ports per USB serial number: on an nRF91 DK it is interface 0, "
                 "/dev/serial/by-id/...-if00)")
    baud = f"`baudrate` ({baudrate} now) is the rate the firmware's UART uses"
    flow = ("`rtscts` (on now): a board or adapter without RTS/CTS lines needs `rtscts: false`"
            if rtscts else "`rtscts` (off now): firmware that uses hardware flow control needs "
            "`rtscts: true`")
    firmware = ("the firmware has an AT host (the at_client sample, Serial Modem) and the board "
                "is powered and out of reset")
    asked = f"{sent!r} sent {tries} time(s), {waited:g} s in all"
    stripped = _ANSI.sub(b"", heard)
    echoed = any(line.strip() == sent.encode() for line in re.split(rb"[\r\n]+", stripped))
    if not heard:
        return Diagnosis(kind="nothing", seen=f"nothing answers: {asked}, nothing received at "
                         "all", checks=(interface, baud, flow, firmware))
    if _PROMPT.search(stripped) or b"command not found" in stripped or echoed:
        what = []
        if _PROMPT.search(stripped):
            what.append("a shell prompt")
        if echoed:
            what.append("the command echoed back")
        if b"command not found" in stripped:
            what.append("'command not found'")
        return Diagnosis(
            kind="shell",
            seen=(f"a Zephyr shell answers, not an AT host: {asked}, received "
                  f"{' and '.join(what) or 'shell output'} ({_sample(heard)}); its AT commands "
                  "take the form `at <command>`"),
            checks=("firmware with a plain AT host (the at_client sample, Serial Modem), or "
                    "a shell build that fleet can drive", interface))
    if _ANSI.search(heard):
        return Diagnosis(
            kind="ansi",
            seen=(f"ANSI/VT100 escape codes (colours, cursor moves) received, no AT answer: "
                  f"{asked} ({_sample(heard)}): a shell or log console, not an AT host"),
            checks=(interface, firmware, baud))
    binary = sum(1 for byte in heard if byte not in _TEXT)
    if binary * 10 >= len(heard):
        return Diagnosis(
            kind="garbage",
            seen=(f"{len(heard)} byte(s) received that are not AT lines ({_sample(heard)}): "
                  f"a wrong baud rate? {asked}"),
            checks=(baud, flow, interface))
    return Diagnosis(
        kind="text",
        seen=(f"text received, but no AT answer: {asked} ({_sample(heard)}): an application's "
              "or a log console's output, not an AT host?"),
        checks=(interface, firmware, baud, flow))
