"""Logging setup: structlog to stderr, a human console on a TTY, JSON lines otherwise.

While the live progress table is on screen, console log lines are printed through its console so
they scroll above the table instead of tearing it (see :func:`set_console`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "set_console"]

_console: Any = None  # a rich Console while the live table is shown


def set_console(console: Any) -> None:
    """Route console log lines through ``console`` (a ``rich.console.Console``), or back to
    stderr with ``None``."""
    global _console
    _console = console


class _StderrLogger:
    """Writes each rendered line to the current sys.stderr (or the live table's console)."""

    def msg(self, message: str) -> None:
        if _console is not None:
            _console.print(message, markup=False, highlight=False, soft_wrap=True)
            return
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(*, level: str = "info", json_lines: bool | None = None) -> None:
    """Configure structlog for the process. ``json_lines=None`` picks JSON unless stderr is a
    TTY."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: Any
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *args: _StderrLogger(),
        cache_logger_on_first_use=True,
    )
