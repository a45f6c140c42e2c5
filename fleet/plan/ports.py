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
import re
import urllib.parse
from pathlib import Path

__all__ = ["MAX_SIM_INDEX", "expand_port", "is_glob", "port_identity"]

#: Highest ``sim://`` index a plan may use.
MAX_SIM_INDEX = 4095

_SIM = re.compile(r"sim://(?:([0-9]+)|([0-9]+)-([0-9]+))\Z")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def is_glob(text: str) -> bool:
    """Whether a device path is a glob pattern."""
    return glob.has_magic(text)


def expand_port(text: str, *, base: Path, expand_globs: bool = True) -> list[str]:
    """The ports ``text`` stands for, in order. Raises ValueError with the reason.

    Device paths come back absolute (``base`` is the plan's directory). With ``expand_globs``
    false a glob comes back as one (absolute) pattern, unexpanded."""
    if text != text.strip() or not text:
        raise ValueError(f"port {text!r} is empty or has leading/trailing spaces")
    if text.startswith("sim://"):
        return _expand_sim(text)
    if text.startswith("socket://"):
        return [_check_socket(text)]
    scheme = _SCHEME.match(text)
    if scheme:
        raise ValueError(f"port {text!r}: unsupported scheme {scheme.group(1)}:// (use a device "
                         "path, a glob, socket://host:port or sim://N)")
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise ValueError(f"port {text!r} contains a control character")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    if not is_glob(str(path)):
        return [str(path)]
    if not expand_globs:
        return [str(path)]
    matches = sorted(glob.glob(str(path)))
    if not matches:
        raise ValueError(f"port pattern {text!r} matches no port"
                         + (f" (looked for {str(path)!r})" if str(path) != text else ""))
    return matches


def _expand_sim(text: str) -> list[str]:
    match = _SIM.match(text)
    if not match:
        raise ValueError(f"port {text!r}: write sim://N or sim://A-B (A <= B, decimal)")
    if match.group(1) is not None:
        first = last = int(match.group(1))
    else:
        first, last = int(match.group(2)), int(match.group(3))
        if first > last:
            raise ValueError(f"port {text!r}: range {first}-{last} is backwards")
    if last > MAX_SIM_INDEX:
        raise ValueError(f"port {text!r}: simulated modem indices go up to {MAX_SIM_INDEX}")
    return [f"sim://{i}" for i in range(first, last + 1)]


def _check_socket(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"port {text!r}: write socket://host:port with nothing after the port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port {text!r}: TCP port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"port {text!r}: no host name (write socket://host:port)")
    if port is None or port == 0:
        raise ValueError(f"port {text!r}: TCP port must be a number from 1 to 65535")
    return text.rstrip("/")


def port_identity(port: str) -> str:
    """What two slots must not share (see the module docstring)."""
    if port.startswith("socket://"):
        parts = urllib.parse.urlsplit(port)
        return f"socket://{(parts.hostname or '').lower()}:{parts.port}"
    if port.startswith("sim://"):
        return port
    return os.path.realpath(port)
