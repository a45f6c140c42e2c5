"""The serial ports of this host and their USB identity, read from sysfs; and which of them a
``usb:`` port form names.

How this works
--------------
:func:`scan` reads what pyserial's ``serial.tools.list_ports_linux`` reads, under a root
directory (``FLEET_HOST_ROOT``, default ``/``: tests and containers point it at a tree of their
own that holds ``sys/`` and ``dev/``). The candidates are the device nodes
``<root>/dev/ttyACM*``, ``ttyUSB*`` (and the other names pyserial globs for); for each,
``<root>/sys/class/tty/<name>/device`` leads to the USB interface directory (CDC ACM, subsystem
``usb``: the directory itself; a USB-serial bridge, subsystem ``usb-serial``: its parent), whose
parent is the USB device (``idVendor``, ``idProduct``, ``serial``, ``manufacturer``,
``product``); its directory name is the board's USB port path (``1-1.4``), the hub position.
``platform`` ttys (built-in UARTs without hardware) are left out, as pyserial does. The
``<root>/dev/serial/by-id`` and ``by-path`` links are matched to the nodes by their real paths.
The USB devices without a serial port (hubs, other gadgets) are read from
``<root>/sys/bus/usb/devices``, so that a plan naming one is told so.

A board is one USB device; a Nordic kit (:func:`fleet.nrf91.kit_of`) says which of its serial
ports, in interface order, is the AT port. :func:`select` applies the same rule to every form:
per board, the port ``interface=N`` names, else the kit's AT port, else the board's only serial
port; a board with several ports that is no known kit needs ``interface=``.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fleet.nrf91 import Kit, kit_of, unknown_nordic_kit
from fleet.porturl import UsbPorts
from fleet.usbid import LOCATION, UsbIdentity

__all__ = ["ROOT_ENV", "Host", "SerialPort", "UsbDevice", "host_root", "scan", "select"]

#: The environment variable naming the directory that holds ``sys/`` and ``dev/``.
ROOT_ENV = "FLEET_HOST_ROOT"
#: The device nodes pyserial lists on Linux.
_NODE_GLOBS = ("ttyS*", "ttyUSB*", "ttyXRUSB*", "ttyACM*", "ttyAMA*", "rfcomm*", "ttyAP*")


def host_root() -> Path:
    """``$FLEET_HOST_ROOT``, or ``/``."""
    return Path(os.environ.get(ROOT_ENV) or "/")


@dataclass(frozen=True, slots=True, kw_only=True)
class UsbDevice:
    """One USB device (a board, a hub, anything plugged in) at its port path."""

    location: str
    vid: str | None
    pid: str | None
    serial: str | None
    manufacturer: str | None
    product: str | None

    def describe(self) -> str:
        what = " ".join(p for p in (self.manufacturer, self.product) if p) or "USB device"
        ids = f"{self.vid}:{self.pid}" if self.vid and self.pid else "?"
        return f"{self.location} ({what}, {ids})"


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialPort:
    """One serial port of the host; ``board`` is None for a port that is not on USB."""

    device: str  #: the node, ``<root>/dev/ttyACM0``
    name: str  #: ``ttyACM0``
    subsystem: str | None  #: ``usb`` (CDC ACM), ``usb-serial`` (a bridge), ``pnp``...
    by_id: tuple[str, ...] = ()
    by_path: tuple[str, ...] = ()
    board: UsbDevice | None = None
    interface: int | None = None  #: ``bInterfaceNumber``
    interface_name: str | None = None  #: the interface's own string, when it has one
    kit: Kit | None = None
    #: for a known kit, whether this is its AT port; None when that is not known
    at_port: bool | None = None

    def identity(self) -> UsbIdentity | None:
        """What the manifest records of it (None off USB, or without a readable VID/PID)."""
        board = self.board
        if board is None or board.vid is None or board.pid is None:
            return None
        return UsbIdentity(vid=board.vid, pid=board.pid, serial=board.serial,
                           location=board.location, interface=self.interface,
                           kit=self.kit.name if self.kit else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """What :func:`scan` found."""

    root: Path
    ports: tuple[SerialPort, ...]
    devices: tuple[UsbDevice, ...]  #: every USB device (with a serial port or not)


def _read(*parts: str | Path) -> str | None:
    try:
        with open(os.path.join(*parts), encoding="utf-8", errors="replace") as file:
            return file.readline().strip() or None
    except OSError:
        return None


def _hex4(text: str | None) -> str | None:
    return text.lower() if text is not None and re.fullmatch(r"[0-9A-Fa-f]{4}", text) else None


def _number_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Digit runs compared as numbers: ``1-1.10`` after ``1-1.9``, ``ttyACM10`` after
    ``ttyACM2``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p)


def _usb_device(path: str) -> UsbDevice:
    return UsbDevice(location=os.path.basename(path), vid=_hex4(_read(path, "idVendor")),
                     pid=_hex4(_read(path, "idProduct")), serial=_read(path, "serial"),
                     manufacturer=_read(path, "manufacturer"), product=_read(path, "product"))


def _links(root: Path, kind: str) -> dict[str, list[str]]:
    """``{node: links to it}``: a link names the node it points to (``../../ttyACM0``), which
    is matched as written, not through to its final target (a tree's nodes may be links)."""
    out: dict[str, list[str]] = {}
    for link in sorted(glob.glob(str(root / "dev" / "serial" / kind / "*"))):
        try:
            target = os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))
        except OSError:
            continue
        out.setdefault(target, []).append(link)
    return out


def _port(root: Path, device: str, by_id: dict[str, list[str]],
          by_path: dict[str, list[str]]) -> SerialPort | None:
    name = os.path.basename(device)
    sys_device = root / "sys" / "class" / "tty" / name / "device"
    subsystem = interface_dir = None
    if sys_device.exists():
        device_path = os.path.realpath(sys_device)
        subsystem = os.path.basename(os.path.realpath(os.path.join(device_path, "subsystem")))
        if subsystem == "usb-serial":
            interface_dir = os.path.dirname(device_path)
        elif subsystem == "usb":
            interface_dir = device_path
    if subsystem == "platform":
        return None
    node = os.path.normpath(device)
    ids, paths = tuple(by_id.get(node, ())), tuple(by_path.get(node, ()))
    if interface_dir is None:
        return SerialPort(device=device, name=name, subsystem=subsystem, by_id=ids,
                          by_path=paths)
    number = _read(interface_dir, "bInterfaceNumber")
    interface = int(number, 16) if number and re.fullmatch(r"[0-9A-Fa-f]{1,2}", number) else None
    board = _usb_device(os.path.dirname(interface_dir))
    return SerialPort(device=device, name=name, subsystem=subsystem, board=board,
                      interface=interface, interface_name=_read(interface_dir, "interface"),
                      kit=kit_of(board.serial, board.product), by_id=ids, by_path=paths)


def _mark_at_ports(ports: Iterable[SerialPort]) -> list[SerialPort]:
    """Each known kit's AT port: the ``at_port``-th of its board's ports in interface order."""
    boards: dict[str, list[SerialPort]] = {}
    out = list(ports)
    for port in out:
        if port.board is not None and port.kit is not None:
            boards.setdefault(port.board.location, []).append(port)
    marked: dict[str, bool] = {}
    for members in boards.values():
        ordered = sorted(members, key=lambda p: (p.interface is None, p.interface or 0))
        for index, port in enumerate(ordered):
            assert port.kit is not None
            marked[port.device] = index == port.kit.at_port
    return [replace(p, at_port=marked[p.device]) if p.device in marked else p for p in out]


def _order(port: SerialPort) -> tuple[object, ...]:
    if port.board is None:
        return (1, (), 0, _number_key(port.name))
    return (0, _number_key(port.board.location), port.interface or 0, _number_key(port.name))


def scan(root: Path | None = None) -> Host:
    """The serial ports under ``root`` (default :func:`host_root`) and the USB devices, ports
    sorted by hub position, then interface (ports off USB last)."""
    root = Path(os.path.abspath(root if root is not None else host_root()))
    by_id, by_path = _links(root, "by-id"), _links(root, "by-path")
    nodes = sorted({node for pattern in _NODE_GLOBS
                    for node in glob.glob(str(root / "dev" / pattern))})
    found = [p for p in (_port(root, node, by_id, by_path) for node in nodes) if p is not None]
    devices = [_usb_device(os.path.realpath(path))
               for path in glob.glob(str(root / "sys" / "bus" / "usb" / "devices" / "*"))
               if LOCATION.match(os.path.basename(path))]
    seen = {d.location for d in devices}
    devices += [p.board for p in found if p.board is not None and p.board.location not in seen]
    unique = {d.location: d for d in devices}
    return Host(root=root, ports=tuple(sorted(_mark_at_ports(found), key=_order)),
                devices=tuple(sorted(unique.values(), key=lambda d: _number_key(d.location))))


def _boards(ports: Iterable[SerialPort]) -> dict[str, list[SerialPort]]:
    out: dict[str, list[SerialPort]] = {}
    for port in ports:
        if port.board is not None:
            out.setdefault(port.board.location, []).append(port)
    return out


def _pick(form: UsbPorts, members: Sequence[SerialPort]) -> SerialPort:
    """The port of one board that ``form`` names (see the module docstring)."""
    board = members[0].board
    assert board is not None
    numbers = ", ".join(str(p.interface) for p in members if p.interface is not None) or "none"
    if form.interface is not None:
        for port in members:
            if port.interface == form.interface:
                return port
        raise ValueError(f"port {form.text!r}: the board at {board.describe()} has no serial "
                         f"port on interface {form.interface} (its interfaces: {numbers})")
    kit = members[0].kit
    if kit is not None:
        at = [p for p in members if p.at_port]
        if at:
            return at[0]
        raise ValueError(f"port {form.text!r}: the {kit.name} at {board.describe()} shows "
                         f"{len(members)} serial port(s), not its AT port (number {kit.at_port}"
                         " in interface order): add ,interface=N")
    if len(members) == 1:
        return members[0]
    what = ("an unknown Nordic kit" if unknown_nordic_kit(board.serial)
            else "not a kit fleet knows")
    raise ValueError(f"port {form.text!r}: the board at {board.describe()} has {len(members)} "
                     f"serial ports (interfaces {numbers}) and is {what}, so which one carries "
                     "the AT host is not known: add ,interface=N (`fleet ports --probe` shows "
                     "which one answers)")


def select(form: UsbPorts, host: Host) -> list[SerialPort]:
    """The ports ``form`` names, one per board, in hub-position order. ValueError saying why
    when it names none, a serial number that two boards report, a position that holds no
    serial device, or a board whose port is not known without ``interface=``."""
    boards = _boards(host.ports)
    if form.serial is not None:
        matched = {loc: m for loc, m in boards.items() if m[0].board is not None
                   and m[0].board.serial == form.serial}
        if len(matched) > 1:
            where = ", ".join(m[0].board.describe() for m in matched.values() if m[0].board)
            raise ValueError(f"port {form.text!r}: USB serial number {form.serial} is reported "
                             f"by {len(matched)} boards ({where}): name them by location "
                             "(usb:location=...) instead")
        what = f"USB serial number {form.serial}"
    elif form.vid is not None:
        matched = {loc: m for loc, m in boards.items() if m[0].board is not None
                   and (m[0].board.vid, m[0].board.pid) == (form.vid, form.pid)}
        what = f"USB VID:PID {form.vid}:{form.pid}"
    else:
        assert form.location is not None
        pattern = form.location
        matched = {loc: m for loc, m in boards.items() if fnmatch.fnmatchcase(loc, pattern)}
        others = [d for d in host.devices
                  if fnmatch.fnmatchcase(d.location, pattern) and d.location not in boards]
        exact = not glob.has_magic(pattern)
        if others and (exact or not matched):
            where = ", ".join(d.describe() for d in others)
            raise ValueError(f"port {form.text!r}: location {pattern} holds a USB device without "
                             f"a serial port ({where}): not a board fleet can talk to")
        what = f"location {pattern}"
    if not matched:
        raise ValueError(f"port {form.text!r}: no serial port on this host has {what} "
                         "(`fleet ports` lists them)")
    return [_pick(form, members) for _, members in
            sorted(matched.items(), key=lambda item: _number_key(item[0]))]
