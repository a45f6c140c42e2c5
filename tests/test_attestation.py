"""Attestation tokens in the record (`attestation_token: true`): read from an nRF9151 before any
write, journaled, signed in the manifest and checked by `fleet verify`; refused on an nRF9160
before anything is written to it."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleet.credentials import attest_token_problem, parse_attest_token, parse_keygen
from fleet.manifest import sign, verify, write_manifest
from fleet.nrf91 import attestation_problem, firmware_version
from fleet.station_key import load_public_key, load_signing_key
from tests.runhelpers import fleet, logged_commands, run_json, write_plan

ATTEST = "{timeout_s: 5, keygen_timeout_s: 10, retries: 2, attestation_token: true}"
_WRITES = ("AT+CFUN=", "AT%KEYGEN", "AT%CMNG=0", "AT%CMNG=3")


def _plan(tmp_path: Path, model: str, ports: str = "sim://0-1") -> Path:
    return write_plan(tmp_path, ports=ports, defaults=ATTEST,
                      extra=f"simulator: {{state: sim.json, log: sim.log, model: {model}}}\n")


def _commands(log: Path) -> list[str]:
    return [command.upper() for command in logged_commands(log)]


def _manifest(doc: dict[str, Any]) -> dict[str, Any]:
    signed: dict[str, Any] = json.loads(Path(doc["manifest"]).read_text())["signed"]
    return signed


def test_firmware_versions_and_which_modems_attest() -> None:
    assert firmware_version("mfw_nrf91x1_2.0.2") == (2, 0, 2)
    assert firmware_version("mfw_nrf9160_1.3.0-FOTA-TEST") == (1, 3, 0)
    assert firmware_version("mfw_nrf9160") is None
    assert attestation_problem("nRF9151-LACA", "mfw_nrf91x1_2.0.2") is None
    assert "nRF9160-SICA" in (attestation_problem("nRF9160-SICA", "mfw_nrf9160_1.3.5") or "")
    assert ">= 2.0.0" in (attestation_problem("nRF9161-LACA", "mfw_nrf91x1_1.9.9") or "")
    assert "no version" in (attestation_problem("nRF9151-LACA", "custom") or "")


def test_tokens_of_an_nrf9151_are_in_the_signed_manifest_and_verified(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "nrf9151")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    commands = _commands(tmp_path / "sim.log")
    assert commands.index("AT%ATTESTTOKEN") < min(
        i for i, c in enumerate(commands) if c.startswith(_WRITES))
    first = {}
    for device in _manifest(doc)["devices"]:
        token = parse_attest_token(device["attestation"]["token"])
        assert token.device_uuid == uuid.UUID(device["device_uuid"])
        assert all(parse_keygen(k["keygen_answer"]).payload.device_uuid == token.device_uuid
                   for k in device["keys"])
        assert device["attestation"]["read_at"].endswith("Z")
        first[device["imei"]] = device["attestation"]["token"]
    assert {d["imei"]: d["attestation_token"] for d in doc["devices"]} == first
    verified = fleet("verify", doc["manifest"], "--pubkey", tmp_path / "keys" / "station.pub.pem")
    assert verified.returncode == 0, verified.stdout
    assert "2 attestation token(s)" in verified.stdout
    # A re-run with nothing to write still reads each device's token (a fresh nonce each time).
    code, again, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    tokens = {d["imei"]: d["attestation"]["token"] for d in _manifest(again)["devices"]}
    assert tokens.keys() == first.keys() and all(tokens[i] != first[i] for i in first)
    assert all(k["outcome"] == "unchanged" for d in again["devices"] for k in d["keys"])


def test_an_nrf9160_fails_before_any_write_and_check_says_so(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "nrf9160", ports="sim://0")
    code, checked, err = run_json(plan, tmp_path / "j.sqlite", "--check")
    assert code == 1, err
    assert "nRF9160-SICA" in checked["devices"][0]["error"]
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    device = doc["devices"][0]
    assert device["outcome"] == "failed" and not device["changed"]
    assert "%ATTESTTOKEN needs an nRF91x1 modem" in device["error"]
    assert "nothing was written" in device["error"]
    assert not [c for c in _commands(tmp_path / "sim.log") if c.startswith(_WRITES)]
    assert "attestation" not in _manifest(doc)["devices"][0]


def test_a_plan_without_attestation_token_records_none(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0",
                      extra="simulator: {state: sim.json, log: sim.log, model: nrf9151}\n")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    # Read in each run all the same: the new device's UUID, then which board is in the slot.
    assert _commands(tmp_path / "sim.log").count("AT%ATTESTTOKEN") == 2
    assert "attestation" not in _manifest(doc)["devices"][0]
    assert doc["devices"][0]["attestation_token"] is None


def test_an_nrf9160_is_provisioned_with_one_info_line_that_says_what_it_means(
        tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0",
                      extra="simulator: {state: sim.json, log: sim.log, model: nrf9160}\n")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    assert doc["devices"][0]["outcome"] == "done"
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    mine = [e for e in events if e.get("slot") == "slot0"]
    assert not [e for e in mine if e["level"] in ("warning", "error")], mine
    refused = [e for e in mine if e["event"].startswith("%ATTESTTOKEN refused")]
    assert len(refused) == 1 and refused[0]["level"] == "info", refused
    assert "needs an nRF91x1 modem" in refused[0]["event"]
    assert "told only by the device UUID in its %KEYGEN answers" in refused[0]["event"]


@pytest.mark.forged_manifests("swapped*.json")
def test_verify_refuses_a_token_of_another_device(tmp_path: Path) -> None:
    code, doc, err = run_json(_plan(tmp_path, "nrf9151"), tmp_path / "j.sqlite")
    assert code == 0, err
    signed = _manifest(doc)
    one, two = signed["devices"]
    one["attestation"], two["attestation"] = two["attestation"], one["attestation"]
    key = load_signing_key(tmp_path / "keys" / "station.pem")
    path = write_manifest(tmp_path / "swapped.json", sign(signed, key))
    report = verify(path.read_bytes(),
                    trusted=[load_public_key(tmp_path / "keys" / "station.pub.pem")])
    assert not report.ok
    assert [c.name for c in report.failures] == ["attestation", "attestation"]
    assert f"not {one['device_uuid']}" in report.failures[0].detail
    assert attest_token_problem("x.y", None) is not None


def _old_firmware(tmp_path: Path, firmware: str) -> None:
    """Two simulated modems (made by a run that writes nothing), the first on ``firmware``."""
    code, _, err = run_json(write_plan(tmp_path, ports="sim://0-1", name="probe.yaml",
                                       extra="simulator: {state: sim.json}\n"),
                            tmp_path / "probe.sqlite", "--check")
    assert code == 0, err
    state = json.loads((tmp_path / "sim.json").read_text())
    state["modems"][0]["firmware"] = firmware
    (tmp_path / "sim.json").write_text(json.dumps(state))


def test_a_modem_firmware_without_keygen_fails_its_keys_before_any_write(tmp_path: Path) -> None:
    _old_firmware(tmp_path, "mfw_nrf9160_1.2.7")
    plan = write_plan(tmp_path, ports="sim://0-1",
                      extra="simulator: {state: sim.json, log: sim.log}\n")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    old, new = sorted(doc["devices"], key=lambda d: d["port"])
    assert old["outcome"] == "failed" and not old["changed"]
    assert {k["outcome"] for k in old["keys"]} == {"failed"}
    assert all("the modem firmware is mfw_nrf9160_1.2.7: %KEYGEN needs modem firmware >= "
               "1.3.0" in k["error"] for k in old["keys"])
    assert new["outcome"] == "done"
    sent = [json.loads(line) for line in (tmp_path / "sim.log").read_text().splitlines()]
    assert not [e for e in sent if e.get("modem") == 0
                and e.get("command", "").upper().startswith(_WRITES)]


def test_a_firmware_without_the_cmng_sha_fails_the_key_with_a_certificate(
        tmp_path: Path) -> None:
    from tests.certhelpers import make_ca
    from tests.runhelpers import KEYS

    make_ca(tmp_path / "ca")
    _old_firmware(tmp_path, "mfw_nrf9160_1.3.1")
    keys = KEYS.replace("    if_exists: keep\n", "    if_exists: keep\n"
                        "    ca: {cert: ca/ca.pem, key: ca/ca.key}\n")
    plan = write_plan(tmp_path, ports="sim://0", keys=keys,
                      extra="simulator: {state: sim.json}\n")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    tls, endorsement = doc["devices"][0]["keys"]
    assert tls["outcome"] == "failed" and "1.3.1: the certificate step" in tls["error"]
    assert ">= 1.3.2" in tls["error"]
    assert endorsement["outcome"] == "generated"


def test_a_damaged_token_in_the_journal_fails_its_device_in_the_record(tmp_path: Path) -> None:
    import anyio

    from fleet.journal import Journal, RunInfo
    from fleet.plan import load_plan
    from fleet.report import build_run_record

    plan_path = _plan(tmp_path, "nrf9151", ports="sim://0")
    code, doc, err = run_json(plan_path, tmp_path / "j.sqlite")
    assert code == 0, err
    other = parse_attest_token(json.loads(Path(doc["manifest"]).read_text())["signed"]
                               ["devices"][0]["attestation"]["token"])
    forged = other.value.replace(other.value[:8], "hQFQAAAA", 1)  # another device's UUID

    with sqlite3.connect(tmp_path / "j.sqlite") as conn:  # changed outside fleet
        conn.execute("UPDATE run_devices SET attestation_token = ?", (forged,))

    async def record() -> Any:
        journal = await Journal.open(tmp_path / "j.sqlite")
        try:
            report = await journal.run_report(doc["run_id"])
        finally:
            await journal.aclose()
        run = RunInfo(run_id=doc["run_id"], started_at=doc["started_at"], resumed=False)
        return build_run_record(report, load_plan(plan_path), run, ended_at=doc["ended_at"],
                                complete=True)

    device = anyio.run(record).devices[0]
    assert device.attestation is None and device.outcome.value == "failed"
    assert "the journal's attestation token is not reported: it is from device" in device.error
