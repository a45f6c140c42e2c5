"""First contact with a port: does anything answer, and through what (the :class:`Line`)?

How this works
--------------
:func:`first_contact` runs the probe of :meth:`fleet.device.DeviceSession.probe`. The plan's
``interface`` and ``terminator`` decide which steps it takes; each step waits for a final line
(``ERROR`` counts: something that speaks AT is there):

- a line the plan names (``interface: at`` or ``shell`` with a named ``terminator``), or the
  line found before (a reopen): ``AT`` through it, twice at most, ``probe_timeout_s`` each.
  Nothing more is sent, so a plan that names its line costs what a probe always cost;
- ``terminator: auto`` on an AT host: ``AT`` and CR (the ``lib/at_host`` default); when
  nothing answers within a second, LF, which completes CR LF (a build for LF or CR+LF ends
  the command there: fleet then sends CR LF, which both take, the CR kept in the command and
  skipped by the modem); then NUL (a build for NUL ends the command there, its CR LF kept the
  same way). Derived from ``lib/at_host/at_host.c`` and the line-end probe of nRF Connect's
  Cellular Monitor;
- ``interface: auto``: when a step hears a shell's prompt or ``command not found`` (the shell
  took ``AT`` for a command of its own), it stops waiting and asks the shell ``at 'AT'``.

The shell is asked with CR: it takes CR, LF and CR LF alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from fleet.at import Command, Interface, Terminator
from fleet.diagnose import Diagnosis, diagnose, shell_without_at
from fleet.errors import DeviceTimeout
from fleet.session import Line, LineSession

__all__ = ["PROBE_TRIES", "TERMINATOR_WAIT_S", "NoAnswer", "first_contact"]

#: How many times the probe of a known line sends ``AT``.
PROBE_TRIES = 2
#: How long ``terminator: auto`` waits for an answer before it sends the next line end.
TERMINATOR_WAIT_S = 1.0
_AT = Command.action()
#: What ``terminator: auto`` sends after ``AT``, and the line end it means when answered.
_LINE_ENDS = ((b"\r", Terminator.CR), (b"\n", Terminator.CRLF), (b"\x00", Terminator.NUL))


class NoAnswer(DeviceTimeout):
    """Nothing answered the first-contact probe; ``diagnosis`` says what came instead."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.message())
        self.diagnosis = diagnosis


async def first_contact(session: LineSession, *,
                        on_retry: Callable[[str], None] | None = None) -> Line:
    """The line the modem answers on; raises :class:`fleet.device.NoAnswer`."""
    interface, terminator = session.wanted
    if session.line is not None:
        return await _known(session, session.line, on_retry)
    if interface == "shell":
        return await _known(session, Line(interface=Interface.SHELL,
                                          terminator=Terminator(_shell_end(terminator))),
                            on_retry)
    if terminator != "auto":
        line = Line(interface=Interface.AT, terminator=Terminator(terminator))
        return await _known(session, line, on_retry, shell_too=interface == "auto")
    return await _detect(session, on_retry, shell_too=interface == "auto")


def _shell_end(terminator: str) -> str:
    return "cr" if terminator in ("auto", "nul") else terminator


async def _known(session: LineSession, line: Line, on_retry: Callable[[str], None] | None,
                 *, shell_too: bool = False) -> Line:
    wait = session.probe_timeout
    for tries in range(1, PROBE_TRIES + 1):
        session.restart_line(line)
        step = await session.probe_step(_AT, wait=wait, stop_at_shell=shell_too)
        if step == "final":
            session.restart_line(line)
            return line
        if step == "shell":
            return await _shell(session, Line(interface=Interface.SHELL,
                                              terminator=Terminator.CR))
        if step == "refused" and line.interface is Interface.SHELL:
            break
        if tries < PROBE_TRIES:
            reason = f"{_AT}: no answer within {wait:g} s"
            session.log.warning("no answer to AT yet; sending it again", error=reason,
                                received=len(session.heard))
            if on_retry is not None:
                on_retry(reason)
    session.restart_line(line)
    _no_answer(session, tries=PROBE_TRIES, waited=PROBE_TRIES * wait,
               terminator=None if line.interface is Interface.SHELL else line.terminator,
               shell_named=line.interface is Interface.SHELL)


async def _detect(session: LineSession, on_retry: Callable[[str], None] | None, *,
                  shell_too: bool) -> Line:
    waits = [min(TERMINATOR_WAIT_S, session.probe_timeout)] * 2 + [session.probe_timeout]
    session.restart_line(Line(interface=Interface.AT, terminator=Terminator.CR))
    for (line_end, terminator), wait in zip(_LINE_ENDS, waits, strict=True):
        sent = _AT if terminator is Terminator.CR else line_end
        step = await session.probe_step(sent, wait=wait, stop_at_shell=shell_too)
        if step == "final":
            found = Line(interface=Interface.AT, terminator=terminator)
            session.restart_line(found)
            return found
        if step == "shell":
            return await _shell(session, Line(interface=Interface.SHELL,
                                              terminator=Terminator.CR))
        if terminator is not Terminator.NUL:
            reason = f"{_AT}: no answer within {wait:g} s ending in {terminator}"
            session.log.warning("no answer to AT yet; sending the next line end",
                                error=reason, received=len(session.heard))
            if on_retry is not None:
                on_retry(reason)
    session.restart_line()
    _no_answer(session, tries=len(_LINE_ENDS), waited=sum(waits), terminator=None)


async def _shell(session: LineSession, line: Line) -> Line:
    """A shell answered ``AT`` with words of its own: ask it ``at 'AT'``."""
    session.restart_line(line)
    step = await session.probe_step(_AT, wait=session.probe_timeout)
    session.restart_line(line)
    if step == "final":
        return line
    if step == "refused":
        raise NoAnswer(shell_without_at("it has no `at` command (`at: command not found`)"))
    raise NoAnswer(shell_without_at(f"`at AT` got no answer within {session.probe_timeout:g} "
                                    "s: its `at` command does not reach the modem"))


def _no_answer(session: LineSession, *, tries: int, waited: float,
               terminator: Terminator | None, shell_named: bool = False) -> NoReturn:
    baudrate, rtscts = session.port_settings
    raise NoAnswer(diagnose(session.heard, sent=str(_AT), baudrate=baudrate, rtscts=rtscts,
                            tries=tries, waited=waited,
                            terminator=terminator.value if terminator else None,
                            shell_named=shell_named))
