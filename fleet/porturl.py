"""Port URLs: what a port string names, parsed in one place.

* ``sim://N`` (or ``sim://A-B``, modems A to B inclusive, in a plan): the in-process simulator;
* ``socket://host:port``: a TCP serial server such as ser2net (port 1..65535, nothing after it;
  an IPv6 host in brackets);
* ``usb:serial=S[,interface=N]``, ``usb:vid=XXXX,pid=XXXX[,interface=N]``,
  ``usb:location=L[,interface=N]`` (L may be a glob: ``1-1.*``): serial ports named by their USB
  identity or hub position, which the plan expands into device paths (:mod:`fleet.usbports`);
* anything else without a ``scheme://``: a device path (``/dev/ttyACM0``, a by-id link, a
  simulator link ``DIR/modem3``).

:func:`parse_port` raises ValueError with the reason; callers map that to their own error (a plan
error with a line number, a :class:`fleet.errors.TransportError`).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

__all__ = ["MAX_SIM_INDEX", "DevicePath", "PortUrl", "SimPorts", "SocketPort", "UsbPorts",
           "parse_port"]

#: Highest ``sim://`` index a plan may use.
MAX_SIM_INDEX = 4095

_SIM = re.compile(r"sim://(?:([0-9]+)|([0-9]+)-([0-9]+))\Z")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimPorts:
    """``sim://first`` .. ``sim://last`` (one modem when ``first == last``)."""

    first: int
    last: int

    def urls(self) -> list[str]:
        return [f"sim://{i}" for i in range(self.first, self.last + 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketPort:
    """``socket://host:port``; ``host`` without IPv6 brackets, lower case."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"socket://{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DevicePath:
    """A device path (maybe relative, maybe a glob: the caller decides)."""

    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UsbPorts:
    """A ``usb:`` form: exactly one of ``serial``, ``vid``+``pid`` or ``location`` (a USB port
    path or a glob over them), and the interface number when the form names one."""

    text: str
    serial: str | None = None
    vid: str | None = None  #: four lower-case hex digits
    pid: str | None = None
    location: str | None = None
    interface: int | None = None


PortUrl = SimPorts | SocketPort | DevicePath | UsbPorts

_USB_KEYS = ("serial", "vid", "pid", "location", "interface")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}\Z")
_LOCATION_GLOB = re.compile(r"[0-9*?\[\]!.-]+\Z")


def parse_port(text: str) -> PortUrl:
    """What ``text`` names; raises ValueError saying what is wrong with it."""
    if text != text.strip() or not text:
        raise ValueError(f"port {text!r} is empty or has leading/trailing spaces")
    if text.startswith("sim://"):
        return _sim(text)
    if text.startswith("socket://"):
        return _socket(text)
    if text.startswith("usb:"):
        return _usb(text)
    scheme = _SCHEME.match(text)
    if scheme:
        raise ValueError(f"port {text!r}: unsupported scheme {scheme.group(1)}:// (use a device "
                         "path, a glob, usb:..., socket://host:port or sim://N)")
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise ValueError(f"port {text!r} contains a control character")
    return DevicePath(path=text)


def _sim(text: str) -> SimPorts:
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
    return SimPorts(first=first, last=last)


def _socket(text: str) -> SocketPort:
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
    return SocketPort(host=parts.hostname.lower(), port=port)


def _usb(text: str) -> UsbPorts:
    forms = ("write usb:serial=S, usb:vid=XXXX,pid=XXXX or usb:location=1-1.4, each with an "
             "optional ,interface=N")
    fields: dict[str, str] = {}
    for part in text[4:].split(","):
        name, sep, value = part.partition("=")
        if not sep or not value:
            raise ValueError(f"port {text!r}: {part!r} is not name=value ({forms})")
        if name not in _USB_KEYS:
            raise ValueError(f"port {text!r}: unknown field {name!r} ({forms})")
        if name in fields:
            raise ValueError(f"port {text!r}: {name} is given twice")
        if any(ord(c) < 33 or c == "\x7f" for c in value):
            raise ValueError(f"port {text!r}: {name} contains a space or a control character")
        fields[name] = value
    kinds = [k for k in ("serial", "vid", "location") if k in fields]
    if len(kinds) != 1 or ("vid" in fields) != ("pid" in fields):
        raise ValueError(f"port {text!r}: name the board one way ({forms})")
    interface = None
    if "interface" in fields:
        if not fields["interface"].isdigit() or int(fields["interface"]) > 255:
            raise ValueError(f"port {text!r}: interface must be a USB interface number (0-255)")
        interface = int(fields["interface"])
    for name in ("vid", "pid"):
        if name in fields and not _HEX4.match(fields[name]):
            raise ValueError(f"port {text!r}: {name} must be four hex digits (as lsusb shows it)")
    location = fields.get("location")
    if location is not None and not _LOCATION_GLOB.match(location):
        raise ValueError(f"port {text!r}: location must be a USB port path such as 1-1.4 (or a "
                         "glob over them, 1-1.*), as `fleet ports` shows it")
    return UsbPorts(text=text, serial=fields.get("serial"),
                    vid=fields["vid"].lower() if "vid" in fields else None,
                    pid=fields["pid"].lower() if "pid" in fields else None,
                    location=location, interface=interface)
