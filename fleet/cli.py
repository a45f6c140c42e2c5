"""The ``fleet`` command line (also ``python -m fleet``). Sub-commands live in ``fleet.cmd``."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
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
    "ports": "fleet.cmd.ports",
    "export": "fleet.cmd.export",
    "audit": "fleet.cmd.audit",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``fleet`` command; its exit status."""
    if argv is None:
        argv = sys.argv[1:]
    if interrupts.catching() and (not argv or argv[0] != "run"):
        try:
            interrupts.release()  # only `fleet run` reports a signal in its own way
        except KeyboardInterrupt:  # a Ctrl-C that came while fleet started
            return exitcodes.INTERRUPTED
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    finally:
        sys.stdout = stdout
    return code


def entry() -> None:
    """The ``fleet`` command (and ``python -m fleet``): :func:`main`, and its status.

    SIGINT and SIGTERM are recorded from the first line on, so that `fleet run` reports one that
    lands while it starts (:mod:`fleet.interrupts`); the other commands get the default
    handlers back in :func:`main`."""
    interrupts.catch()
    code = main()
    # The command is over and `code` says how it went. The interpreter's exit puts the default
    # action back for signals handled in Python, so a SIGTERM landing now would end the
    # process as killed instead; an ignored signal stays ignored through the exit.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    _Stdout(sys.stdout).flush()  # a reader that went away leaves the exit status as it is
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
