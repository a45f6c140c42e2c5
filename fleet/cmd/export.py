"""``fleet export nrfcloud MANIFEST... [--format onboard|claim|devinfo] > FILE``: nRF Cloud's
bulk onboarding CSV, the attestation-token claim CSV, or the device-info CSV.

Every manifest is first verified exactly as ``fleet verify`` does (``--pubkey`` as there); one that
does not verify stops the export (exit 1, the reasons on stderr, nothing on stdout). Then one row
per device that has what the format needs is printed (layouts: :mod:`fleet.certs.nrfcloud`);
the devices left out are named on stderr. An export that would not be correct (two devices with
one device id, a cell a spreadsheet would run as a formula...: :mod:`fleet.certs.nrfcloud`) is
refused the same way: exit 1, every device concerned and the reason on stderr, nothing on
stdout. Exit 2 for a usage error (an unreadable or non-JSON manifest, a bad option or --pubkey,
a --subtype or --tags value a spreadsheet would run as a formula, a --key that no device of the
manifests has).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from fleet import exitcodes
from fleet.certs.nrfcloud import (
    DEVICE_ID_MODES,
    EXPORT_FORMATS,
    FIRMWARE_TYPES,
    UnknownKey,
    checked_cell,
    export_rows,
    split_list,
    write_rows,
)
from fleet.cmd.verify import load_trusted
from fleet.errors import ExportError, ManifestError
from fleet.manifest import NOT_TRUSTED_WARNING, json_syntax_problem, verify_file
from fleet.regular import read_regular_file

__all__ = ["register", "run_nrfcloud"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export verified manifests for a cloud (nRF Cloud onboarding, claim and device "
        "info CSVs)",
        description="Export what verified manifests record in a cloud's bulk formats.",
    )
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    nrf = targets.add_parser(
        "nrfcloud",
        help="nRF Cloud's bulk onboarding, claim or device info CSV on stdout (one row per "
        "device)",
        description="Verify each manifest like `fleet verify`, then print one of nRF Cloud's "
        "bulk files (--format), one row per device that has what the format needs. The "
        "default, onboard, is the bulk onboarding CSV (as Nordic's nrfcloud-utils writes "
        "onboard.csv: no header; device id, subtype, tags, firmware types, certificate PEM): "
        "post it with nrf_cloud_onboard --api-key KEY --csv onboard.csv. claim is the "
        "attestation token CSV for claim_devices --csv; devinfo the device info CSV for "
        "nrf_cloud_onboard --devinfo.",
    )
    nrf.add_argument("manifests", metavar="MANIFEST", nargs="+", type=Path)
    nrf.add_argument("--format", choices=EXPORT_FORMATS, default="onboard",
                     help="onboard: the bulk onboarding CSV (nrf_cloud_onboard --csv); claim: "
                     "imei,uuid,attestation_token,time as gather_attestation_tokens writes it "
                     "(claim_devices --csv); devinfo: device id,modem firmware,imei "
                     "(nrf_cloud_onboard --devinfo) (default: onboard)")
    nrf.add_argument("--pubkey", metavar="FILE", type=Path, action="append", default=[],
                     help="a trusted station public key (PEM), as for `fleet verify`")
    nrf.add_argument("--device-id", choices=DEVICE_ID_MODES, default="cn",
                     help="the nRF Cloud device id: the certificate's common name (cn, what "
                     "nrfcloud-utils uses), the device UUID, the IMEI, or nrf-<IMEI> "
                     "(default: cn)")
    nrf.add_argument("--subtype", default="", help="device subtype column (default: empty)")
    nrf.add_argument("--tags", default="",
                     help="device tags separated by | or ; (written with |; default: none)")
    nrf.add_argument("--fw-types", default="APP|MODEM",
                     help=f"firmware types for FOTA separated by | or ; from "
                     f"{', '.join(FIRMWARE_TYPES)} (default: APP|MODEM)")
    nrf.add_argument("--key", metavar="NAME", default=None,
                     help="the plan key whose certificate to export, when a device has several")
    nrf.set_defaults(func=run_nrfcloud)


def run_nrfcloud(args: argparse.Namespace) -> int:
    prog = "fleet export nrfcloud"
    try:
        subtype = checked_cell(args.subtype, "--subtype")
        tags = split_list(args.tags, "--tags")
        fw_types = split_list(args.fw_types, "--fw-types", allowed=FIRMWARE_TYPES)
        trusted = load_trusted(args.pubkey)
    except (ValueError, ManifestError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    documents = []
    failed = False
    for path in args.manifests:
        try:
            data = read_regular_file(path)
        except OSError as exc:
            print(f"{prog}: {path}: cannot read: {exc.strerror}", file=sys.stderr)
            return exitcodes.USAGE
        problem = json_syntax_problem(data)
        if problem is not None:
            print(f"{prog}: {path}: {problem}", file=sys.stderr)
            return exitcodes.USAGE
        report, document = verify_file(data, trusted=trusted if args.pubkey else None)
        for warning in report.warnings:
            if warning == NOT_TRUSTED_WARNING:
                warning += "; pass --pubkey to check it"
            print(f"WARNING: {path}: {warning}", file=sys.stderr)
        if not report.ok:
            failed = True
            for check in report.failures:
                print(f"{path}: {check.line()}", file=sys.stderr)
            print(f"{prog}: {path} does not verify: nothing exported", file=sys.stderr)
            continue
        assert document is not None  # it verified
        documents.append((str(path), document))
    if failed:
        return exitcodes.FAILED
    try:
        rows, warnings = export_rows(documents, export_format=args.format,
                                     device_id=args.device_id, subtype=subtype, tags=tags,
                                     firmware_types=fw_types, key_name=args.key)
    except UnknownKey as exc:
        print(f"{prog}: --key {exc.key_name!r}: no device in the manifest(s) has a key of that "
              f"name (their keys: {', '.join(sorted(exc.names)) or 'none'}); nothing exported",
              file=sys.stderr)
        return exitcodes.USAGE
    except ExportError as exc:
        for problem in exc.problems:
            print(f"{prog}: {problem}", file=sys.stderr)
        print(f"{prog}: refused: {len(exc.problems)} problem(s), nothing exported",
              file=sys.stderr)
        return exitcodes.FAILED
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    out = io.StringIO()
    write_rows(rows, out)
    sys.stdout.write(out.getvalue())
    print(f"{prog}: {len(rows)} device(s) exported", file=sys.stderr)
    return exitcodes.OK

