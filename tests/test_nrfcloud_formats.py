"""`fleet export nrfcloud --format claim|devinfo` against Nordic's own tools (nrfcloud-utils, the
test extra): its `gather_attestation_tokens` run on the same simulated nRF9151s gives rows of
the same layout, its `claim_devices` reads fleet's file and would claim every device with
fleet's token, and `nrf_cloud_onboard`'s device-info reader reads fleet's devinfo file.

nrfcloud-utils finds ports through pyserial's port list, where a pty never appears: the
wrapper below lists the simulator's pty as the one port; its HTTP upload is replaced by a stub
that records what it was given (the only two places where its code is not run as it ships)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fleet.credentials import parse_attest_token
from tests.runhelpers import fleet, run_json, write_plan
from tests.simproc import run_sim

pytestmark = pytest.mark.timeout(240)

_GATHER = textwrap.dedent("""
    import os, sys
    from serial.tools.list_ports_common import ListPortInfo
    import nrfcredstore.comms as comms
    from nrfcloud_utils import gather_attestation_tokens
    port = os.path.realpath(sys.argv[1])
    comms.get_comports_fixed_ordering = lambda: [ListPortInfo(port, skip_link_detection=True)]
    gather_attestation_tokens.main(sys.argv[2:])
""")
_CLAIM = textwrap.dedent("""
    import json, sys
    from nrfcloud_utils import claim_devices, nrf_cloud_diap
    posted = []
    class Response:
        status_code = 201
        text = ""
        def __init__(self, ids): self.ids = ids
        def json(self): return {"claimedIds": self.ids}
    def bulk_claim_devices(api_key, csv_rows):
        posted.append(csv_rows)
        return Response([f"row{i}" for i in range(csv_rows.count(chr(10)))])
    nrf_cloud_diap.bulk_claim_devices = bulk_claim_devices
    try:
        claim_devices.main(["--csv", sys.argv[1], "--api-key", "stub", "-P"])
    finally:
        print(json.dumps(posted))
""")
_DEVINFO = textwrap.dedent("""
    import json, sys
    from nrfcloud_utils.nrf_cloud_onboard import read_devinfo_csv
    print(json.dumps(read_devinfo_csv(sys.argv[1])))
""")
#: what `datetime.now(timezone.utc).isoformat()` prints
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00\Z")


def _python(script: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def _token_shape(token: str) -> tuple[Any, ...]:
    decoded = parse_attest_token(token)
    return (decoded.message_type, decoded.device_uuid, decoded.device_type,
            decoded.firmware_uuid, len(decoded.nonce or b""))


def _export(tmp_path: Path, manifest: str, *args: str) -> subprocess.CompletedProcess[str]:
    return fleet("export", "nrfcloud", manifest, "--pubkey",
                 tmp_path / "keys" / "station.pub.pem", *args)


def test_claim_rows_are_gather_attestation_tokens_rows_and_claim_devices_takes_them(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--model", "nrf9151") as sim:
        for port in sim.ports:
            gathered = _python(_GATHER, port, "--port", port, "--cmd-type", "at", "--csv",
                               "gathered.csv", "-P", cwd=tmp_path)
            assert gathered.returncode == 0, gathered.stderr
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"),
                          defaults="{timeout_s: 5, keygen_timeout_s: 10, attestation_token: "
                          "true}")
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
    exported = _export(tmp_path, doc["manifest"], "--format", "claim")
    assert exported.returncode == 0, exported.stderr
    theirs = list(csv.reader(io.StringIO((tmp_path / "gathered.csv").read_text())))
    ours = list(csv.reader(io.StringIO(exported.stdout)))
    assert exported.stdout.endswith("\n") and "\r" not in exported.stdout
    assert len(ours) == len(theirs) == 2
    assert sorted(r[:2] for r in ours) == sorted(r[:2] for r in theirs)
    by_imei = {r[0]: r for r in theirs}
    manifest = json.loads(Path(doc["manifest"]).read_text())["signed"]
    tokens = {d["imei"]: d["attestation"]["token"] for d in manifest["devices"]}
    for row in ours:
        assert len(row) == len(by_imei[row[0]]) == 4
        assert row[2] == tokens[row[0]] and row[2] != by_imei[row[0]][2]  # a nonce each read
        assert _token_shape(row[2]) == _token_shape(by_imei[row[0]][2])
        assert _TIME.match(row[3]) and _TIME.match(by_imei[row[0]][3])
    (tmp_path / "claim.csv").write_text(exported.stdout)
    claimed = _python(_CLAIM, tmp_path / "claim.csv", cwd=tmp_path)
    assert claimed.returncode == 0, claimed.stderr
    posted = json.loads(claimed.stdout.strip().splitlines()[-1])
    assert [list(csv.reader(io.StringIO(body))) for body in posted] == [
        [[row[2]] for row in ours]]
    assert "2 of 2 devices claimed" in claimed.stderr + claimed.stdout


def test_devinfo_rows_are_what_nrf_cloud_onboard_reads(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-1", slot_keys="[tls]",
                      extra="simulator: {state: sim.json, model: nrf9151}\n")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    exported = _export(tmp_path, doc["manifest"], "--format", "devinfo", "--device-id",
                       "nrf-imei")
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "devinfo.csv").write_text(exported.stdout)
    read = _python(_DEVINFO, tmp_path / "devinfo.csv", cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout) == [[f"nrf-{d['imei']}", "mfw_nrf91x1_2.0.2", d["imei"]]
                                       for d in sorted(doc["devices"], key=lambda d: d["slot"])]
    # the certificate's common name, the default device id, needs a certificate: none here
    by_cn = _export(tmp_path, doc["manifest"], "--format", "devinfo")
    assert by_cn.returncode == 0 and by_cn.stdout == ""
    assert by_cn.stderr.count("skipped: no certificate to take its device id (cn) from") == 2
    # a device without an attestation token is named, not exported
    claim = _export(tmp_path, doc["manifest"], "--format", "claim")
    assert claim.returncode == 0 and claim.stdout == ""
    assert claim.stderr.count("skipped: no attestation token") == 2
