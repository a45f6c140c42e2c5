"""Read a file the user named (a key, a certificate, a plan, a manifest) only when it is a regular
file.

How this works: the path is ``stat``-ed first, so a FIFO, a device (``/dev/zero`` would be read
until memory runs out; opening a serial port may reset the board), a socket or a directory is
refused before anything opens it. The file is then opened with ``O_NONBLOCK`` (a FIFO put in its
place meanwhile cannot hang the open) and ``fstat``-ed again, so what is read is the regular file
that was checked. The refusal is a :class:`NotRegularFile`, an ``OSError`` whose ``strerror``
says what the path is and what to give instead, so the callers' ``except OSError`` report it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["NotRegularFile", "check_regular_file", "file_kind", "read_regular_file"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """The path names something other than a regular file (nothing was read from it)."""

    def __str__(self) -> str:
        return str(self.strerror)


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` that is not a regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "something else")


def _refuse(path: Path | str, mode: int) -> NotRegularFile:
    return NotRegularFile(errno.EINVAL, f"it is {file_kind(mode)}, not a regular file: name the "
                          "file itself", str(path))


def check_regular_file(path: Path | str) -> None:
    """Raise :class:`NotRegularFile` when ``path`` exists and is not a regular file (symlinks
    followed); the ``OSError`` of ``stat`` when it cannot be looked at (``FileNotFoundError``)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _refuse(path, mode)


def read_regular_file(path: Path | str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path``; at most ``max_bytes + 1`` of them when given (so
    the caller can tell a file that is too large). ``OSError`` otherwise, a
    :class:`NotRegularFile` for a FIFO, device, socket or directory, before reading from it."""
    check_regular_file(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the stat and the open
            raise _refuse(path, mode)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read() if max_bytes is None else stream.read(max_bytes + 1)
    finally:
        os.close(fd)
