"""Port strings in a plan, and how one entry expands to many slots.

Forms (see README "Plans"):

* a device path, ``/dev/serial/by-id/usb-...-if00`` (relative paths are relative to the plan);
* a glob over device paths (``*``, ``?`` or ``[`` in it), expanded with a sorted ``glob.glob``;
  a glob that matches nothing is an error naming the pattern;
* ``socket://host:port``, a serial server such as ser2net (port 1..65535);
* ``sim://N`` and ``sim://A-B``, simulated modem N, or A to B inclusive.

``port_identity`` gives what two ports must not share: the real path of a device (so a
``by-id`` link and the ``ttyACM`` node it points to are the same port), the lower-cased
host:port of a socket, the index of a simulated modem.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from fleet.porturl import SimPorts, SocketPort, parse_port

__all__ = ["expand_port", "is_glob", "port_identity"]


def is_glob(text: str) -> bool:
    """Whether a device path is a glob pattern."""
    return glob.has_magic(text)


def expand_port(text: str, *, base: Path, expand_globs: bool = True) -> list[str]:
    """The ports ``text`` stands for, in order. Raises ValueError with the reason.

    Device paths come back absolute (``base`` is the plan's directory). With ``expand_globs``
    false a glob comes back as one (absolute) pattern, unexpanded."""
    url = parse_port(text)
    if isinstance(url, SimPorts):
        return url.urls()
    if isinstance(url, SocketPort):
        return [text.rstrip("/")]
    path = Path(url.path).expanduser()
    if not path.is_absolute():
        path = base / path
    if not is_glob(str(path)) or not expand_globs:
        return [str(path)]
    matches = sorted(glob.glob(str(path)))
    if not matches:
        raise ValueError(f"port pattern {text!r} matches no port"
                         + (f" (looked for {str(path)!r})" if str(path) != text else ""))
    return matches


def port_identity(port: str) -> str:
    """What two slots must not share (see the module docstring)."""
    url = parse_port(port)
    if isinstance(url, SocketPort):
        return f"socket://{url.host}:{url.port}"
    if isinstance(url, SimPorts):
        return port
    return os.path.realpath(port)
