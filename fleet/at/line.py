"""What a serial line to an nRF91 looks like: the interface behind the port and the byte that
ends a command.

An AT host (``lib/at_host``: the ``at_client`` sample, Serial Modem) ends a command at one
build-time terminator (``CONFIG_AT_HOST_TERMINATION``: NUL, CR, LF or CR+LF). A Zephyr shell
with the ``at`` command (``lib/at_shell``) takes CR, LF or CR LF as a line end and wants
``at <command>``.
"""

from __future__ import annotations

import enum

__all__ = ["Interface", "Terminator", "ends_command"]


class Interface(enum.StrEnum):
    """Who reads the host's lines on the port."""

    AT = "at"  #: a plain AT host
    SHELL = "shell"  #: a Zephyr shell with the ``at`` command


class Terminator(enum.StrEnum):
    """The line end the host sends after a command (the value is the plan's word)."""

    CR = "cr"
    LF = "lf"
    CRLF = "crlf"
    NUL = "nul"

    @property
    def bytes(self) -> bytes:
        return _BYTES[self]


_BYTES = {Terminator.CR: b"\r", Terminator.LF: b"\n", Terminator.CRLF: b"\r\n",
          Terminator.NUL: b"\x00"}


def ends_command(terminator: Terminator, byte: int, before: bytes | bytearray) -> bool:
    """Whether ``byte`` (outside quotes, after the command's bytes ``before``) ends a command
    on a reader built for ``terminator``, as sdk-nrf's ``lib/at_host`` and ``at_cmd_mode``
    decide: NUL, CR or LF for their own build, and LF right after a CR for CR+LF."""
    if byte == 0x00:
        return terminator is Terminator.NUL
    if byte == 0x0D:
        return terminator is Terminator.CR
    if byte == 0x0A:
        return terminator is Terminator.LF or (terminator is Terminator.CRLF
                                               and before.endswith(b"\r"))
    return False
