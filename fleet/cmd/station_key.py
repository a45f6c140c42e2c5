"""``fleet station-key init [--out DIR] [--ed25519] [--name station]``: create the station's
manifest signing key (``DIR/<name>.pem``, mode 0600) and its public key (``DIR/<name>.pub.pem``).

Exit 0 when both files were created; 2 when either exists already (nothing is overwritten) or
cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleet import exitcodes
from fleet.errors import ManifestError
from fleet.station_key import init_station_key

__all__ = ["register", "run_init"]

_ALG_TEXT = {"ES256": "ES256: ECDSA P-256 with SHA-256", "Ed25519": "Ed25519"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "station-key",
        help="create the station's manifest signing key",
        description="Manage the station key that signs manifests.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create a signing key (0600) and its public key; never overwrites",
        description="Create DIR/NAME.pem (the private signing key, unencrypted PKCS#8 PEM, "
        "mode 0600) and DIR/NAME.pub.pem (its public key, for `fleet verify --pubkey`). "
        "Refuses to overwrite either file.",
    )
    init.add_argument("--out", metavar="DIR", type=Path, default=Path("keys"),
                      help="directory for the key files (default: keys; created 0700)")
    init.add_argument("--ed25519", action="store_true",
                      help="make an Ed25519 key instead of ECDSA P-256 (ES256)")
    init.add_argument("--name", default="station",
                      help="file name stem (default: station -> station.pem, station.pub.pem)")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    try:
        files = init_station_key(args.out, name=args.name, ed25519_key=args.ed25519)
    except ManifestError as exc:
        print(f"fleet station-key init: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    print(f"Created a station signing key ({_ALG_TEXT.get(files.alg, files.alg)}).")
    print(f"  private key  {files.private_path}  (mode 0600: keep it on this station, back it up)")
    print(f"  public key   {files.public_path}  (give it to whoever verifies manifests)")
    print(f"  keyid        {files.keyid}")
    print(f"Verify a manifest with: fleet verify MANIFEST --pubkey {files.public_path}")
    return exitcodes.OK
