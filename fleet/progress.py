"""The live per-slot table shown on a TTY during `fleet run` (rich).

One row per slot: slot, port, IMEI, current step, keys done, outcome. With more slots than fit on
the screen, finished slots are folded into the summary line so the ones still working stay
visible.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fleet.logs import set_console

if TYPE_CHECKING:
    from rich.console import Group
from fleet.provision.flow import SlotStatus

__all__ = ["ProgressTable", "live_progress"]

_STYLE = {"done": "green", "failed": "bold red", "interrupted": "yellow"}


class ProgressTable:
    """Holds the latest :class:`SlotStatus` of every slot and renders them."""

    def __init__(self, statuses: list[SlotStatus], *, title: str) -> None:
        self.statuses = {s.slot: s for s in statuses}
        self.title = title
        self.started = time.monotonic()

    def update(self, status: SlotStatus) -> None:
        self.statuses[status.slot] = status

    def render(self, height: int | None = None) -> Group:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        rows = list(self.statuses.values())
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.outcome or "working"] = counts.get(row.outcome or "working", 0) + 1
        elapsed = time.monotonic() - self.started
        summary = Text(f"{self.title}  {elapsed:5.1f}s  " + "  ".join(
            f"{name}: {count}" for name, count in sorted(counts.items())))
        room = max(5, (height or shutil.get_terminal_size((100, 40)).lines) - 6)
        shown = rows if len(rows) <= room else [r for r in rows if not r.outcome][:room]
        table = Table(show_edge=False, pad_edge=False, expand=False)
        for column in ("slot", "port", "IMEI", "step", "keys", "outcome"):
            table.add_column(column, no_wrap=True, overflow="ellipsis",
                             max_width=48 if column == "step" else 40)
        for row in shown:
            table.add_row(row.slot, row.port, row.imei or "-", row.step,
                          f"{row.keys_done}/{row.keys_total}",
                          Text(row.outcome or "…", style=_STYLE.get(row.outcome, "")))
        hidden = len(rows) - len(shown)
        parts: list[Any] = [summary, table]
        if hidden:
            parts.append(Text(f"({hidden} finished slots not shown)"))
        return Group(*parts)


@contextlib.contextmanager
def live_progress(table: ProgressTable | None) -> Iterator[None]:
    """Show ``table`` live on stdout while the block runs (nothing when ``table`` is None)."""
    if table is None:
        yield
        return
    from rich.console import Console
    from rich.live import Live

    console = Console(file=sys.stdout)
    with Live(get_renderable=table.render, console=console, refresh_per_second=4,
              transient=False, redirect_stderr=False, redirect_stdout=False):
        set_console(console)
        try:
            yield
        finally:
            set_console(None)
