"""Sans-IO AT codec for both ends of a serial line (the h11 model: bytes in, events out).

How this works
--------------
Bytes are split into lines as they arrive (``receive_data``) and each line is classified at once,
against the state the connection had when the line arrived; ``next_event`` hands the results out in
order. Because splitting and classification depend only on the byte sequence and on where the
``send`` calls fall in it, the events never depend on how the stream was chunked.

Host side (:class:`HostConnection`): ``send(command) -> bytes`` moves IDLE -> AWAITING; lines that
arrive while AWAITING are information lines, unless they look like a URC of another command
(``+CEREG: ...`` while waiting for ``%KEYGEN``); a final line (``OK``, ``ERROR``, ``+CME ERROR: n``,
``+CMS ERROR: n``) moves back to IDLE. Lines that arrive while IDLE are URCs or
:class:`StrayLine`. Lines end at CR or LF; empty lines are skipped. Only whole lines are matched,
so ``OK`` inside base64 data is never taken as a final result.

ERROR is terminal, as in h11: a command abandoned after a timeout (``abandon``), or an answer
over ``max_answer_lines`` lines or ``max_answer_bytes`` bytes (:class:`AnswerTooLong` from
``next_event``: a device that streams lines without a final one), leaves the connection in ERROR,
where ``send`` refuses until ``reset`` (the port reopened), so a late answer can never be taken
for the next command's. Lines that arrive in ERROR are :class:`StrayLine`/URC events, at most
``max_answer_lines`` of them (the rest are dropped: memory stays bounded).

The modem side is :class:`fleet.at.modem.ModemConnection`, on the same line splitter.

A line longer than ``max_line`` raises :class:`LineTooLong` from ``next_event`` at the point where
it occurred; the rest of that line is discarded and the connection stays usable. Memory held for a
partial line never exceeds ``max_line`` bytes.
"""

from __future__ import annotations

import enum
import re
from collections import deque

from fleet.at.commands import Command
from fleet.at.events import (
    NEED_DATA,
    CmeErrorLine,
    CmsErrorLine,
    Error,
    Final,
    HostEvent,
    InformationLine,
    NeedData,
    Ok,
    ShellRefusal,
    StrayLine,
    Urc,
)
from fleet.at.line import Terminator
from fleet.at.shell import ShellCommand, ShellFraming
from fleet.errors import AnswerTooLong, CmeCode, LineTooLong, LocalProtocolError

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_ANSWER_LINES",
    "MAX_LINE_BYTES",
    "HostConnection",
    "HostState",
    "encode_final",
    "parse_final",
]

#: Longest response line the host accepts. A %KEYGEN answer is about 575 bytes and an
#: %ATTESTTOKEN about 400; 8192 leaves room for any documented answer.
MAX_LINE_BYTES = 8192
#: Most information lines the host takes for one command. A full credential store lists a few
#: hundred lines (``AT%CMNG=1``), a certificate chain read back a few hundred more.
MAX_ANSWER_LINES = 4096
#: Most bytes of information lines the host takes for one command.
MAX_ANSWER_BYTES = 1 << 20

_URC_LIKE = re.compile(r"([+%][A-Z][A-Z0-9]*)(?::|\Z)")
_CME = re.compile(r"\+CME ERROR: *([0-9]{1,9})\Z")
_CMS = re.compile(r"\+CMS ERROR: *([0-9]{1,9})\Z")


def parse_final(text: str) -> Final | None:
    """The final result ``text`` stands for, or ``None`` when it is not a final line."""
    if text == "OK":
        return Ok()
    if text == "ERROR":
        return Error()
    match = _CME.match(text)
    if match:
        return CmeErrorLine(code=CmeCode.of(int(match.group(1))))
    match = _CMS.match(text)
    if match:
        return CmsErrorLine(code=int(match.group(1)))
    if text.startswith(("+CME ERROR:", "+CMS ERROR:")):
        # Verbose form (AT+CMEE=2) or junk after the colon: still the end of the response.
        return CmeErrorLine(code=0) if text.startswith("+CME") else CmsErrorLine(code=0)
    return None


def encode_final(final: Final) -> str:
    """The line that stands for ``final`` (no terminator)."""
    if isinstance(final, Ok):
        return "OK"
    if isinstance(final, Error):
        return "ERROR"
    if isinstance(final, CmeErrorLine):
        return f"+CME ERROR: {int(final.code)}"
    return f"+CMS ERROR: {final.code}"


class _TooLong:
    """Queue marker: a line overflowed here."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length


class _AnswerOverflow:
    """Queue marker: the pending command's answer went over a bound here."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _LineSplitter:
    """Split a byte stream into lines, with a bound on the partial line held in memory."""

    def __init__(self, *, terminators: bytes, quote_aware: bool, max_line: int) -> None:
        self._max = max_line
        pattern = b"[" + re.escape(terminators) + (b'"' if quote_aware else b"") + b"]"
        self._special = re.compile(pattern)
        self._buf = bytearray()
        self._in_quotes = False
        self._discarding = False
        self._discarded = 0

    def feed(self, data: bytes) -> list[bytes | _TooLong]:
        out: list[bytes | _TooLong] = []
        pos = 0
        end = len(data)
        while pos < end:
            match = self._special.search(data, pos)
            stop = match.start() if match else end
            self._append(data[pos:stop], out)
            if match is None:
                break
            self._special_byte(data[stop], out)
            pos = stop + 1
        return out

    def _special_byte(self, char: int, out: list[bytes | _TooLong]) -> None:
        """One byte ``_special`` stopped at: a double quote, or a line end."""
        if char == 0x22:
            self._in_quotes = not self._in_quotes
            self._append(b'"', out)
        elif self._in_quotes:
            self._append(bytes((char,)), out)
        else:
            self._finish(out)

    def _append(self, chunk: bytes, out: list[bytes | _TooLong]) -> None:
        if not chunk:
            return
        if self._discarding:
            self._discarded += len(chunk)
            return
        if len(self._buf) + len(chunk) > self._max:
            self._discarded = len(self._buf) + len(chunk)
            self._buf.clear()
            self._discarding = True
            out.append(_TooLong(self._discarded))
            return
        self._buf += chunk

    def _finish(self, out: list[bytes | _TooLong]) -> None:
        self._in_quotes = False
        if self._discarding:
            self._discarding = False
            self._discarded = 0
            return
        if self._buf:
            out.append(bytes(self._buf))
            self._buf.clear()

    def reset(self) -> None:
        self._buf.clear()
        self._in_quotes = False
        self._discarding = False

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


_HOST_TERMINATORS = frozenset(t.bytes for t in Terminator)


class HostState(enum.Enum):
    """Host-side connection state."""

    IDLE = "IDLE"
    AWAITING = "AWAITING"
    ERROR = "ERROR"  #: a command was abandoned or overflowed: only ``reset`` leaves it


class _Trigger(enum.Enum):
    SEND = "SEND"
    FINAL = "FINAL"
    ABANDON = "ABANDON"
    OVERFLOW = "OVERFLOW"
    RESET = "RESET"


# One transition table; a pair that is missing is a local protocol error.
_HOST_TRANSITIONS: dict[tuple[HostState, _Trigger], HostState] = {
    (HostState.IDLE, _Trigger.SEND): HostState.AWAITING,
    (HostState.AWAITING, _Trigger.FINAL): HostState.IDLE,
    (HostState.AWAITING, _Trigger.ABANDON): HostState.ERROR,
    (HostState.AWAITING, _Trigger.OVERFLOW): HostState.ERROR,
    (HostState.IDLE, _Trigger.ABANDON): HostState.ERROR,  # the line itself was given up
    (HostState.ERROR, _Trigger.ABANDON): HostState.ERROR,
    (HostState.IDLE, _Trigger.RESET): HostState.IDLE,
    (HostState.AWAITING, _Trigger.RESET): HostState.IDLE,
    (HostState.ERROR, _Trigger.RESET): HostState.IDLE,
}


class HostConnection:
    """The host (fleet) end of an AT serial line. No I/O, no clock."""

    def __init__(self, *, terminator: bytes = b"\r", max_line: int = MAX_LINE_BYTES,
                 max_answer_lines: int = MAX_ANSWER_LINES,
                 max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.terminator = terminator  #: what ends each command sent (see :attr:`terminator`)
        self._splitter = _LineSplitter(terminators=b"\r\n", quote_aware=False, max_line=max_line)
        self._events: deque[HostEvent | _TooLong | _AnswerOverflow] = deque()
        self._max_lines = max_answer_lines
        self._max_bytes = max_answer_bytes
        self._lines = 0  #: information lines of the pending answer (or strays in ERROR)
        self._bytes = 0
        self.state = HostState.IDLE
        self.pending: Command | ShellCommand | None = None
        #: a Zephyr shell's framing (``at '<command>'``, echo, prompt), or None: plain AT
        self.shell: ShellFraming | None = None

    @property
    def terminator(self) -> bytes:
        """The bytes that end each command: CR, LF, CR LF or NUL (the AT host's build-time
        choice; a first-contact probe may settle it after the connection is made)."""
        return self._terminator

    @terminator.setter
    def terminator(self, value: bytes) -> None:
        if value not in _HOST_TERMINATORS:
            raise ValueError(f"terminator must be CR, LF, CR LF or NUL, not {value!r}")
        self._terminator = value

    def _fire(self, trigger: _Trigger) -> None:
        try:
            self.state = _HOST_TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise LocalProtocolError(
                f"cannot {trigger.value.lower()} in state {self.state.value}"
                + (f" (waiting for the answer to {self.pending})" if self.pending else "")
            ) from None

    def send(self, command: Command | ShellCommand) -> bytes:
        """Bytes to write for ``command``. Only one command may be pending at a time. A
        :class:`ShellCommand` only in shell mode."""
        if isinstance(command, ShellCommand) and self.shell is None:
            raise LocalProtocolError(f"{command}: a shell command needs shell mode")
        if self.state is HostState.ERROR:
            raise LocalProtocolError(
                f"cannot send {command}: the connection is in ERROR since a command was "
                "abandoned or its answer overflowed; reset it (reopen the port) first")
        self._fire(_Trigger.SEND)
        self.pending = command
        self._lines = self._bytes = 0
        if self.shell is not None:
            return self.shell.typed(command).encode("utf-8") + self._terminator
        assert isinstance(command, Command)
        return command.encode() + self._terminator

    def abandon(self) -> None:
        """Give up waiting for the pending command (after a timeout), or on the line (it was
        lost): the connection goes to ERROR. Late lines, if any arrive, become
        :class:`StrayLine` events."""
        self._fire(_Trigger.ABANDON)
        self.pending = None
        self._lines = self._bytes = 0

    def reset(self) -> None:
        """Back to IDLE with nothing buffered (the port was reopened)."""
        self._fire(_Trigger.RESET)
        self.pending = None
        self._lines = self._bytes = 0
        self._splitter.reset()
        self._events.clear()

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the port. ``b""`` is allowed and does nothing."""
        for item in self._splitter.feed(data):
            if isinstance(item, _TooLong):
                self._events.append(item)
                continue
            event = self._classify(item.decode("utf-8", errors="replace"))
            if event is not None:
                self._events.append(event)

    def _classify(self, text: str) -> HostEvent | _AnswerOverflow | None:
        if self.shell is not None:
            cleaned = self.shell.clean(text, awaiting=self.state is HostState.AWAITING)
            if cleaned is None:
                return None
            if isinstance(cleaned, ShellRefusal):
                if self.state is not HostState.AWAITING:
                    return None
                self._fire(_Trigger.FINAL)
                self.pending = None
                return cleaned
            text = cleaned
        final = parse_final(text)
        if self.state is HostState.AWAITING:
            if final is not None:
                self._fire(_Trigger.FINAL)
                self.pending = None
                return final
            match = _URC_LIKE.match(text)
            pending = self.pending
            if match and pending is not None and match.group(1) != pending.response_prefix:
                return Urc(text=text)
            self._lines += 1
            self._bytes += len(text)
            if self._lines > self._max_lines or self._bytes > self._max_bytes:
                reason = (f"the answer to {pending} went over {self._max_lines} lines or "
                          f"{self._max_bytes} bytes without a final line")
                self._fire(_Trigger.OVERFLOW)
                self.pending = None
                self._lines = self._bytes = 0
                return _AnswerOverflow(reason)
            return InformationLine(text=text)
        if self.state is HostState.ERROR:
            self._lines += 1
            if self._lines > self._max_lines:
                return None  # a device still streaming: dropped, memory stays bounded
        if final is None and _URC_LIKE.match(text):
            return Urc(text=text)
        return StrayLine(text=text)

    def next_event(self) -> HostEvent | NeedData:
        """The next event, or ``NEED_DATA``. Raises :class:`LineTooLong` where a line overflowed
        and :class:`AnswerTooLong` where an answer went over its bound (the connection is then
        in ERROR)."""
        if not self._events:
            return NEED_DATA
        item = self._events.popleft()
        if isinstance(item, _TooLong):
            raise LineTooLong(f"line longer than the {self._splitter._max}-byte maximum discarded")
        if isinstance(item, _AnswerOverflow):
            raise AnswerTooLong(item.reason)
        return item

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an unfinished line held in memory (at most ``max_line``)."""
        return self._splitter.pending_bytes
