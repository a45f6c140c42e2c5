"""File-descriptor helpers shared by the host's serial transport and the simulator's ptys.

Both sides read a descriptor only when the event loop (epoll) said it is readable, so one
non-blocking ``os.read`` is all a read needs: no ``select()`` (which fails past descriptor 1024)
and no ``poll()`` per read. Hundreds of ports need hundreds of descriptors (a pty pair is two,
pyserial adds two pipes per port), hence :func:`raise_fd_limit`.
"""

from __future__ import annotations

import contextlib
import os
import resource

__all__ = ["FdClosed", "raise_fd_limit", "read_ready"]


class FdClosed(Exception):
    """The other end of the descriptor is gone (end of file, or EIO: a USB adapter was pulled,
    a pty's other side closed)."""


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def read_ready(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from non-blocking ``fd``; ``b""`` when there is nothing after all
    (another reader was first). Raises :class:`FdClosed` at end of file or on a read error."""
    try:
        data = os.read(fd, size)
    except BlockingIOError:
        return b""
    except OSError as exc:
        raise FdClosed(f"read failed: {exc.strerror or exc}") from exc
    if not data:
        raise FdClosed("end of file")
    return data
