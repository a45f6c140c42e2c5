"""A fake host tree for trying `fleet ports` and usb: slots without hardware (docs/ports.md).

``build``: the first KITS modems of a running `fleet sim` become the AT ports of nRF9160 DKs (3
CDC ACM interfaces each) at USB positions 1-1.1, 1-1.2, ...; the next BOARDS modems production
boards on USB-serial bridges (CP2102N) on a second hub, 2-1.1, 2-1.2, ... (every other one
without a serial number). ``swap``: another board in a position (its port points at another
modem). Point fleet at the tree with FLEET_HOST_ROOT=ROOT.

    python scripts/usbdemo.py build --root host --kits 2 --boards 2 modems/modem0 ...
    python scripts/usbdemo.py swap --root host --location 2-1.1 --serial NEW1 modems/modem4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.usbtree import DK_SERIAL_PREFIX, UsbTree

BRIDGE = {"vid": "10c4", "pid": "ea60", "manufacturer": "Silicon Labs", "product": "CP2102N",
          "bridge": True}


def build(args: argparse.Namespace) -> None:
    modems = [os.path.realpath(m) for m in args.modems]
    if len(modems) < args.kits + args.boards:
        sys.exit(f"usbdemo: {args.kits + args.boards} modems needed, {len(modems)} given")
    tree = UsbTree(Path(args.root))
    tree.add_device("1-1", vid="05e3", pid="0610", product="USB2.0 Hub")
    tree.add_device("2-1", vid="05e3", pid="0610", product="USB2.0 Hub")
    for i in range(args.kits):
        tree.add_board(f"1-1.{i + 1}", serial=f"{DK_SERIAL_PREFIX}{10000 + i:05d}",
                       targets=[modems[i], None, None])
    for i in range(args.boards):
        tree.add_board(f"2-1.{i + 1}", serial=f"CP{i:06d}" if i % 2 == 0 else None,
                       targets=[modems[args.kits + i]], **BRIDGE)  # type: ignore[arg-type]
    print(f"usbdemo: {args.kits} kit(s) and {args.boards} board(s) under {args.root}")


def swap(args: argparse.Namespace) -> None:
    tree = UsbTree.open(Path(args.root))
    tree.swap(args.location, serial=args.serial, targets=[os.path.realpath(args.modems[0])],
              **BRIDGE)
    print(f"usbdemo: another board at {args.location}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("build")
    one.add_argument("--kits", type=int, default=2)
    one.add_argument("--boards", type=int, default=2)
    one.set_defaults(func=build)
    two = commands.add_parser("swap")
    two.add_argument("--location", required=True)
    two.add_argument("--serial")
    two.set_defaults(func=swap)
    for command in (one, two):
        command.add_argument("--root", required=True)
        command.add_argument("modems", nargs="+")
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
