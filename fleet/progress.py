"""The live per-slot table shown on a TTY during `fleet run` (rich).

One row per slot: slot, port, IMEI, current step, keys done, outcome. With more slots than fit on
the screen, finished slots are folded into the summary line so the ones still working stay
visible. The table fits the terminal's width (80 columns too): a long port is shown by the part
that tells the slots apart (:func:`port_labels`: the tail, unless every port ends the same),
and the step is cut to what is left.
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

    from fleet.run import SlotStatus

__all__ = ["ProgressTable", "live_progress", "port_labels"]

_STYLE = {"done": "green", "failed": "bold red", "interrupted": "yellow"}
#: Columns of fixed width (an IMEI, "keys" as 2/2, "interrupted") and what the table's
#: separators and padding take.
_WIDTHS = {"IMEI": 15, "keys": 4, "outcome": 11}
_SEPARATORS = 15


def _common_tail(texts: list[str]) -> int:
    """How many characters every one of ``texts`` ends with alike."""
    shortest = min(len(t) for t in texts)
    n = 0
    while n < shortest and len({t[len(t) - 1 - n] for t in texts}) == 1:
        n += 1
    return n


def port_labels(ports: list[str], width: int) -> dict[str, str]:
    """A label of at most ``width`` characters for each port: the port itself when it fits,
    else ``…`` and the part of it that differs between the ports (its tail, unless the ports
    share a long tail: then up to a little past where they start to agree)."""
    labels: dict[str, str] = {}
    suffix = _common_tail(ports) if len(ports) > 1 else 0
    for port in ports:
        if len(port) <= width:
            labels[port] = port
            continue
        end = len(port)
        if suffix > width // 2:  # the tail is the same for every slot: show what differs
            end = min(end, len(port) - suffix + width // 4)
        start = max(0, end - (width - 1 - (end < len(port))))
        labels[port] = "…" + port[start:end] + ("…" if end < len(port) else "")
    return labels


class ProgressTable:
    """Holds the latest :class:`SlotStatus` of every slot and renders them."""

    def __init__(self, statuses: list[SlotStatus], *, title: str) -> None:
        self.statuses = {s.slot: s for s in statuses}
        self.title = title
        self.started = time.monotonic()

    def update(self, status: SlotStatus) -> None:
        self.statuses[status.slot] = status

    def render(self, height: int | None = None, width: int | None = None) -> Group:
        """The table for a terminal of ``height`` lines and ``width`` columns (default: this
        terminal's size)."""
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
        size = shutil.get_terminal_size((100, 40))
        room = max(5, (height or size.lines) - 6)
        shown = rows if len(rows) <= room else [r for r in rows if not r.outcome][:room]
        widths = {**_WIDTHS, "slot": min(12, max(4, *(len(r.slot) for r in rows)))}
        free = max(24, (width or size.columns) - sum(widths.values()) - _SEPARATORS)
        widths["port"] = max(12, min(40, free * 9 // 20))
        widths["step"] = min(48, free - widths["port"])
        labels = port_labels([r.port for r in rows], widths["port"])
        table = Table(show_edge=False, pad_edge=False, expand=False)
        for column in ("slot", "port", "IMEI", "step", "keys", "outcome"):
            table.add_column(column, no_wrap=True, overflow="ellipsis",
                             min_width=None if column in ("port", "step") else widths[column],
                             max_width=widths[column])
        for row in shown:
            table.add_row(row.slot, labels[row.port], row.imei or "-", row.step,
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
