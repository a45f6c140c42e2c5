"""The serial line to one modem: send a command, await its final line with a timeout, route
URCs aside, through the interface the port has (a plain AT host or a Zephyr shell).

How this works
--------------
:class:`LineSession` owns a byte stream (from :func:`fleet.transport.open_port`) and a
:class:`fleet.at.HostConnection`. ``command()`` sends one command and reads the stream, feeding
the codec, until the final line arrives; URCs and stray lines are logged and never mistaken for
the answer. There is no reader task: bytes that arrive between commands wait in the stream's
buffer and are classified (as URCs or stray lines) before the next answer.

The :class:`Line` (interface and terminator) is settled by the first-contact probe
(:mod:`fleet.probe`, which works through :meth:`LineSession.probe_step`) and kept for every
reopen. Through a Zephyr shell the codec frames every command as ``at '<command>'``
(:class:`fleet.at.ShellFraming`); a read command that the shell's wildcards stop switches the
session to raw AT mode (``at at_cmd_mode start``) where the firmware has it, and the session
leaves that mode when it closes (or, after the port went away, when it opens it again).

A timeout or a lost connection leaves the line in an unknown state (a late answer could be taken
for the next command's), so the codec's connection is left in its ERROR state, which refuses
every command until the port is reopened (:meth:`fleet.device.DeviceSession.recover`).

Time: the codec below never reads a clock. Command timeouts and the probe's waits are anyio's
(on the event loop's clock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
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
from fleet.diagnose import looks_like_shell
from fleet.errors import (
    AnswerTooLong,
    CmeError,
    CommandError,
    DeviceTimeout,
    FleetError,
    LineTooLong,
    RemoteProtocolError,
    ShellRefused,
    TransportError,
)

__all__ = ["Line", "LineSession", "Opener", "Response"]

_HEARD_MAX = 4096  #: bytes kept for the probe's diagnosis

Opener = Callable[[], Awaitable[anyio.abc.ByteStream]]


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


def _short(command: str) -> str:
    """A command as an error names it: its first line, at most 60 characters."""
    first = command.split("\n", 1)[0]
    return first if len(first) <= 60 and first == command else first[:60] + "..."


class LineSession:
    """The host side of one modem's serial line."""

    def __init__(self, opener: Opener, *, port: str, probe_timeout: float = 3.0,
                 baudrate: int = 115200, rtscts: bool = True, interface: str = "auto",
                 terminator: str = "auto",
                 log: structlog.typing.FilteringBoundLogger | None = None) -> None:
        self._opener = opener
        self.port = port
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
        self.log = log or structlog.get_logger().bind(port=port)
        #: how many times the port was opened: what a caller read on one opening was read from
        #: the board there then (a reopened port may hold another one)
        self.openings = 0

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
        self.openings += 1
        self._conn = HostConnection()
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

    @contextlib.contextmanager
    def hearing(self) -> Iterator[None]:
        """Keep what the port delivers meanwhile (for a probe's diagnosis: :attr:`heard`)."""
        self._heard = bytearray()
        try:
            yield
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
