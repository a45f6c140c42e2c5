#!/usr/bin/env python3
"""Generate a factory's worth of signed manifests and time `fleet audit` on them.

    python scripts/audit_scale.py --dir /tmp/audit-scale                   # 100,000 devices
    python scripts/audit_scale.py --dir /tmp/a --devices 2000 --manifests 10 --no-audit
    python scripts/audit_scale.py --dir /tmp/audit-scale --audit-only      # audit them again

Writes ``--manifests`` manifests under ``DIR/manifests`` holding ``--devices`` devices in all,
from ``--stations`` stations (each with its own test station key, ``DIR/keys/stationN.pub.pem``):
every device with a TLS client key whose %KEYGEN answer (CSR) and certificate are built the way
the modem and a local CA build them, and an endorsement key, all signed by one identity key per
device set. Then (unless ``--no-audit``) it runs ``fleet audit DIR/manifests --pubkey ...``
as its own process and prints its wall time, its peak RSS (from wait4: the largest of the audit
and its workers) and its verdict (clean: exit 0). The generation runs in ``--jobs`` processes;
its time is printed too but is not the audit's.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from fleet.certs.authority import LocalCa  # noqa: E402
from fleet.certs.pem import summarize  # noqa: E402
from fleet.credentials import (  # noqa: E402
    PAYLOAD_ID_CSR,
    PAYLOAD_ID_PUBLIC_KEY,
    build_csr,
    build_keygen_answer,
    parse_keygen,
    public_key_der,
)
from fleet.manifest import answer_fields, build_signed, sign, write_manifest  # noqa: E402
from fleet.nrf91 import luhn_digit  # noqa: E402
from fleet.records import (  # noqa: E402
    DeviceOutcome,
    DeviceRecord,
    KeyOutcome,
    KeyRecord,
    RunRecord,
)
from fleet.station_key import generate_signing_key, load_signing_key, public_key_pem  # noqa: E402

TLS_TAG, ENDORSEMENT_TAG = 16842753, 33
NOW = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def imei(n: int) -> str:
    body = f"35{n:012d}"
    return body + luhn_digit(body)


def _ca(directory: Path) -> LocalCa:
    key = ec.derive_private_key(7, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Scale Test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return LocalCa(cert_path=directory / "ca.pem", key_path=directory / "ca.key",
                   certificate=cert, private_key=key)


def _device(n: int, ca: LocalCa, identity: ec.EllipticCurvePrivateKey) -> DeviceRecord:
    device_uuid = uuid.UUID(int=(0x5CA1E << 100) + n)
    number = imei(n)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(tls_key, device_uuid=device_uuid, attributes=f"CN={number},O=Acme",
                    key_usage="101010000")
    tls = parse_keygen(build_keygen_answer(csr, payload_id=PAYLOAD_ID_CSR,
                                           device_uuid=device_uuid, sec_tag=TLS_TAG,
                                           identity_key=identity, nonce=os.urandom(16)))
    assert tls.csr is not None
    info = summarize(ca.sign(tls.csr, now=NOW))
    certificate = {"outcome": "issued", "error": None, "pem": info.pem, "sha256": info.sha256,
                   "cmng_sha256": info.sha256, "serial": info.serial, "issuer": info.issuer,
                   "not_after": info.not_after}
    endorsement = parse_keygen(build_keygen_answer(
        public_key_der(ec.generate_private_key(ec.SECP256R1())),
        payload_id=PAYLOAD_ID_PUBLIC_KEY, device_uuid=device_uuid, sec_tag=ENDORSEMENT_TAG,
        identity_key=identity, nonce=os.urandom(16)))
    keys = (
        KeyRecord(name="tls", sec_tag=TLS_TAG, type="client_key", response="csr",
                  outcome=KeyOutcome.GENERATED, attempts=1, extra={"certificate": certificate},
                  **answer_fields(tls)),
        KeyRecord(name="endorsement", sec_tag=ENDORSEMENT_TAG, type="endorsement_key",
                  response="public_key", outcome=KeyOutcome.GENERATED, attempts=1,
                  **answer_fields(endorsement)),
    )
    return DeviceRecord(slot=f"slot{n % 256}", port=f"/dev/ttyACM{n % 256}", imei=number,
                        device_uuid=str(device_uuid), model="nRF9151-LACA",
                        firmware="mfw_nrf91x1_2.0.2", outcome=DeviceOutcome.DONE, keys=keys)


def _manifest(job: tuple[Path, int, int, int, int]) -> str:
    directory, index, first, count, station = job
    ca = _ca(directory)
    identity = ec.derive_private_key(1000 + index, ec.SECP256R1())
    key = load_signing_key(directory / "keys" / f"station{station}.pem")
    started = NOW + timedelta(hours=index)
    run = RunRecord(run_id=f"scale-{index:05d}", station=f"line{station}", plan_path="plan.yaml",
                    plan_sha256="ab" * 32, started_at=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    ended_at=(started + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    complete=True, tool_version="scale",
                    devices=tuple(_device(n, ca, identity) for n in range(first, first + count)))
    path = directory / "manifests" / f"line{station}-{index:05d}.json"
    write_manifest(path, sign(build_signed(run, station_public_key_pem=public_key_pem(key)),
                              key))
    return str(path)


def generate(directory: Path, *, devices: int, manifests: int, stations: int, jobs: int) -> None:
    (directory / "manifests").mkdir(parents=True)
    (directory / "keys").mkdir()
    for station in range(stations):
        key = generate_signing_key()
        private = directory / "keys" / f"station{station}.pem"
        private.touch(mode=0o600)
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        (directory / "keys" / f"station{station}.pub.pem").write_text(public_key_pem(key))
    per, extra = divmod(devices, manifests)
    work, first = [], 0
    for index in range(manifests):
        count = per + (1 if index < extra else 0)
        work.append((directory, index, first, count, index % stations))
        first += count
    with get_context("forkserver").Pool(jobs) as pool:
        for _ in pool.imap_unordered(_manifest, work):
            pass


def run_audit(directory: Path, stations: int) -> int:
    keys = [arg for s in range(stations)
            for arg in ("--pubkey", str(directory / "keys" / f"station{s}.pub.pem"))]
    load = os.getloadavg()  # the machine may be shared: the wall time depends on it
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fleet", "audit", str(directory / "manifests"),
                             *keys], cwd=REPO, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    elapsed = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the audit and its workers
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    print(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "(no summary)")
    print(f"audit: exit {result.returncode}, {elapsed:.1f} s wall, peak RSS "
          f"{usage.ru_maxrss / 1024:.0f} MiB (largest process), {cpu:.1f} CPU s, "
          f"{os.cpu_count()} CPUs, load average before {load[0]:.1f}")
    if result.returncode != 0:
        print(result.stdout[-4000:])
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="a new directory")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--manifests", type=int, default=500)
    parser.add_argument("--stations", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-audit", action="store_true", help="only generate")
    parser.add_argument("--audit-only", action="store_true",
                        help="only audit the manifests an earlier run generated in --dir")
    args = parser.parse_args()
    if args.audit_only:
        return run_audit(args.dir, args.stations)
    if args.dir.exists() and any(args.dir.iterdir()):
        parser.error(f"{args.dir} exists and is not empty")
    started = time.monotonic()
    generate(args.dir, devices=args.devices, manifests=args.manifests, stations=args.stations,
             jobs=args.jobs)
    print(f"generated {args.devices} devices in {args.manifests} manifests from "
          f"{args.stations} stations in {time.monotonic() - started:.1f} s")
    return 0 if args.no_audit else run_audit(args.dir, args.stations)


if __name__ == "__main__":
    sys.exit(main())
