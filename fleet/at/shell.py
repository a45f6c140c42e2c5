"""The host side of a Zephyr shell with sdk-nrf's ``at`` command (sans-IO).

How this works
--------------
:class:`ShellFraming` is what :class:`fleet.at.HostConnection` uses in shell mode. Going out,
``at '<command>'``: the whole AT command is one single-quoted argument, so the shell's
argument splitter (Zephyr ``make_argv``) hands it to the ``at`` command as it is. Inside single
quotes that splitter decodes only ``\\'``, ``\\0ooo`` and ``\\xHH``, so a ``'``, a backslash, an
LF (in a PEM) and every byte above 127 (the shell drops those as typed) are written as
``\\xHH``: they reach the modem as the very bytes fleet means. The only literal quotes are the
first and the last, so a line the shell's buffer cut short always has its quote open and the
shell refuses it (``not terminated: '``) instead of running a part of it.

Coming in, every line (split at CR or LF, so the UART backend's ``\\r\\r\\n`` is one line end)
is cleaned before the AT codec classifies it: ANSI/VT100 sequences and the prompt at its start
are removed; while the echo of the command is still expected, a line that is the next piece of
it is dropped (the echo breaks at the terminal width, so it may come in pieces). What the
shell says about a command instead of running it is a :class:`ShellRefusal` with the reason:
``<cmd>: command not found``, the ``at`` command's usage text (wildcards ate the argument:
``CONFIG_SHELL_WILDCARD``), ``not terminated`` (the buffer was too small:
``CONFIG_SHELL_CMD_BUFF_SIZE``), ``Sending AT command failed``, and in raw AT mode
``Buffer overflow``. After a refusal, lines are dropped until the next command's echo.

Raw AT mode (``at at_cmd_mode start``) bypasses the shell: :meth:`ShellFraming.enter_raw`
switches to plain ``AT...`` lines with no echo expected; :data:`LEAVE_RAW` leaves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.at.events import ShellRefusal

__all__ = ["ANSI", "LEAVE_RAW", "PROMPT", "START_RAW", "ShellCommand", "ShellFraming",
           "shell_quote"]

#: An ANSI/VT100 escape sequence (the pattern Nordic's nrfcredstore strips).
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
#: A Zephyr shell prompt at the start of a line (``uart:~$ ``, ``mosh:~$ ``, ``rtt:~$ ``).
PROMPT = re.compile(r"[\w.-]{1,32}:~\$ ?")
#: The bytes that leave ``at_cmd_mode`` (Ctrl-X Ctrl-Q).
LEAVE_RAW = b"\x18\x11"

_NOT_FOUND = re.compile(r"(\S+): command not found\Z")
_SEND_FAILED = re.compile(r"Sending AT command failed with error code (-?\d+)")
_WILDCARDS = ("CONFIG_SHELL_WILDCARD=n (the shell's wildcards take `?` and `*`: read commands "
              "such as AT+CFUN? never reach the at command) or CONFIG_AT_SHELL_CMD_MODE (raw "
              "AT mode)")
_BUFFER = "CONFIG_SHELL_CMD_BUFF_SIZE"


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellCommand:
    """A line for the shell itself (``at at_cmd_mode start ...``), typed as it is."""

    text: str
    response_prefix: str | None = None

    def __str__(self) -> str:
        return self.text


#: Raw AT mode for the rest of the session, CR-terminated and without echo.
START_RAW = ShellCommand(text="at at_cmd_mode start term_cr echo_off")
_RAW_STARTED = ("AT command mode started", "AT command mode already started")
_RAW_EXITED = "AT command mode exited"
_RED = "\x1b[1;31m"


def shell_quote(text: str) -> str:
    """``text`` as one single-quoted shell argument that ``make_argv`` turns back into
    ``text``'s UTF-8 bytes."""
    out = ["'"]
    for char in text:
        if char in "'\\\n" or not " " <= char <= "~":
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    out.append("'")
    return "".join(out)


class ShellFraming:
    """What a shell session adds to and removes from the AT lines (no I/O, no clock)."""

    def __init__(self) -> None:
        self.raw = False  #: raw AT mode: plain AT lines, no echo, no prompt
        self._echo = ""  #: what is still expected of the pending command's echo
        self._typed = 0  #: length of the typed line
        self._quiet = False  #: after a refusal: drop lines until the next command
        self._leaving = False  #: raw AT mode left: drop lines until it says so

    def typed(self, command: object) -> str:
        """The line to type for ``command`` (an AT command, or a :class:`ShellCommand`); the
        echo of it is expected next."""
        if isinstance(command, ShellCommand):
            line = command.text
        elif self.raw:
            self._echo, self._quiet = "", False
            return str(command)
        else:
            line = "at " + shell_quote(str(command))
        self._echo, self._typed, self._quiet = line, len(line), False
        return line

    def enter_raw(self) -> None:
        """The shell is bypassed from now on (``at_cmd_mode`` started)."""
        self.raw = True
        self._echo = ""

    def leave_raw(self) -> None:
        """:data:`LEAVE_RAW` was sent: lines are dropped until the shell says the mode is
        over (what raw AT mode still prints of an earlier command comes first)."""
        self.raw = False
        self._echo = ""
        self._leaving = True

    def clean(self, text: str, *, awaiting: bool) -> str | ShellRefusal | None:
        """One received line without its shell dressing: the AT line in it, a refusal, or
        None (nothing of the modem's)."""
        if self._leaving:
            self._leaving = _RAW_EXITED not in text
            return None
        red = _RED in text
        text = ANSI.sub("", text)
        prompt = PROMPT.match(text)
        if prompt:
            text = text[prompt.end():]
        if not text.strip():
            return None
        if self._echo:
            if self._echo.startswith(text):
                self._echo = self._echo[len(text):]
                return None
            cut = self._typed - len(self._echo)
            self._echo = ""
            refusal = self._refusal(text.strip(), cut)
            if refusal is not None:
                return refusal
        elif awaiting and not self._quiet:
            refusal = self._refusal(text.strip(), None)
            if refusal is not None:
                return refusal
        if self._quiet:
            return None
        if awaiting and text.startswith(_RAW_STARTED):
            self.enter_raw()
            self._quiet = True  # the banner's second line
            return "OK"
        if awaiting and red:
            self._quiet = True
            return ShellRefusal(kind="error", reason=f"the shell answered `{text.strip()}`")
        return text

    def _refusal(self, text: str, echoed: int | None) -> ShellRefusal | None:
        refusal = _refusal(text, echoed, self._typed)
        if refusal is not None:
            self._quiet = True
        return refusal


def _refusal(text: str, echoed: int | None, typed: int) -> ShellRefusal | None:
    found = _NOT_FOUND.match(text)
    if found:
        return ShellRefusal(kind="not-found", reason=(
            f"the shell has no `{found.group(1)}` command: firmware without the at command "
            "(CONFIG_AT_SHELL)" if found.group(1) == "at" else
            f"the shell answered `{text}`"))
    if text.startswith("Usage: at"):
        return ShellRefusal(kind="usage", reason=(
            "the shell took the command's `?` or `*` as a wildcard and ran `at` without it; "
            f"the firmware needs {_WILDCARDS}"))
    if text.startswith("not terminated:"):
        took = f" (it took {echoed} of {typed} characters)" if echoed else ""
        return ShellRefusal(kind="buffer", reason=(
            f"the command is longer than the shell's command buffer{took}: the firmware "
            f"needs a larger {_BUFFER}"))
    if text.startswith("Buffer overflow, dropping"):
        return ShellRefusal(kind="buffer", reason=(
            f"the command is longer than raw AT mode's buffer (the shell's {_BUFFER}): the "
            f"firmware needs a larger {_BUFFER}"))
    failed = _SEND_FAILED.search(text)
    if failed:
        return ShellRefusal(kind="send-failed", reason=(
            f"the at command could not send the command to the modem (error "
            f"{failed.group(1)})"))
    return None
