"""A Zephyr shell with sdk-nrf's ``at`` command in front of the simulated modem.

Derived from the sources (Zephyr ``subsys/shell/shell.c``, ``shell_ops.c``, ``shell_utils.c``;
sdk-nrf ``lib/at_shell/at_shell.c`` and ``at_cmd_mode.c``), not captured on hardware.

How this works
--------------
:class:`ShellLine` reads the host's bytes one at a time, as the shell's receive loop does:

- a printable byte goes into the command buffer, which holds at most ``shell_buffer - 1``
  bytes (``CONFIG_SHELL_CMD_BUFF_SIZE``; a byte that does not fit is dropped without a word),
  and is echoed; when prompt plus command fill a multiple of 80 columns the echo moves to the
  next line (CR LF);
- CR, LF or CR LF ends the line: the echo moves to the next line and the line runs; Ctrl-C
  drops the line; backspace and DEL remove the last byte; bytes above 127 are dropped;
- the line is split into arguments as ``make_argv`` does (:func:`split_args`); with wildcards
  on (``CONFIG_SHELL_WILDCARD``) an argument holding ``?`` or ``*`` ends the arguments, so
  ``at AT+CFUN?`` reaches the ``at`` command without its argument, which prints its usage;
- ``at <command>`` sends the first argument to the modem (others are ignored); with
  ``unescape_lf`` (``CONFIG_AT_SHELL_UNESCAPE_LF``) a command starting ``AT%CMNG=0`` has every
  two-character ``\\n`` replaced by CR LF first. The modem's answer is printed with a line end
  after it, every LF going out as CR LF (the UART backend's ``SHELL_FLAG_OLF_CRLF``), so its
  ``\\r\\n`` arrives as ``\\r\\r\\n``; then the prompt (green with colours on) without a line
  end. ``<cmd>: command not found`` and the shell's errors are red;
- ``shell echo on|off`` and ``shell colors on|off`` (``CONFIG_SHELL_CMDS``) switch those;
- with ``at_cmd_mode`` (``CONFIG_AT_SHELL_CMD_MODE``), ``at at_cmd_mode start [term_null|
  term_cr|term_lf|term_cr_lf] [echo_on|echo_off]`` bypasses the shell: bytes go to an AT
  reader with that terminator (CR and echo on by default) and a buffer of the same
  ``CONFIG_SHELL_CMD_BUFF_SIZE`` (a byte that does not fit is reported and dropped), where
  ``|`` splits one line into several commands, even inside quotes; answers go out as the
  modem sends them, through ``printk`` (LF as CR LF); bytes 0x18 0x11 leave the mode.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fleet.at import Final, encode_final
from fleet.at.line import Terminator, ends_command
from fleet.sim.config import SimConfig
from fleet.sim.lines import Input, Output, ToModem

__all__ = ["ShellLine", "split_args"]

_GREEN, _RED, _RESET = b"\x1b[1;32m", b"\x1b[1;31m", b"\x1b[m"
_WIDTH = 80  #: the terminal width the shell assumes until told otherwise
_CTRL_C, _CAN, _DC1 = 0x03, 0x18, 0x11
_CREDENTIALS = "AT%CMNG=0"
_WILDCARD = re.compile(r"[?*]")
_USAGE = (
    "Usage: at <subcommand>\n\nSubcommands:\n"
    "  events_enable     Enable AT event handler which prints AT notifications\n"
    "  events_disable    Disable AT event handler\n{extra}\n"
    "Any other subcommand is interpreted as AT command and sent to the modem.\n")
_CMD_MODE_USAGE = ("Usage: at at_cmd_mode <subcommand>\nSubcommands: start\n"
                   "  start [term_null|term_cr|term_lf|term_cr_lf] [echo_on|echo_off]\n")
_TERMS = {"term_null": Terminator.NUL, "term_cr": Terminator.CR, "term_lf": Terminator.LF,
          "term_cr_lf": Terminator.CRLF}
_CMD_MODE_STARTED = ("AT command mode started, press ctrl-x ctrl-q to escape\n"
                     + "=" * 59 + "\n")
_CMD_MODE_EXITED = "=" * 59 + "\nAT command mode exited\n"


def _olf(text: str) -> bytes:
    """Shell output as the UART backend sends it: every LF as CR LF."""
    return text.replace("\n", "\r\n").encode("utf-8", "surrogateescape")


def split_args(line: str) -> tuple[list[str], str]:
    """The arguments of a command line, as Zephyr's ``make_argv`` splits it, and the quote left
    open at its end ("" when none): spaces separate; single or double quotes group and are
    removed; outside quotes a backslash takes the next character as it is; inside quotes only
    ``\\<that quote>``, ``\\0ooo`` (octal) and ``\\xHH`` are decoded, another backslash is
    kept."""
    args: list[str] = []
    pos, end = 0, len(line)
    quote = ""
    while True:
        while pos < end and line[pos] == " ":
            pos += 1
        if pos >= end:
            return args, quote
        arg: list[str] = []
        quote = ""
        while pos < end:
            char = line[pos]
            if quote:
                if char == quote:
                    quote = ""
                    pos += 1
                    continue
                if char == "\\" and pos + 1 < end:
                    decoded, used = _quoted_escape(line, pos, quote)
                    arg.append(decoded)
                    pos += used
                    continue
                arg.append(char)
                pos += 1
                continue
            if char == " ":
                break
            if char in "'\"":
                quote = char
            elif char == "\\" and pos + 1 < end:
                arg.append(line[pos + 1])
                pos += 1
            else:
                arg.append(char)
            pos += 1
        args.append("".join(arg))


def _quoted_escape(line: str, pos: int, quote: str) -> tuple[str, int]:
    nxt = line[pos + 1]
    if nxt == quote:
        return quote, 2
    octal = re.match(r"0[0-7]{1,3}", line[pos + 1:pos + 5])
    if octal:
        return chr(int(octal.group(0), 8) & 0xFF), 1 + len(octal.group(0))
    hexa = re.match(r"x[0-9A-Fa-f]{1,2}", line[pos + 1:pos + 4])
    if hexa:
        return chr(int(hexa.group(0)[1:], 16)), 1 + len(hexa.group(0))
    return "\\", 1


class ShellLine:
    """One modem's shell (its settings, command buffer and mode persist while it is powered)."""

    def __init__(self, config: SimConfig) -> None:
        self._prompt = config.prompt
        self._wildcards = config.shell_wildcards
        self._size = config.shell_buffer
        self._unescape_lf = config.unescape_lf
        self._cmd_mode_built = config.at_cmd_mode
        self.echo = True
        self.colors = True
        self._buf = bytearray()
        self._column = len(config.prompt)  #: prompt + command, for the echo's line breaks
        self._last_end = 0  #: the line end that ended the last line (its pair is skipped)
        # at_cmd_mode
        self.raw = False
        self._raw_term = Terminator.CR
        self._raw_echo = True
        self._raw_quotes = False
        self._tail = 0

    # -- output --------------------------------------------------------------------------------

    def _prompt_bytes(self) -> bytes:
        text = self._prompt.encode()
        return _GREEN + text + _RESET if self.colors else text

    def _error(self, text: str) -> bytes:
        line = _olf(text + "\n")
        return _RED + line[:-2] + _RESET + b"\r\n" if self.colors else line

    def frame(self, lines: Sequence[str]) -> bytes:
        text = "".join(f"{line}\r\n" for line in lines)
        return _olf(text)  # the modem's CR LF printed through the shell: CR CR LF

    def answer(self, lines: Sequence[str], final: Final) -> bytes:
        response = "".join(f"{line}\r\n" for line in [*lines, encode_final(final)])
        if self.raw:
            return _olf(response)
        return _olf(response + "\n") + self._prompt_bytes()

    # -- input ---------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Input]:
        out: list[Input] = []
        for byte in data:
            if self.raw:
                self._raw_byte(byte, out)
            else:
                self._shell_byte(byte, out)
        return out

    def _shell_byte(self, byte: int, out: list[Input]) -> None:
        if byte in (0x0D, 0x0A):
            pair = self._last_end and self._last_end != byte
            self._last_end = 0 if pair else byte
            if not pair:
                self._run_line(out)
            return
        self._last_end = 0
        if byte == _CTRL_C:
            self._buf.clear()
            out.append(Output(b"\r\n" + self._prompt_bytes()))
            self._column = len(self._prompt)
        elif byte in (0x08, 0x7F):
            if self._buf:
                del self._buf[-1]
                self._column -= 1
                if self.echo:
                    out.append(Output(b"\x08 \x08"))
        elif 0x20 <= byte < 0x7F:
            if len(self._buf) + 1 >= self._size:
                return  # data_insert: a full buffer takes nothing more, and says nothing
            self._buf.append(byte)
            self._column += 1
            if self.echo:
                echo = bytes((byte,))
                if self._column % _WIDTH == 0:
                    echo += b"\r\n"
                out.append(Output(echo))
        # other control bytes and bytes above 127: ignored

    def _run_line(self, out: list[Input]) -> None:
        line = self._buf.decode("ascii")
        self._buf.clear()
        self._column = len(self._prompt)
        if self.echo:
            out.append(Output(b"\r\n"))
        args, quote = split_args(line)
        if quote:
            out.append(Output(self._error(f"not terminated: {quote}") + self._prompt_bytes()))
            return
        if self._wildcards:
            for index, arg in enumerate(args):
                if index and _WILDCARD.search(arg):
                    args = args[:index]
                    break
        if not args:
            out.append(Output(self._prompt_bytes()))
            return
        if args[0] == "at":
            self._at(args, out)
            return
        if args[0] == "shell" and len(args) == 3 and args[1] in ("echo", "colors") \
                and args[2] in ("on", "off"):
            setattr(self, args[1], args[2] == "on")
            out.append(Output(self._prompt_bytes()))
            return
        out.append(Output(self._error(f"{args[0]}: command not found") + self._prompt_bytes()))

    def _print(self, text: str) -> Output:
        return Output(_olf(text + "\n") + self._prompt_bytes())

    def _at(self, args: list[str], out: list[Input]) -> None:
        if len(args) < 2:
            extra = "  at_cmd_mode       AT command mode subcommands\n" \
                if self._cmd_mode_built else ""
            out.append(self._print(_USAGE.format(extra=extra)))
            return
        # make_argv decodes escapes to bytes: the modem gets those bytes (UTF-8 text, say)
        command = args[1].encode("latin-1").decode("utf-8", "replace")
        if command in ("events_enable", "events_disable"):
            state = "enabled" if command == "events_enable" else "disabled"
            out.append(self._print(f"AT command event handler {state}"))
            return
        if command == "at_cmd_mode" and self._cmd_mode_built:
            self._cmd_mode(args[2:], out)
            return
        if self._unescape_lf and command.startswith(_CREDENTIALS):
            command = command.replace("\\n", "\r\n")
        out.append(ToModem(command))

    def _cmd_mode(self, args: list[str], out: list[Input]) -> None:
        if not args or args[0] != "start":
            out.append(Output(_olf(_CMD_MODE_USAGE) + self._prompt_bytes()))
            return
        term, echo = Terminator.CR, True
        for option in args[1:3]:
            if option in _TERMS:
                term = _TERMS[option]
            elif option in ("echo_on", "echo_off"):
                echo = option == "echo_on"
            else:
                out.append(Output(self._error(f"Unknown option: {option}")
                                  + self._prompt_bytes()))
                return
        self.raw, self._raw_term, self._raw_echo = True, term, echo
        self._raw_quotes, self._tail = False, 0
        self._buf.clear()
        out.append(Output(_olf(_CMD_MODE_STARTED)))

    # -- at_cmd_mode ---------------------------------------------------------------------------

    def _raw_byte(self, byte: int, out: list[Input]) -> None:
        if self._tail == _CAN and byte == _DC1:
            self.raw = False
            self._buf.clear()
            self._tail = 0
            out.append(Output(_olf(_CMD_MODE_EXITED)))
            return
        self._tail = byte
        if byte in (0x08, 0x7F):
            if self._buf:
                if self._buf[-1] == 0x22:
                    self._raw_quotes = not self._raw_quotes
                del self._buf[-1]
            return
        if not self._raw_quotes and ends_command(self._raw_term, byte, self._buf):
            self._raw_send(out)
            return
        if len(self._buf) + 1 > self._size:
            out.append(Output(_olf(f"Buffer overflow, dropping '{chr(byte)}'\n")))
            return
        self._buf.append(byte)
        if byte == 0x22:
            self._raw_quotes = not self._raw_quotes
        if self._raw_echo:
            out.append(Output(bytes((byte,))))

    def _raw_send(self, out: list[Input]) -> None:
        text = self._buf.decode("utf-8", "replace")
        self._buf.clear()
        self._raw_quotes = False
        if self._raw_echo:
            out.append(Output(_olf("\n")))
        for part in text.split("|")[:10] if "|" in text else [text]:
            part = part.strip(" \r\n")
            if part:
                out.append(ToModem(part))
