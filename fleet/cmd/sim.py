"""``fleet sim``: serve N simulated nRF91 modems on pseudo-terminals (and optionally TCP).

Prints exactly one line on stdout once every port is ready, then runs until SIGINT or SIGTERM,
writes the state one last time and exits 0. Usage errors (bad option, unreadable state file, a TCP
port range that cannot be bound) exit 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import anyio

from fleet import exitcodes
from fleet.at.line import Interface, Terminator
from fleet.faults import FAULT_NAMES, parse_fault_spec
from fleet.nrf91 import FUNCTION_MODES, MODELS, PROFILES
from fleet.sim import DEFAULT_CAPACITY, SimConfig
from fleet.sim.config import DEFAULT_PROMPT, DEFAULT_SHELL_BUFFER
from fleet.sim.server import Ready, run_server

__all__ = ["parse_listen", "register", "run"]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; raises ValueError."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"--listen {text!r}: port must be 1-65535")
    return host.strip("[]"), port


def _fault(text: str) -> object:
    try:
        return parse_fault_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="serve simulated nRF91 modems on pseudo-terminals",
        description="Serve N simulated nRF91 modems on pseudo-terminals linked as DIR/modem0 ... "
        "(and with --listen also on TCP, modem i on PORT+i). Prints one line when every port is "
        "ready; stops cleanly on SIGINT/SIGTERM.",
    )
    parser.add_argument("--count", type=int, required=True, metavar="N", help="number of modems")
    parser.add_argument("--dir", type=Path, required=True, metavar="DIR",
                        help="directory for the links modem0 .. modem{N-1}")
    parser.add_argument("--state", type=Path, metavar="FILE",
                        help="JSON state file: read at start, written after every change")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast",
                        help="timing: fast (no delays, default) or realistic")
    parser.add_argument("--fault", type=_fault, action="append", default=[],
                        metavar="NAME:PROB[:MAX][@I,J]",
                        help=f"inject a fault (repeatable): {', '.join(FAULT_NAMES)}; PROB per "
                        "chance, :MAX at most that many times per modem, @I,J only those modem "
                        "indexes (README: Simulator)")
    parser.add_argument("--log", type=Path, metavar="FILE",
                        help="append one JSON line per received command (and per fault)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="also serve modem i on TCP HOST:PORT+i (socket:// ports)")
    parser.add_argument("--model", choices=sorted(MODELS), default="nrf9160",
                        help="modem model of new modems (default nrf9160)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed for IMEIs, UUIDs, identity keys and faults (default 0)")
    parser.add_argument("--function-mode", type=int, default=0, metavar="N",
                        choices=FUNCTION_MODES,
                        help="initial function mode of new modems (default 0)")
    parser.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, metavar="N",
                        help=f"credentials each modem can hold (default {DEFAULT_CAPACITY})")
    line = parser.add_argument_group(
        "the line", "what reads the host's bytes (docs/simulator.md: Interfaces)")
    line.add_argument("--interface", choices=list(Interface), default="at",
                      help="at: an AT host (default); shell: a Zephyr shell with the at command")
    line.add_argument("--terminator", choices=list(Terminator), default="cr",
                      help="the AT host's build-time line terminator (default cr)")
    line.add_argument("--prompt", default=DEFAULT_PROMPT, metavar="TEXT",
                      help=f"shell prompt (default {DEFAULT_PROMPT!r})")
    line.add_argument("--shell-wildcards", choices=("on", "off"), default="on",
                      help="CONFIG_SHELL_WILDCARD (default on: read commands such as AT+CFUN? "
                      "do not reach the at command)")
    line.add_argument("--shell-buffer", type=int, default=DEFAULT_SHELL_BUFFER, metavar="N",
                      help=f"CONFIG_SHELL_CMD_BUFF_SIZE (default {DEFAULT_SHELL_BUFFER})")
    line.add_argument("--unescape-lf", action="store_true",
                      help="CONFIG_AT_SHELL_UNESCAPE_LF: \\n in AT%%CMNG=0 becomes CR LF")
    line.add_argument("--at-cmd-mode", choices=("on", "off"), default="off",
                      help="CONFIG_AT_SHELL_CMD_MODE: `at at_cmd_mode start` (default off)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        listen = parse_listen(args.listen) if args.listen else None
        config = SimConfig(count=args.count, seed=args.seed, model=args.model,
                           profile=args.profile, faults=tuple(args.fault),
                           state_path=args.state, log_path=args.log,
                           function_mode=args.function_mode, capacity=args.capacity,
                           interface=Interface(args.interface),
                           terminator=Terminator(args.terminator),
                           prompt=args.prompt, shell_wildcards=args.shell_wildcards == "on",
                           shell_buffer=args.shell_buffer, unescape_lf=args.unescape_lf,
                           at_cmd_mode=args.at_cmd_mode == "on")
        if listen is not None and listen[1] + config.count - 1 > 65535:
            raise ValueError(f"--listen: ports {listen[1]}..{listen[1] + config.count - 1} "
                             "run past 65535")
    except ValueError as exc:
        print(f"fleet sim: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    ready: list[Ready] = []
    try:
        anyio.run(_main, config, args.dir, listen, ready)
    except (ValueError, OSError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(e, ValueError | OSError) for e in leaves):
            raise
        print(f"fleet sim: error: {leaves[0]}", file=sys.stderr)
        # before the ready line: a usage problem (state file, port in use); after: a failure
        return exitcodes.FAILED if ready else exitcodes.USAGE
    return exitcodes.OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def _main(config: SimConfig, directory: Path, listen: tuple[str, int] | None,
                ready: list[Ready]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            ready.append(await tg.start(run_server, config, directory, listen))
            print(ready[0].describe(), flush=True)
            async for _ in signals:
                tg.cancel_scope.cancel()
                break
