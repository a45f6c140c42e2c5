"""The ``fleet`` command line (also ``python -m fleet``). Sub-commands live in ``fleet.cmd``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fleet import __version__, exitcodes

__all__ = ["build_parser", "main"]

# Each module has register(subparsers); the order is the order of `fleet --help`.
_COMMANDS = (
    "fleet.cmd.run",
    "fleet.cmd.plan",
    "fleet.cmd.sim",
    "fleet.cmd.verify",
    "fleet.cmd.station_key",
    "fleet.cmd.ca",
    "fleet.cmd.export",
    "fleet.cmd.inspect",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fleet",
        description="Provision keys on many Nordic nRF91 modems at once.",
    )
    parser.add_argument("--version", action="version", version=f"fleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in _COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:  # `fleet ... | head`: the reader went away; that is not an error
        sys.stderr.close()
        return code if "code" in locals() else exitcodes.OK
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
