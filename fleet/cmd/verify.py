"""``fleet verify MANIFEST... [--pubkey FILE ...] [--json]``: check manifests.

Each manifest's signatures are checked over the recomputed RFC 8785 bytes of ``signed`` and every
embedded ``%KEYGEN`` answer is checked again (see :mod:`fleet.manifest.verify`). With ``--pubkey``
(repeatable) at least one signature must be by one of those keys; without it the signature is
checked with the key embedded in the manifest and a WARNING says the signer was not checked.

Exit 0 only when every manifest passes; 1 when any check fails (one ``<manifest>: <where>:
<reason>`` line per failure); 2 for a usage error (unreadable file, not JSON text in UTF-8, bad
--pubkey).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fleet import exitcodes
from fleet.errors import ManifestError
from fleet.manifest import json_syntax_problem, verify
from fleet.regular import read_regular_file
from fleet.station_key import PublicKey, load_public_key

__all__ = ["load_trusted", "register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check the signatures and every %%KEYGEN answer of manifests",
        description="Check each manifest: its signatures over the RFC 8785 canonical bytes of "
        "'signed', and every embedded %KEYGEN answer (digest, CSR signature, sec_tag, device "
        "UUID). Exit 0 when all pass, 1 when a check fails, 2 for a usage error.",
    )
    parser.add_argument("manifests", metavar="MANIFEST", nargs="+", type=Path)
    parser.add_argument("--pubkey", metavar="FILE", type=Path, action="append", default=[],
                        help="a trusted station public key (PEM); repeat for several. Without "
                        "it the signer is not checked against a trusted key (a WARNING says so)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def _check_one(path: Path, trusted: list[PublicKey] | None) -> dict[str, Any]:
    try:
        data = read_regular_file(path)
    except OSError as exc:
        return {"path": str(path), "ok": False, "usage_error": f"cannot read: {exc.strerror}"}
    problem = json_syntax_problem(data)
    if problem is not None:
        return {"path": str(path), "ok": False, "usage_error": problem}
    report = verify(data, trusted=trusted)
    return {"path": str(path), **report.to_dict(), "partial": report.complete is False}


def _print_human(result: dict[str, Any]) -> None:
    path = result["path"]
    if "usage_error" in result:
        print(f"{path}: {result['usage_error']}", file=sys.stderr)
        return
    if not result["ok"]:
        for line in result["failures"]:
            print(f"{path}: {line}")
        print(f"{path}: FAILED ({len(result['failures'])} check(s) failed)")
        return
    signers = ", ".join(result["trusted_signers"] or result["signers"])
    trust = "trusted key" if result["trusted_signers"] else "embedded station key (NOT TRUSTED)"
    certificates = (f", {result['certificates']} certificate(s)" if result.get("certificates")
                    else "")
    if result.get("tokens"):
        certificates += f", {result['tokens']} attestation token(s)"
    print(f"{path}: OK: {result['devices']} device(s), {result['answers']} %KEYGEN answer(s)"
          f"{certificates} re-checked, signed by {trust} {signers}")
    if result["partial"]:
        print(f"{path}: PARTIAL: the run did not finish (complete: false); the manifest records "
              "what was done before it stopped")


def load_trusted(paths: list[Path]) -> list[PublicKey]:
    """The ``--pubkey`` keys; raises ManifestError for one that cannot be used."""
    return [load_public_key(path) for path in paths]


def run(args: argparse.Namespace) -> int:
    try:
        trusted = load_trusted(args.pubkey)
    except ManifestError as exc:
        print(f"fleet verify: --pubkey: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    results = [_check_one(path, trusted if args.pubkey else None) for path in args.manifests]
    for result in results:
        for warning in result.get("warnings", ()):
            print(f"WARNING: {result['path']}: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps({"ok": all(r["ok"] for r in results), "manifests": results}, indent=2))
    else:
        for result in results:
            _print_human(result)
    if any("usage_error" in r for r in results):
        return exitcodes.USAGE
    return exitcodes.OK if all(r["ok"] for r in results) else exitcodes.FAILED
