"""Typed AT commands: one grammar for encoding (host side) and parsing (modem side).

A command is ``AT`` + name + operation::

    AT                  name "",         Op.ACTION
    AT+CGMM             name "+CGMM",    Op.ACTION
    AT+CFUN?            name "+CFUN",    Op.READ
    AT+CFUN=?           name "+CFUN",    Op.TEST
    AT%KEYGEN=11,2,0,,"101010000"
                        name "%KEYGEN",  Op.SET, args (11, 2, 0, None, "101010000")

Arguments are non-negative ``int``, ``str`` (always sent quoted), :class:`Multiline` (a quoted
string that may hold LF, for a PEM) or ``None`` (an omitted optional parameter). Strings are
refused when they hold a double quote or a control character (CR, LF, NUL, ...): inside quotes the
modem would take a quote as the end of the argument, and outside them a terminator would start a
second command. That refusal is what makes AT injection from a plan impossible.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass, field

from fleet.errors import ArgumentError, RemoteProtocolError

__all__ = [
    "MAX_COMMAND_BYTES",
    "Arg",
    "Command",
    "Multiline",
    "Op",
    "ParsedCommand",
    "check_string",
    "parse_command",
]

#: Longest command line the modem accepts, terminator excluded (nrf91-facts.md).
MAX_COMMAND_BYTES = 4096


class Op(enum.Enum):
    """What an AT command asks for."""

    ACTION = ""
    READ = "?"
    TEST = "=?"
    SET = "="


class Multiline(str):
    """A string argument that may contain LF (a PEM written with ``%CMNG=0``).

    CR is still refused: some modem firmware rejects CRLF in a credential (``+CME ERROR: 527``)
    and the SHA-256 the modem lists is over the exact bytes, so line endings must be LF only.
    """

    __slots__ = ()


Arg = int | str | None

_NAME = re.compile(r"(?:[+%][A-Z][A-Z0-9]*|[A-Z&][A-Z0-9]*|)\Z")


def check_string(value: str, *, allow_lf: bool = False) -> None:
    """Raise :class:`ArgumentError` if ``value`` cannot travel inside a quoted AT argument."""
    if '"' not in value and value.isprintable():
        return  # the usual case, checked in C: no quote, and no Cc, Zl or Zp character at all
    for index, char in enumerate(value):
        if char == '"':
            raise ArgumentError(
                f"string argument contains a double quote at position {index}: {value!r} "
                "(it would end the argument early and let the rest run as a command)"
            )
        if char == "\n" and allow_lf:
            continue
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise ArgumentError(
                f"string argument contains control character {char!r} at position {index}: "
                f"{value!r} (a line terminator would start a second command)"
            )


def _check_arg(arg: object) -> None:
    if arg is None:
        return
    if isinstance(arg, bool):
        raise ArgumentError(f"boolean is not an AT argument: {arg!r}")
    if isinstance(arg, int):
        if arg < 0:
            raise ArgumentError(f"integer arguments must be non-negative, not {arg}")
        return
    if isinstance(arg, str):
        check_string(arg, allow_lf=isinstance(arg, Multiline))
        return
    raise ArgumentError(f"unsupported AT argument type {type(arg).__name__}: {arg!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """One AT command. Validates its name and every argument on construction.

    ``response_prefix`` is the prefix of this command's information lines (``"%KEYGEN"`` for
    ``AT%KEYGEN=...``); it lets the host side tell a response line from a URC. It defaults to the
    command name for extended commands.
    """

    name: str
    op: Op = Op.ACTION
    args: tuple[Arg, ...] = ()
    response_prefix: str | None = None
    _line: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ArgumentError(f"invalid AT command name {self.name!r}")
        if self.args and self.op is not Op.SET:
            raise ArgumentError(f"only SET commands take arguments ({self.name}{self.op.value})")
        for arg in self.args:
            _check_arg(arg)
        args = self.args
        while args and args[-1] is None:
            args = args[:-1]
        object.__setattr__(self, "args", tuple(args))
        if self.response_prefix is None and self.name[:1] in ("+", "%"):
            object.__setattr__(self, "response_prefix", self.name)
        text = "AT" + self.name + self.op.value
        if self.op is Op.SET:
            text += ",".join(_render(arg) for arg in self.args)
        line = text.encode("utf-8")
        if len(line) > MAX_COMMAND_BYTES:
            raise ArgumentError(
                f"AT{self.name} is {len(line)} bytes; the modem accepts at most "
                f"{MAX_COMMAND_BYTES}"
            )
        object.__setattr__(self, "_line", line)  # rendered once: a command is sent as is

    @classmethod
    def set(cls, name: str, *args: Arg, response_prefix: str | None = None) -> Command:
        """``AT<name>=<args>``."""
        return cls(name=name, op=Op.SET, args=args, response_prefix=response_prefix)

    @classmethod
    def read(cls, name: str) -> Command:
        """``AT<name>?``."""
        return cls(name=name, op=Op.READ)

    @classmethod
    def action(cls, name: str = "", *, response_prefix: str | None = None) -> Command:
        """``AT<name>``."""
        return cls(name=name, op=Op.ACTION, response_prefix=response_prefix)

    def encode(self) -> bytes:
        """The command line without terminator."""
        return self._line

    def __str__(self) -> str:
        return self._line.decode("utf-8")


def delete_credential(sec_tag: int, credential_type: int) -> Command:
    """``AT%CMNG=3,<sec_tag>,<type>``: delete one credential (also the command fleet's errors
    tell an operator to send)."""
    return Command.set("%CMNG", 3, sec_tag, credential_type)


def _render(arg: Arg) -> str:
    if arg is None:
        return ""
    if isinstance(arg, int):
        return str(arg)
    return f'"{arg}"'


_INT = re.compile(r"[0-9]{1,19}\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedCommand:
    """A command as the modem received it. Unlike :class:`Command`, string arguments are kept
    exactly as they arrived (a PEM with CRLF, say), because the modem decides what to do with
    them, not the codec."""

    name: str
    op: Op
    args: tuple[int | str | None, ...] = ()

    def arg(self, index: int) -> int | str | None:
        """The argument at ``index``, or ``None`` when it was omitted or not given."""
        return self.args[index] if index < len(self.args) else None


def parse_command(line: str) -> ParsedCommand:
    """Parse one command line (as received by the modem, terminator removed).

    Raises :class:`RemoteProtocolError` for anything that is not a well-formed command: the modem
    answers that with ``ERROR``.
    """
    if line[:2].upper() != "AT":
        raise RemoteProtocolError(f"not an AT command: {line[:40]!r}")
    rest = line[2:]
    match = re.match(r"([+%][A-Za-z][A-Za-z0-9]*|[A-Za-z&][A-Za-z0-9]*|)", rest)
    assert match is not None  # the pattern can match the empty string
    name = match.group(1).upper()
    rest = rest[match.end() :]
    if rest == "":
        op, body = Op.ACTION, ""
    elif rest == "?":
        op, body = Op.READ, ""
    elif rest == "=?":
        op, body = Op.TEST, ""
    elif rest.startswith("="):
        op, body = Op.SET, rest[1:]
    else:
        raise RemoteProtocolError(f"malformed AT command: {line[:40]!r}")
    args: list[int | str | None] = []
    if op is Op.SET:
        args = _parse_args(body, line)
        while args and args[-1] is None:
            args.pop()
    return ParsedCommand(name=name, op=op, args=tuple(args))


def _parse_args(body: str, line: str) -> list[int | str | None]:
    args: list[int | str | None] = []
    pos = 0
    while True:
        if body.startswith('"', pos):
            end = body.find('"', pos + 1)
            if end < 0:
                raise RemoteProtocolError(f"unterminated string in {line[:40]!r}")
            args.append(body[pos + 1 : end])
            pos = end + 1
        else:
            end = body.find(",", pos)
            token = body[pos:] if end < 0 else body[pos:end]
            token = token.strip()
            if token == "":
                args.append(None)
            elif _INT.match(token):
                args.append(int(token))
            else:
                raise RemoteProtocolError(f"invalid argument {token[:20]!r} in {line[:40]!r}")
            pos = len(body) if end < 0 else end
        if pos >= len(body):
            return args
        if body[pos] != ",":
            raise RemoteProtocolError(f"expected ',' after an argument in {line[:40]!r}")
        pos += 1
        if pos == len(body):
            args.append(None)
            return args
