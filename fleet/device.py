"""One modem session: send a command, await its final line with a timeout, route URCs aside,
reopen after a disconnect or a timeout and re-identify the device.

How this works
--------------
The session owns a byte stream (from :func:`fleet.transport.open_port`) and a
:class:`fleet.at.HostConnection`. ``command()`` sends one command and reads the stream, feeding
the codec, until the final line arrives; URCs and stray lines are logged and never mistaken for
the answer. There is no reader task: bytes that arrive between commands wait in the stream's
buffer and are classified (as URCs or stray lines) before the next answer.

Before anything else is asked of a port, :meth:`DeviceSession.probe` finds out whether anything
answers, and what: the :class:`Line` (interface and terminator) that the plan names, or that
first contact finds (:mod:`fleet.probe`). Nothing but a final line counts; when none comes,
:class:`NoAnswer` carries a diagnosis of the bytes that came instead (:mod:`fleet.diagnose`).
Through a Zephyr shell the codec frames every command as ``at '<command>'``
(:class:`fleet.at.ShellFraming`); a read command that the shell's wildcards stop switches the
session to raw AT mode (``at at_cmd_mode start``) where the firmware has it, and the session
leaves that mode when it closes.

A timeout or a lost connection leaves the line in an unknown state (a late answer could be taken
for the next command's), so the codec's connection is left in its ERROR state, which refuses
every command until the caller has ``recover()``-ed: close,
reopen (tries and backoff from the :class:`fleet.retry.RetryPolicy`), probe, ``AT+CMEE=1``, and
read the IMEI again. A different IMEI means the board in the slot was swapped:
:class:`DeviceSwapped`.

Time: the codec below never reads a clock. The session's command timeouts are anyio's
(``anyio.fail_after``, on the event loop's clock); the waits between reopen attempts are the
retry policy's, whose ``sleep`` and ``clock`` are injected, so a test of a port that never comes
back does not wait for real.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from fleet.at import (
    LEAVE_RAW,
    NEED_DATA,
    START_RAW,
    CmeErrorLine,
    CmsErrorLine,
    Command,
    Error,
    HostConnection,
    HostState,
    InformationLine,
    Interface,
    Ok,
    ShellCommand,
    ShellFraming,
    ShellRefusal,
    StrayLine,
    Terminator,
    Urc,
)
from fleet.diagnose import Diagnosis
from fleet.errors import (
    AnswerTooLong,
    CmeError,
    CommandError,
    DeviceTimeout,
    FleetError,
    LineTooLong,
    PortBusy,
    RemoteProtocolError,
    ShellRefused,
    TransportError,
)
from fleet.nrf91 import FUNCTION_MODES, identity_text_problem, luhn_valid
from fleet.retry import REOPEN_RETRYABLE, RetryPolicy

__all__ = ["DeviceSession", "DeviceSwapped", "Identity", "Line", "NoAnswer", "Response"]

_HEARD_MAX = 4096  #: bytes kept for the probe's diagnosis

Opener = Callable[[], Awaitable[anyio.abc.ByteStream]]

_IMEI = re.compile(r'\+CGSN:\s*"?([0-9]{15})"?\Z')


class DeviceSwapped(FleetError):
    """The board in the slot changed while fleet was working on it."""


class NoAnswer(DeviceTimeout):
    """Nothing answered the first-contact probe; ``diagnosis`` says what came instead."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.message())
        self.diagnosis = diagnosis


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The information lines of a successful (``OK``) answer."""

    command: str
    lines: tuple[str, ...]

    def first(self, prefix: str) -> str:
        """The first line starting with ``prefix``, without the prefix, stripped."""
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RemoteProtocolError(f"{self.command}: no '{prefix}' line in the answer {self.lines}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    """How fleet reaches the modem on this port: the interface and the line end it sends."""

    interface: Interface
    terminator: Terminator


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Which device answers on the port, and the firmware it runs."""

    imei: str
    firmware: str


def _short(command: str) -> str:
    """A command as an error names it: its first line, at most 60 characters."""
    first = command.split("\n", 1)[0]
    return first if len(first) <= 60 and first == command else first[:60] + "..."


def _identity_text(command: str, what: str, text: str) -> str:
    problem = identity_text_problem(text)
    if problem is not None:
        raise RemoteProtocolError(f"{command} answered a {what} string with {problem} "
                                  f"({text!r}); it is not recorded: a garbled line, or a modem "
                                  "that is not an nRF91")
    return text


class DeviceSession:
    """The host side of one modem's serial line."""

    def __init__(
        self,
        opener: Opener,
        *,
        port: str,
        policy: RetryPolicy | None = None,
        probe_timeout: float = 3.0,
        baudrate: int = 115200,
        rtscts: bool = True,
        interface: str = "auto",
        terminator: str = "auto",
        readonly: bool = False,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._opener = opener
        self.readonly = readonly  #: --check: never send AT+CMEE=1 (or any other set command)
        self.port = port
        self.policy = policy or RetryPolicy()
        self.probe_timeout = probe_timeout  #: seconds each probe ``AT`` waits
        self.port_settings = (baudrate, rtscts)  #: for a diagnosis
        #: what the plan says ("auto": found on first contact)
        self.wanted = (interface, terminator)
        #: the line found on first contact (kept for every reopen), None before
        self.line: Line | None = None
        self._raw_unavailable: ShellRefused | None = None  #: why raw AT mode cannot help
        self._raw_left_on = False  #: raw AT mode was on when the port went away
        self._heard: bytearray | None = None  #: what the port delivered during a probe
        self._stream: anyio.abc.ByteStream | None = None
        self._conn = HostConnection()
        self._cme_codes = False
        self.identity: Identity | None = None
        self.log = log or structlog.get_logger().bind(port=port)

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    @property
    def needs_recover(self) -> bool:
        """True after a timeout, a lost connection or an answer the codec refused (its
        connection is in ERROR): call :meth:`recover` first."""
        return self._conn.state is HostState.ERROR

    async def open(self) -> None:
        """Open the port (one attempt), framed as the line found on first contact. PortBusy
        and TransportError propagate."""
        self._stream = await self._opener()
        self._conn = HostConnection()
        self._cme_codes = False
        if self.line is not None:
            self.use_line(self.line)
        if self._raw_left_on:  # the shell is still bypassed: leave raw AT mode first
            self._raw_left_on = False
            await self.send_bytes(LEAVE_RAW)

    def use_line(self, line: Line) -> None:
        """Frame commands for ``line`` from now on (the probe settles it)."""
        self.line = line
        self._conn.terminator = line.terminator.bytes
        if line.interface is Interface.SHELL and self._conn.shell is None:
            self._conn.shell = ShellFraming()

    @property
    def raw_mode(self) -> bool:
        """The shell is bypassed (``at_cmd_mode``): plain AT lines."""
        return self._conn.shell is not None and self._conn.shell.raw

    async def send_bytes(self, data: bytes) -> None:
        """Write ``data`` as it is (a probe's next line end, a control sequence)."""
        if self._stream is None:
            raise TransportError(f"{self.port}: port is not open")
        try:
            await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._give_up_line()
            raise TransportError(f"connection lost ({exc or type(exc).__name__})") from exc

    async def close(self) -> None:
        if self._stream is not None and self.raw_mode:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1), \
                    contextlib.suppress(FleetError):
                await self.send_bytes(LEAVE_RAW)  # leave the shell as it was found
                self._conn.shell.leave_raw()  # type: ignore[union-attr]
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(OSError,
                                                                     anyio.BrokenResourceError):
                await stream.aclose()

    async def command(self, command: Command | ShellCommand, *, timeout: float) -> Response:
        """Send ``command`` and return its information lines when it ends with ``OK``.

        Raises :class:`CmeError` / :class:`CommandError` for an error final line,
        :class:`ShellRefused` when a shell refused it, :class:`DeviceTimeout` when no final
        line comes within ``timeout`` seconds, and :class:`TransportError` when the port goes
        away. After the last two the session is dirty: call :meth:`recover` before the next
        command. A command the shell's wildcards stopped is sent again in raw AT mode, once
        that mode is on.
        """
        try:
            return await self._command(command, timeout=timeout)
        except ShellRefused as exc:
            if exc.kind == "buffer" and self.raw_mode:
                # The command's open quote holds raw AT mode's buffer: leaving the mode
                # empties it (the next read command starts it again).
                await self.send_bytes(LEAVE_RAW)
                self._conn.shell.leave_raw()  # type: ignore[union-attr]
                raise
            if exc.kind != "usage" or isinstance(command, ShellCommand) or self.raw_mode:
                raise
            await self._start_raw_mode(exc, timeout=timeout)
            return await self._command(command, timeout=timeout)

    async def _start_raw_mode(self, refused: ShellRefused, *, timeout: float) -> None:
        """``at at_cmd_mode start``; raises ``refused`` (naming both firmware options) when
        the firmware does not have it. The usage text proved that the refused command never
        reached the modem, so it may be sent again."""
        if self._raw_unavailable is not None:
            raise self._raw_unavailable
        try:
            await self._command(START_RAW, timeout=timeout)
        except CommandError:
            self._raw_unavailable = refused
            raise refused from None
        self.log.info("raw AT mode started (the shell's wildcards stop read commands)")

    async def _command(self, command: Command | ShellCommand, *, timeout: float) -> Response:
        if self._stream is None:
            raise TransportError(f"{self.port}: port is not open")
        if self.needs_recover:
            raise TransportError(f"{self.port}: session needs recover() after a failure")
        text = str(command)
        self._drain_idle()
        try:
            with anyio.fail_after(timeout):
                await self._stream.send(self._conn.send(command))
                lines: list[str] = []
                while True:
                    event = self._conn.next_event()
                    if event is NEED_DATA:
                        data = await self._stream.receive()
                        if self._heard is not None and len(self._heard) < _HEARD_MAX:
                            self._heard += data
                        self._conn.receive_data(data)
                        continue
                    if isinstance(event, InformationLine):
                        lines.append(event.text)
                    elif isinstance(event, Urc | StrayLine):
                        self._note_unsolicited(event)
                    elif isinstance(event, Ok):
                        return Response(command=text, lines=tuple(lines))
                    elif isinstance(event, CmeErrorLine):
                        raise CmeError(text, event.code)
                    elif isinstance(event, Error):
                        raise CommandError(text, "ERROR")
                    elif isinstance(event, CmsErrorLine):
                        raise CommandError(text, f"+CMS ERROR: {event.code}")
                    elif isinstance(event, ShellRefusal):
                        raise ShellRefused(_short(text), event.kind, event.reason)
        except TimeoutError:
            self._give_up_line()
            raise DeviceTimeout(f"{text}: no answer within {timeout:g} s") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError) as exc:
            self._give_up_line()
            reason = str(exc) or type(exc).__name__
            raise TransportError(f"connection lost during {text} ({reason})") from exc
        except (LineTooLong, AnswerTooLong) as exc:
            self._give_up_line()
            raise RemoteProtocolError(f"{text}: {exc}") from exc

    def _give_up_line(self) -> None:
        self._conn.abandon()  # ERROR until the port is reopened
        self._raw_left_on = self._raw_left_on or self.raw_mode

    def _drain_idle(self) -> None:
        """Log what arrived while no command was pending."""
        while True:
            try:
                event = self._conn.next_event()
            except LineTooLong:
                continue
            if event is NEED_DATA:
                return
            self._note_unsolicited(event)

    def _note_unsolicited(self, event: Urc | StrayLine | object) -> None:
        if isinstance(event, Urc):
            self.log.debug("urc", line=event.text)
        elif isinstance(event, StrayLine):
            self.log.info("stray line (late answer?)", line=event.text)

    async def enable_cme_codes(self, *, timeout: float) -> None:
        """``AT+CMEE=1`` (numeric ``+CME ERROR`` codes), once per opened port."""
        if not self._cme_codes and not self.readonly:
            await self.command(Command.set("+CMEE", 1), timeout=timeout)
            self._cme_codes = True

    async def identify(self, *, timeout: float) -> Identity:
        """``AT+CGSN=1`` (twice) and ``AT+CGMR``: the IMEI, and the firmware (read every time,
        since it can be updated between runs). The IMEI is what :meth:`recover` checks the
        board against."""
        imei = await self.read_imei(timeout=timeout)
        lines = (await self.command(Command.action("+CGMR"), timeout=timeout)).lines
        self.identity = Identity(
            imei=imei,
            firmware=_identity_text("AT+CGMR", "firmware", lines[-1].strip() if lines else ""),
        )
        return self.identity

    async def read_model(self, *, timeout: float) -> str:
        """The model from ``AT+CGMM``."""
        lines = (await self.command(Command.action("+CGMM"), timeout=timeout)).lines
        return _identity_text("AT+CGMM", "model", lines[-1].strip() if lines else "")

    async def read_imei(self, *, timeout: float) -> str:
        """The IMEI from ``AT+CGSN=1``, read twice: both reads must agree and pass the Luhn
        check, so a line garbled on the wire is never taken for another device's identity."""
        first = await self._read_imei_once(timeout)
        second = await self._read_imei_once(timeout)
        if first != second:
            raise RemoteProtocolError(f"AT+CGSN=1 answered {first}, then {second} (garbled line?)")
        return first

    async def _read_imei_once(self, timeout: float) -> str:
        answer = await self.command(Command.set("+CGSN", 1), timeout=timeout)
        found = [m.group(1) for m in (_IMEI.match(line.strip()) for line in answer.lines) if m]
        if not found:
            raise RemoteProtocolError(f"AT+CGSN=1: no IMEI in the answer {answer.lines}")
        if not luhn_valid(found[0]):
            raise RemoteProtocolError(f"AT+CGSN=1: IMEI {found[0]} fails its Luhn check "
                                      "(garbled line?)")
        return found[0]

    async def read_function_mode(self, *, timeout: float) -> int:
        """The function mode from ``AT+CFUN?`` (a documented mode, or RemoteProtocolError)."""
        answer = await self.command(Command.read("+CFUN"), timeout=timeout)
        text = answer.first("+CFUN:").split(",")[0].strip()
        if not text.isdigit() or int(text) not in FUNCTION_MODES:
            raise RemoteProtocolError(f"AT+CFUN?: {text!r} is not a function mode")
        return int(text)

    async def probe(self, *, on_retry: Callable[[str], None] | None = None) -> None:
        """Does anything answer on this port, and what? Settles :attr:`line`
        (:func:`fleet.probe.first_contact`; once found, a reopen probes with that line).
        Raises :class:`NoAnswer` with a diagnosis of what came instead; ``on_retry(reason)``
        is called before a second try."""
        from fleet.probe import first_contact

        self._heard = bytearray()
        try:
            self.use_line(await first_contact(self, on_retry=on_retry))
        finally:
            self._heard = None

    @property
    def heard(self) -> bytes:
        """What the port delivered during the current probe."""
        return bytes(self._heard or b"")

    async def probe_step(self, data: bytes | Command | ShellCommand, *, wait: float,
                         stop_at_shell: bool = False) -> str:
        """One step of a probe: send ``data`` (a command starts a new exchange; bytes continue
        the pending one, a line end the firmware may still be waiting for) and wait up to
        ``wait`` seconds for a final line. Returns ``"final"``, ``"refused"`` (a shell
        refused the command), ``"shell"`` (with ``stop_at_shell``: a shell's prompt or
        ``command not found`` came first) or ``"silent"``."""
        from fleet.diagnose import looks_like_shell

        if self._stream is None:
            raise TransportError(f"{self.port}: port is not open")
        stream = self._stream
        try:
            with anyio.move_on_after(wait):
                await stream.send(data if isinstance(data, bytes) else self._conn.send(data))
                while True:
                    try:
                        event = self._conn.next_event()
                    except (LineTooLong, AnswerTooLong):
                        continue
                    if event is NEED_DATA:
                        received = await stream.receive()
                        if self._heard is not None and len(self._heard) < _HEARD_MAX:
                            self._heard += received
                        self._conn.receive_data(received)
                        if stop_at_shell and looks_like_shell(self.heard):
                            return "shell"
                        continue
                    if isinstance(event, ShellRefusal):
                        return "refused"
                    if isinstance(event, Ok | Error | CmeErrorLine | CmsErrorLine):
                        return "final"
                    self._note_unsolicited(event)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError) as exc:
            self._give_up_line()
            raise TransportError(f"connection lost during the probe ({exc or type(exc).__name__})"
                                 ) from exc
        return "silent"

    def restart_line(self, line: Line | None = None) -> None:
        """Forget a probe's unanswered command (the codec back to IDLE), framed for ``line``."""
        self._conn.reset()
        self._conn.shell = None
        if line is not None:
            self._conn.terminator = line.terminator.bytes
            if line.interface is Interface.SHELL:
                self._conn.shell = ShellFraming()

    async def recover(self, *, timeout: float) -> None:
        """Close, reopen (tries and backoff from the policy), probe, re-enable CME codes and
        check that the same device is still there. Raises TransportError when the port does
        not come back and :class:`DeviceSwapped` when another board answers."""
        await self.close()
        attempts = 0
        try:
            async for attempt in self.policy.reopening():
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    try:
                        await self.open()
                        await self.probe()
                        await self.enable_cme_codes(timeout=timeout)
                        imei = await self.read_imei(timeout=timeout)
                    except BaseException as exc:
                        self.log.info("reopen failed", attempt=attempts, error=str(exc))
                        await self.close()
                        raise
        except PortBusy:
            raise
        except REOPEN_RETRYABLE as exc:
            raise TransportError(
                f"{self.port}: device not usable after reopening the port {attempts} "
                f"time(s) (last error: {exc})") from exc
        if self.identity is not None and imei != self.identity.imei:
            raise DeviceSwapped(
                f"device swapped: the slot held IMEI {self.identity.imei}, now {imei}"
            )
        self.log.info("port reopened", attempt=attempts)
