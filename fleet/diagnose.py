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
an AT host, and the line terminator when the plan names one. :func:`looks_like_shell` is what
the probe asks of the bytes so far, to stop waiting once a shell is known to answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.at.shell import ANSI, PROMPT

__all__ = ["Diagnosis", "diagnose", "looks_like_shell", "shell_without_at"]

_ANSI = re.compile(ANSI.pattern.encode())
_PROMPT = re.compile(rb"(?:^|[\r\n])" + PROMPT.pattern.encode())
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


def looks_like_shell(heard: bytes) -> bool:
    """Whether ``heard`` shows a Zephyr shell: its prompt, or ``command not found``."""
    stripped = _ANSI.sub(b"", heard)
    return bool(_PROMPT.search(stripped)) or b"command not found" in stripped


def shell_without_at(reason: str) -> Diagnosis:
    """A Zephyr shell answers, but its firmware cannot pass AT commands to the modem."""
    return Diagnosis(kind="shell", seen=f"a Zephyr shell answers, but {reason}",
                     checks=("firmware built with CONFIG_AT_SHELL (the `at` command), or one "
                             "with a plain AT host (the at_client sample, Serial Modem)",))


def diagnose(heard: bytes, *, sent: str, baudrate: int, rtscts: bool, tries: int,
             waited: float, terminator: str | None = None, shell_named: bool = False
             ) -> Diagnosis:
    """The diagnosis of a port that gave no final line to ``sent`` (``tries`` times, ``waited``
    seconds in all), from the bytes ``heard`` meanwhile. ``terminator``: the line end the plan
    named (None: fleet tried them all); ``shell_named``: the plan says ``interface: shell``."""
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
    if terminator is not None:
        asked += f", ending in {terminator}"
        line_end = (f"`terminator` ({terminator} now) is the line end the firmware's AT host "
                    "was built with (CONFIG_AT_HOST_TERMINATION: a command that ends otherwise "
                    "never completes); `terminator: auto` finds it")
        firmware = f"{firmware}; {line_end}"
    else:
        asked += ", ending in CR, then LF, then NUL"
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
        if shell_named:
            return Diagnosis(
                kind="shell",
                seen=(f"a Zephyr shell answers, but not to `at AT`: {asked}, received "
                      f"{' and '.join(what) or 'shell output'} ({_sample(heard)})"),
                checks=("the firmware has the `at` command (CONFIG_AT_SHELL)", interface))
        return Diagnosis(
            kind="shell",
            seen=(f"a Zephyr shell answers, not an AT host: {asked}, received "
                  f"{' and '.join(what) or 'shell output'} ({_sample(heard)}); its AT commands "
                  "take the form `at <command>`"),
            checks=("`interface: auto` or `interface: shell` in the plan (fleet then sends "
                    "`at <command>`), or firmware with a plain AT host (the at_client sample, "
                    "Serial Modem)", interface))
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
