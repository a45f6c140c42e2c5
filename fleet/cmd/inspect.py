"""``fleet inspect VALUE|-``: decode and check one %KEYGEN answer, like Nordic's parser but strict.

Exit 0 only when every check passes; 1 when the answer does not decode or a check fails (the
reason is printed); 2 for a usage problem (unreadable identity key file...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet import exitcodes
from fleet.credentials import check_keygen, parse_keygen
from fleet.errors import CredentialError
from fleet.regular import read_regular_file

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="decode and check one %%KEYGEN answer",
        description="Decode and check one %KEYGEN answer: the whole '%KEYGEN: \"...\"' line, "
        "the quoted value or the bare '<body>.<cose>' value. Use '-' to read it from stdin.",
    )
    parser.add_argument("value", help="the answer, or - to read it from standard input")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--identity-key",
        metavar="PEM",
        type=Path,
        help="the device identity public key (PEM): also verify the COSE signature",
    )
    parser.set_defaults(func=run)


def _load_identity_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(read_regular_file(path, max_bytes=64 * 1024))
    except OSError as exc:
        raise SystemExit(f"fleet inspect: cannot read identity key {path}: "
                         f"{exc.strerror or exc}") from exc
    except ValueError as exc:
        raise SystemExit(f"fleet inspect: cannot read identity key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SystemExit(f"fleet inspect: {path} is not an EC public key")
    return key


def run(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.value == "-" else args.value
    identity = _load_identity_key(args.identity_key) if args.identity_key else None
    try:
        answer = parse_keygen(text)
    except CredentialError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "checks": []}, indent=2))
        else:
            print(f"FAIL: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    checks = check_keygen(answer, identity_key=identity)
    ok = all(c.ok for c in checks)
    if args.json:
        doc: dict[str, Any] = {"ok": ok, **answer.to_dict(),
                               "checks": [c.to_dict() for c in checks]}
        if not ok:
            doc["error"] = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
        print(json.dumps(doc, indent=2))
    else:
        _print_human(answer.to_dict(), checks)
    return exitcodes.OK if ok else exitcodes.FAILED


def _print_human(doc: dict[str, Any], checks: list[Any]) -> None:
    payload = doc["cose"]["payload"]
    print(f"kind:         {doc['kind']}")
    print(f"sec_tag:      {payload['sec_tag']}  (CBOR {payload['sec_tag_cbor_hex']})")
    print(f"device UUID:  {payload['device_uuid']}")
    print(f"payload id:   {payload['payload_id']}")
    print(f"nonce:        {payload['nonce_hex']}")
    print(f"body SHA-256: {doc['body_sha256']}")
    if "csr" in doc:
        csr = doc["csr"]
        print(f"subject:      {csr['subject']}")
        print(f"key usage:    {csr['key_usage']}  ({', '.join(csr['key_usage_bits'])})")
        if csr["signature_algorithm_null_parameter"]:
            print("note:         signature algorithm has the modem's explicit NULL parameter")
    print(f"public key:   {doc['public_key']['uncompressed_hex']}")
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"[{mark}] {check.name}: {check.detail}")
