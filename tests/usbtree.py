"""Fake host trees for ``fleet ports`` and the ``usb:`` port forms: a directory that holds
``sys/`` and ``dev/`` laid out as Linux lays them out for USB serial devices, whose device nodes
are symlinks to real ptys (simulator modems), for ``FLEET_HOST_ROOT``.

What it writes for a board at USB port path ``1-1.4`` with a CDC ACM interface 0::

    sys/devices/usb1/1-1.4/{idVendor,idProduct,serial,manufacturer,product,bNumInterfaces}
    sys/devices/usb1/1-1.4/1-1.4:1.0/{bInterfaceNumber,interface,subsystem -> bus/usb}
    sys/devices/usb1/1-1.4/1-1.4:1.0/tty/ttyACM0/
    sys/class/tty/ttyACM0 -> ../../devices/usb1/1-1.4/1-1.4:1.0/tty/ttyACM0
    sys/class/tty/ttyACM0/device -> ../../../1-1.4:1.0
    sys/bus/usb/devices/1-1.4 -> ../../../devices/usb1/1-1.4
    dev/ttyACM0 -> <the pty>  (a plain file for an interface nothing serves)
    dev/serial/by-id/usb-<manufacturer>_<product>_<serial>-if00 -> ../../ttyACM0  (with a serial)
    dev/serial/by-path/pci-0000:00:14.0-usb-0:1.4:1.0 -> ../../ttyACM0  (bus 2: 00:15.0...)

A USB-serial bridge (``bridge=True``) has ``ttyUSB<n>`` under its interface directory, with
``subsystem -> bus/usb-serial`` there, as the kernel's usb-serial drivers have it. Plain Python,
no fleet imports: ``scripts/usbdemo.py`` uses it too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DK_SERIAL_PREFIX", "Board", "UsbTree"]

#: An nRF9160 DK's J-Link serial numbers start so.
DK_SERIAL_PREFIX = "0009600"


@dataclass
class Board:
    """What :meth:`UsbTree.add_board` made: its nodes in interface order."""

    location: str
    serial: str | None
    nodes: list[str] = field(default_factory=list)  #: ``ttyACM3``...


def _write(path: Path, text: str | None) -> None:
    if text is not None:
        path.write_text(text + "\n")


def _link(link: Path, target: Path | str) -> None:
    """A relative symlink for a target inside the tree, an absolute one for a pty."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    text = str(target)
    if isinstance(target, Path):
        text = os.path.relpath(target, link.parent)
    os.symlink(text, link)


class UsbTree:
    """A fake ``sys/`` and ``dev/`` under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.dev = root / "dev"
        for part in ("class/tty", "bus/usb/devices", "bus/usb-serial", "devices"):
            (self.sys / part).mkdir(parents=True, exist_ok=True)
        self.dev.mkdir(parents=True, exist_ok=True)
        self._next = {"ttyACM": 0, "ttyUSB": 0}
        self.boards: dict[str, Board] = {}

    @classmethod
    def open(cls, root: Path) -> UsbTree:
        """The tree an earlier :class:`UsbTree` wrote under ``root``, to change it."""
        tree = cls(root)
        for link in sorted((tree.sys / "bus" / "usb" / "devices").iterdir()):
            device = link.resolve()
            serial = device / "serial"
            board = Board(location=link.name,
                          serial=serial.read_text().strip() if serial.exists() else None)
            for interface in sorted(device.glob(f"{link.name}:1.*")):
                board.nodes += sorted(p.name for p in interface.glob("tty/*"))
                board.nodes += sorted(p.name for p in interface.glob("ttyUSB*"))
            if board.nodes:
                tree.boards[link.name] = board
            for node in board.nodes:
                prefix = node.rstrip("0123456789")
                tree._next[prefix] = max(tree._next[prefix], int(node[len(prefix):]) + 1)
        return tree

    def _device_dir(self, location: str) -> Path:
        return self.sys / "devices" / f"usb{location.split('-')[0]}" / location

    def add_device(self, location: str, *, vid: str, pid: str, product: str | None = None,
                   manufacturer: str | None = None, serial: str | None = None) -> Path:
        """A USB device without serial ports (a hub, a keyboard)."""
        path = self._device_dir(location)
        path.mkdir(parents=True, exist_ok=True)
        for name, value in (("idVendor", vid), ("idProduct", pid), ("product", product),
                            ("manufacturer", manufacturer), ("serial", serial)):
            _write(path / name, value)
        _link(self.sys / "bus" / "usb" / "devices" / location, path)
        return path

    def add_board(self, location: str, *, targets: Sequence[str | None], vid: str = "1366",
                  pid: str = "1055", serial: str | None = None,
                  manufacturer: str | None = "SEGGER", product: str | None = "J-Link",
                  bridge: bool = False, interface_names: Sequence[str | None] = ()) -> Board:
        """A board with one serial port per entry of ``targets`` (interfaces 0, 1, ... in
        order; each node a symlink to its pty, or a plain file for None)."""
        path = self.add_device(location, vid=vid, pid=pid, product=product,
                               manufacturer=manufacturer, serial=serial)
        _write(path / "bNumInterfaces", f"{len(targets):2d}")
        board = Board(location=location, serial=serial)
        bus, bus_port = location.split("-", 1)
        controller = f"pci-0000:00:{0x13 + int(bus):02x}.0"  # one USB controller per bus
        for number, target in enumerate(targets):
            interface = path / f"{location}:1.{number}"
            interface.mkdir(exist_ok=True)
            _write(interface / "bInterfaceNumber", f"{number:02x}")
            names = list(interface_names)
            _write(interface / "interface", names[number] if number < len(names) else None)
            prefix = "ttyUSB" if bridge else "ttyACM"
            node = f"{prefix}{self._next[prefix]}"
            self._next[prefix] += 1
            if bridge:
                serial_dir = interface / node
                serial_dir.mkdir()
                _link(serial_dir / "subsystem", self.sys / "bus" / "usb-serial")
                _link(interface / "subsystem", self.sys / "bus" / "usb")
                class_dir = serial_dir / "tty" / node
                class_dir.mkdir(parents=True)
                _link(class_dir / "device", serial_dir)
            else:
                _link(interface / "subsystem", self.sys / "bus" / "usb")
                class_dir = interface / "tty" / node
                class_dir.mkdir(parents=True)
                _link(class_dir / "device", interface)
            _link(self.sys / "class" / "tty" / node, class_dir)
            self._node(node, target)
            if serial is not None:  # boards without one would share one by-id name
                label = "_".join(p.replace(" ", "_") for p in (manufacturer, product, serial)
                                 if p)
                _link(self.dev / "serial" / "by-id" / f"usb-{label}-if{number:02d}",
                      self.dev / node)
            _link(self.dev / "serial" / "by-path" /
                  f"{controller}-usb-0:{bus_port}:1.{number}", self.dev / node)
            board.nodes.append(node)
        self.boards[location] = board
        return board

    def add_platform_tty(self, name: str = "ttyS0") -> None:
        """A built-in UART without hardware, which listings leave out."""
        platform = self.sys / "devices" / "platform" / "serial8250"
        platform.mkdir(parents=True, exist_ok=True)
        (self.sys / "bus" / "platform").mkdir(exist_ok=True)
        _link(platform / "subsystem", self.sys / "bus" / "platform")
        class_dir = platform / "tty" / name
        class_dir.mkdir(parents=True, exist_ok=True)
        _link(class_dir / "device", platform)
        _link(self.sys / "class" / "tty" / name, class_dir)
        self._node(name, None)

    def _node(self, node: str, target: str | None) -> None:
        path = self.dev / node
        if path.is_symlink() or path.exists():
            path.unlink()
        if target is None:
            path.write_text("")
        else:
            _link(path, target)

    def remove_board(self, location: str) -> None:
        """Unplug the board at ``location``: its sysfs entries and nodes go."""
        board = self.boards.pop(location)
        for node in board.nodes:
            for path in (self.dev / node, self.sys / "class" / "tty" / node):
                path.unlink()
        for kind in ("by-id", "by-path"):
            for link in (self.dev / "serial" / kind).iterdir():
                if not link.exists():
                    link.unlink()
        (self.sys / "bus" / "usb" / "devices" / location).unlink()
        shutil.rmtree(self._device_dir(location))

    def swap(self, location: str, *, serial: str | None, targets: Sequence[str | None],
             **board: object) -> Board:
        """Another board in the same hub position."""
        self.remove_board(location)
        return self.add_board(location, serial=serial, targets=targets, **board)  # type: ignore[arg-type]
