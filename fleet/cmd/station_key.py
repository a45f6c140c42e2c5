"""``fleet station-key init [--out DIR] [--ed25519] [--name station] [--pkcs11 URI]``: create the
station's manifest signing key (``DIR/<name>.pem``, mode 0600) and its public key
(``DIR/<name>.pub.pem``); with ``--pkcs11``, the key pair is made in the token the URI names
(never extractable) and only the public key file is written.

Exit 0 when the key was created; 2 when a file or token object exists already (nothing is
overwritten) or the key cannot be made or written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleet import exitcodes
from fleet.errors import ManifestError, TokenError
from fleet.hsm.uri import parse_pkcs11_uri
from fleet.station_key import init_station_key, init_token_station_key

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
    init.add_argument("--pkcs11", metavar="URI",
                      help="make the key pair (ECDSA P-256, never extractable) in the PKCS#11 "
                      "token this URI names, e.g. 'pkcs11:token=fleet;object=station"
                      "?pin-source=env:FLEET_PIN', and write only DIR/NAME.pub.pem")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    try:
        if args.pkcs11 is not None:
            if args.ed25519:
                raise ManifestError("--ed25519 and --pkcs11: a key in a token is ECDSA P-256")
            try:
                uri = parse_pkcs11_uri(args.pkcs11)
            except TokenError as exc:
                raise ManifestError(f"--pkcs11: {exc}") from exc
            files = init_token_station_key(uri, args.out, name=args.name)
        else:
            files = init_station_key(args.out, name=args.name, ed25519_key=args.ed25519)
    except ManifestError as exc:
        print(f"fleet station-key init: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    print(f"Created a station signing key ({_ALG_TEXT.get(files.alg, files.alg)}).")
    if files.private_path is None:
        print(f"  private key  {files.token}  (never leaves the token)")
        print(f"  plan         signing_key: \"{args.pkcs11}\"")
    else:
        print(f"  private key  {files.private_path}  (mode 0600: keep it on this station, "
              "back it up)")
    print(f"  public key   {files.public_path}  (give it to whoever verifies manifests)")
    print(f"  keyid        {files.keyid}")
    print(f"Verify a manifest with: fleet verify MANIFEST --pubkey {files.public_path}")
    return exitcodes.OK
