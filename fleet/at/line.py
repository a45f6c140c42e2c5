"""What a serial line to an nRF91 looks like: the interface behind the port and the byte that
ends a command.

An AT host (``lib/at_host``: the ``at_client`` sample, Serial Modem) ends a command at one
build-time terminator (``CONFIG_AT_HOST_TERMINATION``: NUL, CR, LF or CR+LF). A Zephyr shell
with the ``at`` command (``lib/at_shell``) takes CR, LF or CR LF as a line end and wants
``at <command>``.
"""

from __future__ import annotations

import enum

__all__ = ["Interface", "Terminator"]


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
