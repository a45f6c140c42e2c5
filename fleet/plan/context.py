"""What the plan checks share: the walked document, the error report, the plan's directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import PlanError
from fleet.plan.schema import dotted
from fleet.plan.source import Path_, Source

if TYPE_CHECKING:
    from fleet.usbports import Host

__all__ = ["Context", "Report"]


class Report:
    """Collects ``(line, reason)`` pairs and raises them all as one PlanError."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.items: list[tuple[int, str]] = []

    def __call__(self, line: int, reason: str) -> None:
        self.items.append((line, reason))

    def raise_if_any(self) -> None:
        """Raise PlanError with every ``file:line: reason`` (by line, duplicates dropped)."""
        if self.items:
            unique = dict.fromkeys(sorted(self.items, key=lambda item: item[0]))
            raise PlanError([f"{self.label}:{line}: {reason}" for line, reason in unique])


class Context:
    """One plan being checked."""

    def __init__(self, src: Source, report: Report, base: Path, expand_globs: bool) -> None:
        self.src = src
        self.report = report
        self.base = base  #: the plan file's directory (absolute)
        self.expand_globs = expand_globs
        self.data: dict[str, Any] = src.data
        self.users: dict[str, list[str]] = {}  #: key name -> names of the slots that list it
        self._usb_host: Host | None = None

    def usb_host(self) -> Host:
        """This host's serial ports, read from sysfs once per plan (only a plan with a usb:
        form asks, and only then is the lookup imported)."""
        if self._usb_host is None:
            from fleet.usbports import scan

            self._usb_host = scan()
        return self._usb_host

    def at(self, path: Path_, reason: str, *, key: bool = False) -> None:
        """Report ``reason`` about ``path`` at its line (the key's line when ``key``)."""
        self.report(self.src.line(path, key=key), f"{dotted(path)}: {reason}")

    def section(self, name: str) -> Any:
        """The raw top-level value ``name`` (None when absent)."""
        return self.data.get(name)

    def path(self, text: str | Path) -> Path:
        """A path from the plan, made absolute against the plan's directory."""
        return Path(os.path.normpath(self.base / Path(text).expanduser()))
