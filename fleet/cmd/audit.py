"""``fleet audit MANIFEST|DIR... [--pubkey FILE]... [--json] [--jobs N]``: the cross-station
audit of :mod:`fleet.audit`.

A directory stands for every ``*.json`` file under it. The manifests are verified and reduced to
their inventories one at a time in ``--jobs`` worker processes (verification is CPU work: the
signature and every ``%KEYGEN`` answer), taken in the order given; only the inventories come
back. Exit 0 when there is no finding, 1 with any (each with its evidence), 2 for a usage error
(a path that does not exist, no manifest found, a --pubkey that cannot be used).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fleet import exitcodes
from fleet.errors import ManifestError

__all__ = ["register", "run_audit"]

#: The trusted keys of a worker process (set once by its initializer).
_TRUSTED: list[Any] | None = None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="verify the manifests of every station and run and report what does not add up",
        description="Verify every manifest (like `fleet verify`), build one inventory per "
        "device and report: one public key on two devices or sec_tags, one device UUID under "
        "two IMEIs, one IMEI with different keys in one sec_tag across runs, a certificate "
        "that does not carry its key, an IMEI provisioned at more than one station, manifests "
        "that do not verify. Exit 1 on any finding.",
    )
    parser.add_argument("paths", metavar="MANIFEST|DIR", nargs="+", type=Path,
                        help="manifests, or directories whose *.json files are manifests")
    parser.add_argument("--pubkey", metavar="FILE", type=Path, action="append", default=[],
                        help="a trusted station public key (PEM); give one per station")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document with every finding")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="worker processes that verify manifests (default: the CPUs)")
    parser.set_defaults(func=run_audit)


def _manifest_paths(paths: Sequence[Path]) -> list[str]:
    found: list[str] = []
    for path in paths:
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*.json") if p.is_file())
        elif path.exists():
            found.append(str(path))
        else:
            raise ValueError(f"{path}: no such file or directory")
    return found


def _init_worker(trusted_pems: list[str] | None) -> None:
    from fleet.station_key import public_key_from_pem

    global _TRUSTED
    _TRUSTED = (None if trusted_pems is None
                else [public_key_from_pem(pem, "--pubkey") for pem in trusted_pems])


def _inventory(path: str) -> Any:
    from fleet.audit import read_manifest_inventory

    return read_manifest_inventory(path, _TRUSTED)


def _inventories(paths: list[str], trusted_pems: list[str] | None, jobs: int) -> Iterator[Any]:
    if jobs <= 1 or len(paths) <= 1:
        _init_worker(trusted_pems)
        yield from map(_inventory, paths)
        return
    import multiprocessing

    # fork: the workers start with fleet already imported (this process has no threads)
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with context.Pool(jobs, initializer=_init_worker, initargs=(trusted_pems,)) as pool:
        yield from pool.imap(_inventory, paths, chunksize=1)


def run_audit(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from fleet.audit import Auditor
    from fleet.cmd.verify import load_trusted

    prog = "fleet audit"
    try:
        paths = _manifest_paths(args.paths)
        trusted = load_trusted(args.pubkey)
    except (ValueError, ManifestError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    if not paths:
        print(f"{prog}: no manifest (*.json) found in {', '.join(map(str, args.paths))}",
              file=sys.stderr)
        return exitcodes.USAGE
    if args.jobs is not None and args.jobs < 1:
        print(f"{prog}: --jobs must be at least 1", file=sys.stderr)
        return exitcodes.USAGE
    pems = [key.public_bytes(serialization.Encoding.PEM,
                             serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
            for key in trusted] if args.pubkey else None
    auditor = Auditor()
    warnings: set[str] = set()
    for inventory in _inventories(paths, pems, args.jobs or os.cpu_count() or 1):
        auditor.add(inventory)
        warnings.update(inventory.warnings)
    findings = auditor.findings()
    if args.json:
        print(json.dumps({
            "ok": not findings, "manifests": len(paths), "inventoried": len(auditor.manifests),
            "devices": auditor.devices, "keys": auditor.keys,
            "findings": [f.to_dict() for f in findings], "warnings": sorted(warnings)}))
    else:
        for warning in sorted(warnings):
            print(f"WARNING: {warning}", file=sys.stderr)
        for finding in findings:
            print(f"{finding.kind}: {finding.detail}")
            for evidence in finding.evidence:
                print(f"    {evidence.line()}")
        verdict = f"{len(findings)} finding(s)" if findings else "clean"
        print(f"{prog}: {len(paths)} manifest(s), {auditor.devices} device record(s), "
              f"{auditor.keys} key(s): {verdict}", file=sys.stderr)
    return exitcodes.FAILED if findings else exitcodes.OK
