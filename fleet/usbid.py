"""The USB identity of a serial port: which board it belongs to and where that board sits.

A plan slot that came from a ``usb:`` port form carries one (:class:`fleet.plan.Slot`), the
journal keeps it with the slot's device row, and the manifest records it as the device's
``usb`` object (docs/manifest.md). Pure data: the sysfs lookup that finds it is
:mod:`fleet.usbports`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.jsontype import json_type

__all__ = ["LOCATION", "USB_FIELDS", "UsbIdentity", "usb_identity_problem"]

#: The fields of a manifest's ``usb`` object, with their JSON types and whether null is allowed.
USB_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("vid", "string", False), ("pid", "string", False), ("serial", "string", True),
    ("location", "string", False), ("interface", "integer", True), ("kit", "string", True),
)
_HEX4 = re.compile(r"[0-9a-f]{4}\Z")
#: A USB port path as the kernel names it: bus, then the hub ports (``1-1.4``, ``3-2``).
LOCATION = re.compile(r"[0-9]+-[0-9]+(?:\.[0-9]+)*\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class UsbIdentity:
    """``vid``/``pid`` as four lower-case hex digits; ``serial`` None for a board without one;
    ``location`` the board's USB port path (``1-1.4``: bus 1, hub port 1, its port 4);
    ``interface`` the port's USB interface number (None when the port has none, as a
    single-port bridge may not); ``kit`` the Nordic kit the serial number names, or None."""

    vid: str
    pid: str
    serial: str | None
    location: str
    interface: int | None
    kit: str | None = None

    def __post_init__(self) -> None:
        problem = usb_identity_problem(self.to_dict())
        if problem is not None:
            raise ValueError(problem)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's and the journal's ``usb`` object."""
        return {"vid": self.vid, "pid": self.pid, "serial": self.serial,
                "location": self.location, "interface": self.interface, "kit": self.kit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsbIdentity:
        """The identity :meth:`to_dict` wrote; ValueError for anything else."""
        problem = usb_identity_problem(data)
        if problem is not None:
            raise ValueError(problem)
        return cls(**{name: data[name] for name, _, _ in USB_FIELDS})


def usb_identity_problem(data: Any) -> str | None:
    """What is wrong with a ``usb`` object (missing or mistyped fields, a VID that is not four
    hex digits, a location that is no USB port path), or None."""
    if not isinstance(data, Mapping):
        return f"expected an object, got {json_type(data)}"
    for name, kind, nullable in USB_FIELDS:
        if name not in data:
            return f"missing field {name!r}"
        actual = json_type(data[name])
        if actual != kind and not (nullable and actual == "null"):
            return f"{name}: expected {kind}{' or null' if nullable else ''}, got {actual}"
    for name in ("vid", "pid"):
        if not _HEX4.match(data[name]):
            return f"{name}: {data[name]!r} is not four lower-case hex digits"
    if not LOCATION.match(data["location"]):
        return f"location: {data['location']!r} is not a USB port path such as 1-1.4"
    if data["interface"] is not None and not 0 <= data["interface"] <= 255:
        return f"interface: {data['interface']} is not a USB interface number (0-255)"
    return None
