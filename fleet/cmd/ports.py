"""``fleet ports [--json] [--probe] [--plan]``: the serial ports of this host and their USB
identity (see docs/ports.md).

Lists every serial port :func:`fleet.usbports.scan` finds: its node and ``by-id``/``by-path``
links, VID:PID, manufacturer, product, serial number, interface, hub position, the Nordic kit and
whether it is the kit's AT port, and the other processes holding it open. ``--probe`` adds what
answers on each candidate port (:mod:`fleet.portprobe`: read-only commands only); a candidate is
a known kit's AT port, or any port of a board that is no known kit, or a port off USB.
``--plan`` prints a ``slots:`` section instead, one slot per board, ready to paste into a plan.
Plain text or JSON, never an interactive picker. Exit 0; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from fleet import exitcodes

if TYPE_CHECKING:  # the sysfs lookup is imported when the command runs
    from fleet.openers import Opener
    from fleet.portprobe import ProbeResult
    from fleet.usbports import SerialPort

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ports", help="the serial ports of this host and their USB identity",
        description="List the serial ports of this host with their USB identity (VID:PID, "
        "serial number, interface, hub position, Nordic kit and its AT port). The lookup "
        "reads sysfs under $FLEET_HOST_ROOT (default /).")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--probe", action="store_true",
                        help="send read-only commands (AT, AT+CGSN=1, AT+CGMR, AT+CGMM) to each "
                        "candidate port and show what answered")
    parser.add_argument("--plan", action="store_true",
                        help="print a slots: section for the boards found, ready to paste")
    parser.add_argument("--keys", default="tls, endorsement", metavar="NAMES",
                        help="with --plan: the key names each slot gets (default: %(default)s)")
    parser.add_argument("--by-location", action="store_true",
                        help="with --plan: name every board by its hub position "
                        "(usb:location=...), not by its USB serial number")
    parser.add_argument("--baudrate", type=int, default=115200,
                        help="with --probe (default: %(default)s)")
    parser.add_argument("--no-rtscts", action="store_true",
                        help="with --probe: no hardware flow control")
    parser.add_argument("--probe-timeout", type=float, default=3.0, metavar="S",
                        help="with --probe: seconds each AT waits (default: %(default)s)")
    parser.set_defaults(func=run)


def _candidates(ports: Iterable[SerialPort]) -> list[SerialPort]:
    """The ports worth probing: a kit's AT port, every port of another board, ports off USB."""
    return [p for p in ports if p.kit is None or p.at_port]


def _port_document(port: SerialPort, openers: Sequence[Opener], probe: ProbeResult | None,
                   candidate: bool) -> dict[str, Any]:
    board = port.board
    document: dict[str, Any] = {
        "device": port.device, "name": port.name, "subsystem": port.subsystem,
        "by_id": list(port.by_id), "by_path": list(port.by_path),
        "vid": board.vid if board else None, "pid": board.pid if board else None,
        "manufacturer": board.manufacturer if board else None,
        "product": board.product if board else None,
        "serial": board.serial if board else None,
        "location": board.location if board else None,
        "interface": port.interface, "interface_name": port.interface_name,
        "kit": port.kit.name if port.kit else None, "at_port": port.at_port,
        "candidate": candidate,
        "openers": [{"pid": o.pid, "command": o.command} for o in openers],
    }
    if probe is not None:
        document["probe"] = probe.to_dict()
    return document


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "board"


def _plan_lines(documents: list[dict[str, Any]], *, keys: str, by_location: bool,
                probed: bool) -> list[str]:
    """One slot per board: its USB serial number (a board keeps it wherever it is plugged in)
    or, without one or with ``by_location``, its hub position (a slot that stays when boards
    are swapped). A board whose AT port is not known, or (probed) did not answer, is a
    comment saying why."""
    boards: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        if doc["location"] is not None:
            boards.setdefault(doc["location"], []).append(doc)
    lines = ["slots:"]
    for location, members in boards.items():
        head = members[0]
        what = head["kit"] or " ".join(filter(None, (head["manufacturer"], head["product"]))) \
            or f"{head['vid']}:{head['pid']}"
        chosen = [d for d in members if d["at_port"]] if head["kit"] else members
        if probed:
            chosen = [d for d in chosen if d.get("probe", {}).get("answered")]
        if len(chosen) != 1:
            reason = ("no port answered AT" if probed and not chosen else
                      "several serial ports and no known kit: which is the AT port? run "
                      "`fleet ports --probe`")
            lines.append(f"  # {what} at {location}: {reason}")
            continue
        port = chosen[0]
        interface = "" if head["kit"] or len(members) == 1 else f",interface={port['interface']}"
        if head["serial"] and not by_location:
            name = _slug(f"{head['kit'] or 'board'}-{head['serial']}")
            form = f"usb:serial={head['serial']}{interface}"
        else:
            name, form = f"usb-{location}", f"usb:location={location}{interface}"
        imei = port.get("probe", {}).get("imei")
        lines.append(f"  - name: {name}  # {what} at {location}, {port['device']}"
                     + (f", IMEI {imei}" if imei else ""))
        lines.append(f"    port: \"{form}\"")
        lines.append(f"    keys: [{keys}]")
    if len(lines) == 1:
        lines.append("  []  # no USB serial board found")
    return lines


def _text_lines(documents: list[dict[str, Any]]) -> list[str]:
    width = max(16, *(len(doc["device"]) for doc in documents))
    lines = [f"{'DEVICE':<{width}} {'LOCATION':<10} {'IF':<3} {'VID:PID':<10} {'SERIAL':<16} "
             f"{'KIT':<12} {'AT':<3} PRODUCT"]
    for doc in documents:
        ids = f"{doc['vid']}:{doc['pid']}" if doc["vid"] else "-"
        at = {True: "yes", False: "-", None: "?"}[doc["at_port"]]
        product = " ".join(filter(None, (doc["manufacturer"], doc["product"]))) or "-"
        lines.append(f"{doc['device']:<{width}} {doc['location'] or '-':<10} "
                     f"{'-' if doc['interface'] is None else doc['interface']:<3} {ids:<10} "
                     f"{doc['serial'] or '-':<16} {doc['kit'] or '-':<12} {at:<3} {product}")
        lines += [f"    by-id:   {link}" for link in doc["by_id"]]
        lines += [f"    by-path: {link}" for link in doc["by_path"]]
        for opener in doc["openers"]:
            lines.append(f"    held open by pid {opener['pid']} ({opener['command']})")
        probe = doc.get("probe")
        if probe is not None and probe["answered"]:
            lines.append(f"    answers: {probe['interface']} (terminator {probe['terminator']}),"
                         f" IMEI {probe['imei']}, {probe['model']}, {probe['firmware']}")
        elif probe is not None:
            seen = f"{probe['interface']}: " if probe["interface"] else ""
            lines.append(f"    no AT answer: {seen}{probe['error']}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.probe_timeout <= 0 or args.baudrate <= 0:
        print("fleet ports: --probe-timeout and --baudrate must be positive", file=sys.stderr)
        return exitcodes.USAGE
    from fleet.openers import scan as scan_openers
    from fleet.usbports import scan

    host = scan()
    candidates = _candidates(host.ports)
    probes: dict[str, ProbeResult] = {}
    if args.probe:
        import anyio

        from fleet.fdio import raise_fd_limit
        from fleet.logs import configure_logging
        from fleet.portprobe import probe_ports
        from fleet.probe import TERMINATOR_WAIT_S

        configure_logging(level="error")  # what matters is in the listing
        raise_fd_limit()
        if candidates:  # the answer comes at the end, when the slowest port has given up
            print(f"fleet ports: probing {len(candidates)} port(s) at once with read-only "
                  "commands; a port where nothing answers gives up after about "
                  f"{args.probe_timeout + 2 * TERMINATOR_WAIT_S:.0f} s", file=sys.stderr,
                  flush=True)
        probes = anyio.run(lambda: probe_ports(
            [p.device for p in candidates], baudrate=args.baudrate, rtscts=not args.no_rtscts,
            probe_timeout=args.probe_timeout), backend="asyncio")
    openers = scan_openers([p.device for p in host.ports])
    wanted = {p.device for p in candidates}
    documents = [_port_document(p, openers[p.device], probes.get(p.device), p.device in wanted)
                 for p in host.ports]
    if args.plan:
        text = "\n".join(_plan_lines(documents, keys=args.keys, by_location=args.by_location,
                                     probed=args.probe))
        if args.json:
            print(json.dumps({"root": str(host.root), "plan": text + "\n", "ports": documents},
                             indent=2))
        else:
            print(text)
        return exitcodes.OK
    if args.json:
        print(json.dumps({"root": str(host.root), "ports": documents}, indent=2))
    elif not documents:
        print(f"no serial ports found (under {host.root})")
    else:
        print("\n".join(_text_lines(documents)))
    return exitcodes.OK
