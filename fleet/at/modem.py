"""Sans-IO AT codec, the modem's end: bytes from the host in, command lines out (the
simulator uses it, on the host codec's line splitter).

Command lines end at CR, LF or NUL outside double quotes; inside quotes they are part of the
argument (a PEM written in one command). Given a :class:`~fleet.at.line.Terminator`, the line is
read as sdk-nrf ``lib/at_host`` reads it when built with that ``CONFIG_AT_HOST_TERMINATION``:
only that terminator ends a command; a CR or LF that does not end it stays in the command (CR+LF
ends at an LF right after a CR, the CR kept), a NUL that does not end it is dropped, backspace
and DEL remove the last byte, and a command with no printable character is dropped without an
answer.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence

from fleet.at.codec import _LineSplitter, _TooLong, encode_final
from fleet.at.commands import MAX_COMMAND_BYTES
from fleet.at.events import NEED_DATA, CommandLine, Final, NeedData
from fleet.at.line import Terminator, ends_command
from fleet.errors import LineTooLong

__all__ = ["ModemConnection"]


class _AtHostSplitter(_LineSplitter):
    """``lib/at_host``'s receive loop for one build-time terminator (see the module's text): the
    host codec's splitter (its buffer bound, its quotes) with at_host's rules for each byte."""

    def __init__(self, terminator: Terminator, *, max_line: int) -> None:
        super().__init__(terminators=b"\r\n\x00", quote_aware=True, max_line=max_line)
        self._special = re.compile(rb'[\x00\r\n"\x08\x7f]')  # and backspace, DEL
        self._terminator = terminator

    def _special_byte(self, char: int, out: list[bytes | _TooLong]) -> None:
        if char in (0x08, 0x7F):
            del self._buf[-1:]
        elif char == 0x22 or self._in_quotes:
            super()._special_byte(char, out)
        elif ends_command(self._terminator, char, self._buf):
            self._finish(out)
        elif char != 0:  # a NUL that ends nothing is dropped
            self._append(bytes((char,)), out)

    def _finish(self, out: list[bytes | _TooLong]) -> None:
        if not any(byte > 0x20 for byte in self._buf):
            self._buf.clear()  # no printable byte: dropped, and no answer
        super()._finish(out)


class ModemConnection:
    """The modem end of an AT serial line, used by the simulator. No I/O, no clock."""

    def __init__(self, *, max_line: int = MAX_COMMAND_BYTES,
                 terminator: Terminator | None = None) -> None:
        self._max_line = max_line
        self._splitter: _LineSplitter = (
            _LineSplitter(terminators=b"\r\n\x00", quote_aware=True, max_line=max_line)
            if terminator is None else _AtHostSplitter(terminator, max_line=max_line))
        self._events: deque[CommandLine | _TooLong] = deque()

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the host."""
        for item in self._splitter.feed(data):
            if isinstance(item, _TooLong):
                self._events.append(item)
            else:
                # Line ends that stay in a command are outside quotes at its ends (the LF of a
                # host's CR LF before the next command on a CR build, the CR of CR LF on a
                # CR+LF build): the modem's own parser skips them there.
                text = item.decode("utf-8", errors="replace").strip(" \r\n")
                if text:
                    self._events.append(CommandLine(text=text))

    def next_event(self) -> CommandLine | NeedData:
        """The next command line, or ``NEED_DATA``. Raises :class:`LineTooLong` for a command
        over the modem's limit (the modem answers that with ``ERROR``)."""
        if not self._events:
            return NEED_DATA
        item = self._events.popleft()
        if isinstance(item, _TooLong):
            raise LineTooLong(f"command longer than {self._max_line} bytes discarded")
        return item

    @staticmethod
    def frame(lines: Sequence[str]) -> bytes:
        """Bytes for ``lines`` as the modem sends them, each ending in CR LF. Text goes out as
        UTF-8, and a lone surrogate ``\\udcXX`` as the raw byte ``XX`` (a modem that prints bytes
        that are not UTF-8)."""
        if not lines:
            return b""
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")

    @staticmethod
    def response(lines: Sequence[str], final: Final) -> bytes:
        """Bytes for a complete response: information lines, then the final line."""
        return ModemConnection.frame([*lines, encode_final(final)])
