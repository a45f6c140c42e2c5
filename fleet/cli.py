"""The ``fleet`` command line (also ``python -m fleet``). Sub-commands live in ``fleet.cmd``."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from fleet import __version__, exitcodes, interrupts

__all__ = ["build_parser", "main"]

# Sub-command name -> module with register(subparsers); the order is the order of --help.
# Only the module of the command being run is imported (start-up time is per invocation, and
# Ansible or a shell loop may invoke fleet many times).
_COMMANDS = {
    "run": "fleet.cmd.run",
    "plan": "fleet.cmd.plan",
    "sim": "fleet.cmd.sim",
    "verify": "fleet.cmd.verify",
    "station-key": "fleet.cmd.station_key",
    "ca": "fleet.cmd.ca",
    "export": "fleet.cmd.export",
    "inspect": "fleet.cmd.inspect",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


class _Stdout:
    """``sys.stdout`` for a reader that may go away (`fleet run --json | head -1`): from the
    first write that finds the pipe closed on, output is dropped (the descriptor then points at
    /dev/null, so no later flush fails either) and the command goes on to its own exit status.
    Everything else is the real stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        except (OSError, ValueError):  # a stream without a descriptor: nothing to redirect
            pass
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _import_structlog_without_rich() -> None:
    """Import structlog with rich hidden from it.

    structlog imports rich (and pygments) at import time when rich is installed, to offer rich
    tracebacks in its development console renderer, which fleet does not use. That costs about
    0.1 s at every start of a command that may be run hundreds of times a shift (a re-run with
    nothing to do takes about a second). rich stays importable for fleet's own progress table.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` naming a sub-command, only that sub-command is registered."""
    parser = _Parser(
        prog="fleet",
        description="Provision keys on many Nordic nRF91 modems at once.",
    )
    parser.add_argument("--version", action="version", version=f"fleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    wanted = [argv[0]] if argv and argv[0] in _COMMANDS else list(_COMMANDS)
    for name in wanted:
        importlib.import_module(_COMMANDS[name]).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, *, gc_held: bool = False) -> int:
    """Run one ``fleet`` command; ``gc_held``: the caller turned the cycle collector off for
    the start-up (:func:`entry`), and it comes back, tuned, once the command's modules are in."""
    if argv is None:
        argv = sys.argv[1:]
    if interrupts.catching() and (not argv or argv[0] != "run"):
        try:
            interrupts.release()  # only `fleet run` reports a signal in its own way
        except KeyboardInterrupt:  # a Ctrl-C that came while fleet started
            return exitcodes.INTERRUPTED
    _import_structlog_without_rich()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if gc_held:
        _collect_less()
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    finally:
        sys.stdout = stdout
    # Everything is written and closed by now. Freezing the heap spares the interpreter's exit a
    # garbage-collection pass over every object a run made (about 0.2 s after a large run).
    gc.freeze()
    return code


def _collect_less() -> None:
    """Start-up is over: move what it made out of the collector's sight and collect less often.

    Measured at 256 slots (``scripts/bench.py``): with the default thresholds the collector ran
    about 200 times during a run and took about 0.2 s of the loop's time, rescanning the same
    long-lived objects (modules, classes, plan schemas, one session per slot); the garbage a
    run makes is nearly all freed by reference counting anyway. After ``gc.freeze()`` those
    objects are never scanned again, and a young generation of 10,000 objects (700 by default)
    makes the collections rare. Reference cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    gc.enable()


def entry() -> None:
    """The ``fleet`` command (and ``python -m fleet``): :func:`main`, then a fast exit.

    The cycle collector is off while the command's modules are imported (tens of thousands of
    objects that live as long as the process, so collecting among them is wasted time) and
    comes back, tuned, before the command runs (:func:`_collect_less`).

    Every file fleet writes (journal, manifest, state) is closed by the time ``main`` returns;
    what is left is the interpreter's teardown of every module and object, tens of
    milliseconds that an operator or a playbook waits for at every invocation. So the output
    streams are flushed and the process ends with ``os._exit``.

    SIGINT and SIGTERM are recorded from the first line on, so that `fleet run` reports one that
    lands while it starts (:mod:`fleet.interrupts`); the other commands get the default
    handlers back in :func:`main`."""
    interrupts.catch()
    gc.disable()
    code = main(gc_held=True)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # the reader went away, or the stream was closed
        pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
