"""``fleet ca init DIR [--cn NAME] [--days N] [--pkcs11 URI]``: a development CA for trying
certificates out.

Writes ``DIR/ca.key`` (P-256, mode 0600, created with O_EXCL) and ``DIR/ca.pem`` (self-signed,
basicConstraints CA=true pathlen 0, keyUsage keyCertSign + cRLSign) and prints the plan snippet
that uses them; with ``--pkcs11`` the key is made in the token (never extractable) and only
``DIR/ca.pem`` is written. Exit 0 when the CA was created; 2 when a file or token object exists
(nothing is overwritten) or the CA cannot be made or written.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from fleet import exitcodes
from fleet.certs.devca import init_dev_ca
from fleet.errors import CertificateError, TokenError
from fleet.hsm.uri import parse_pkcs11_uri

__all__ = ["register", "run_init"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ca",
        help="create a development CA for client certificates",
        description="Certificate authority helpers.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create DIR/ca.pem and DIR/ca.key (0600): a development CA; never overwrites",
        description="Create a development CA: DIR/ca.key (a P-256 private key, unencrypted "
        "PKCS#8 PEM, mode 0600) and DIR/ca.pem (its self-signed CA certificate). For trying "
        "out certificates with `fleet sim`; a production CA's key belongs in an HSM (--pkcs11 "
        "makes it in a PKCS#11 token) or a CA service (use `ca: {command: ...}` in the plan). "
        "Refuses to overwrite either file.",
    )
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument("--cn", default="fleet development CA",
                      help="the CA's common name (default: %(default)s)")
    init.add_argument("--days", type=int, default=3650,
                      help="validity in days, 1..36500 (default: %(default)s)")
    init.add_argument("--pkcs11", metavar="URI",
                      help="make the CA key (ECDSA P-256, never extractable) in the PKCS#11 "
                      "token this URI names and write only DIR/ca.pem")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    try:
        token = None
        if args.pkcs11 is not None:
            try:
                token = parse_pkcs11_uri(args.pkcs11)
            except TokenError as exc:
                raise CertificateError(f"--pkcs11: {exc}") from exc
        files = init_dev_ca(args.directory, common_name=args.cn, days=args.days,
                            now=datetime.now(UTC), token=token)
    except CertificateError as exc:
        print(f"fleet ca init: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    print(f"Created a development CA: {files.subject}, valid until {files.not_after}.")
    print(f"  certificate  {files.cert_path}")
    if files.key_path is None:
        print(f"  private key  {files.token}  (never leaves the token)")
    else:
        print(f"  private key  {files.key_path}  (mode 0600: a DEVELOPMENT key, never for "
              "production)")
    print("Use it in a plan (paths relative to the plan file), under a client key with "
          "response: csr:")
    print("    ca:")
    print(f"      cert: {os.path.relpath(files.cert_path)}")
    key = f'"{args.pkcs11}"' if files.key_path is None else os.path.relpath(files.key_path)
    print(f"      key: {key}")
    print("      validity_days: 365")
    print(f"      chain: {os.path.relpath(files.cert_path)}   # written as the root CA (type 0)")
    return exitcodes.OK
