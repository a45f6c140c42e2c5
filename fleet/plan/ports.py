"""Port strings in a plan, and how one entry expands to many slots.

Forms (see README "Plans"):

* a device path, ``/dev/serial/by-id/usb-...-if00`` (relative paths are relative to the plan);
* a glob over device paths (``*``, ``?`` or ``[`` in it), expanded with a sorted ``glob.glob``;
  a glob that matches nothing is an error naming the pattern;
* ``usb:serial=...``, ``usb:vid=...,pid=...``, ``usb:location=...`` (each with an optional
  ``,interface=N``): the serial ports of this host named by USB identity or hub position
  (:func:`fleet.usbports.select`), read from sysfs when a plan uses one; each comes back with
  its :class:`fleet.usbid.UsbIdentity`;
* ``socket://host:port``, a serial server such as ser2net (port 1..65535);
* ``sim://N`` and ``sim://A-B``, simulated modem N, or A to B inclusive.

``port_identity`` gives what two ports must not share: the real path of a device (so a
``by-id`` link and the ``ttyACM`` node it points to are the same port), the lower-cased
host:port of a socket, the index of a simulated modem.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.porturl import SimPorts, SocketPort, UsbPorts, parse_port
from fleet.usbid import UsbIdentity

if TYPE_CHECKING:  # the sysfs lookup is imported only for a plan that uses a usb: form
    from fleet.usbports import Host

__all__ = ["PortMatch", "expand_port", "is_glob", "port_identity"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMatch:
    """One port an entry's port string stands for."""

    port: str
    usb: UsbIdentity | None = None  #: when a usb: form found it
    #: a ``usb:location=`` form found it: the slot is named after the hub position
    by_location: bool = False


def is_glob(text: str) -> bool:
    """Whether a device path is a glob pattern."""
    return glob.has_magic(text)


def expand_port(text: str, *, base: Path, expand_globs: bool = True,
                usb_host: Callable[[], Host] | None = None) -> list[PortMatch]:
    """The ports ``text`` stands for, in order. Raises ValueError with the reason.

    Device paths come back absolute (``base`` is the plan's directory). With ``expand_globs``
    false a glob or a usb: form comes back as one port, the pattern (absolute) or the form,
    unexpanded. ``usb_host`` gives the host's ports (one scan for a whole plan); None scans."""
    url = parse_port(text)
    if isinstance(url, SimPorts):
        return [PortMatch(port=u) for u in url.urls()]
    if isinstance(url, SocketPort):
        return [PortMatch(port=text.rstrip("/"))]
    if isinstance(url, UsbPorts):
        if not expand_globs:
            return [PortMatch(port=text)]
        from fleet import usbports

        host = usb_host() if usb_host is not None else usbports.scan()
        return [PortMatch(port=p.device, usb=p.identity(), by_location=url.location is not None)
                for p in usbports.select(url, host)]
    path = Path(url.path).expanduser()
    if not path.is_absolute():
        path = base / path
    if not is_glob(str(path)) or not expand_globs:
        return [PortMatch(port=str(path))]
    matches = sorted(glob.glob(str(path)))
    if not matches:
        raise ValueError(f"port pattern {text!r} matches no port"
                         + (f" (looked for {str(path)!r})" if str(path) != text else ""))
    return [PortMatch(port=m) for m in matches]


def port_identity(port: str) -> str:
    """What two slots must not share (see the module docstring)."""
    url = parse_port(port)
    if isinstance(url, SocketPort):
        return f"socket://{url.host}:{url.port}"
    if isinstance(url, SimPorts | UsbPorts):  # a usb: form only when left unexpanded
        return port
    return os.path.realpath(port)
