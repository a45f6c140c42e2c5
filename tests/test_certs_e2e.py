"""Certificates end to end: `fleet run` against `fleet sim` on real ptys."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.certs import LocalCa, canonical_pem
from fleet.credentials import parse_keygen
from tests.certhelpers import NOW, TLS, csr_answer, make_ca, script_ca_command
from tests.runhelpers import KEYS, fleet, run_json, write_plan
from tests.simproc import LINES, command, open_port, run_sim

CA_KEYS = KEYS.replace("    if_exists: keep\n", """    if_exists: keep
    ca:
      cert: ca/ca.pem
      key: ca/ca.key
      validity_days: 365
      chain: ca/ca.pem
""")


def _tls(doc: dict[str, Any], device: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    devices = doc["devices"] if device is None else [device]
    return [k for d in devices for k in d["keys"] if k["name"] == "tls"]


def _serials(doc: dict[str, Any]) -> dict[str, str]:
    return {d["imei"]: _tls(doc, d)[0]["certificate"]["serial"] for d in doc["devices"]}


def _writes(lines: list[dict[str, Any]]) -> list[str]:
    return [r["command"] for r in lines if "fault" not in r
            and r["command"].upper().startswith("AT%CMNG=0")]


def _spki(pem: str) -> bytes:
    return serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.forged_manifests("tampered.json")
@pytest.mark.parametrize("line", LINES)
def test_local_ca_certificates_rerun_rewrite_and_export(tmp_path: Path, line: str) -> None:
    created = fleet("ca", "init", tmp_path / "ca", "--cn", "Line 1 test CA")
    assert created.returncode == 0, created.stderr
    ca_pem = (tmp_path / "ca" / "ca.pem").read_text()
    ca_cert = x509.load_pem_x509_certificate(ca_pem.encode())
    pubkey = tmp_path / "keys" / "station.pub.pem"
    with run_sim(tmp_path, 4, *LINES[line]) as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"), keys=CA_KEYS)
        journal = tmp_path / "journal.sqlite"
        code, first, err = run_json(plan, journal)
        assert code == 0, err
        assert first["changed"] is True
        for device in first["devices"]:
            tls = _tls(first, device)[0]
            assert tls["outcome"] == "generated"
            assert tls["certificate"]["outcome"] == "issued" and tls["certificate"]["error"] is None
            assert tls["ca_chain"]["outcome"] == "written"
            state = sim.modem_state(int(Path(device["port"]).name.removeprefix("modem")))
            stored = {(c["sec_tag"], c["type"]): c for c in state["credentials"]}
            assert {(TLS, 2), (TLS, 1), (TLS, 0), (33, 8)} <= set(stored)
            cert = x509.load_pem_x509_certificate(stored[(TLS, 1)]["content"].encode())
            assert _spki(tls["public_key_pem"]) == cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            cert.verify_directly_issued_by(ca_cert)  # chains to the CA
            assert stored[(TLS, 0)]["content"] == ca_pem  # and the CA is the root CA
            assert stored[(TLS, 1)]["content"] == tls["certificate"]["pem"]
        writes = _writes(sim.log_lines())
        assert len(writes) == 8  # certificate + chain per device
        assert all("\r" not in w and "\n" in w for w in writes)  # LF only, never CR
        manifest1 = Path(first["manifest"])
        verified = fleet("verify", manifest1, "--pubkey", pubkey)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "4 certificate(s)" in verified.stdout
        signed = json.loads(manifest1.read_text())["signed"]
        key = signed["devices"][0]["keys"][0]
        assert key["certificate"]["sha256"] == key["certificate"]["cmng_sha256"]
        assert key["ca_chain"]["cmng_sha256"] == key["ca_chain"]["sha256"]

        # A re-run changes nothing: no %CMNG=0, no new certificate.
        before = len(sim.log_lines())
        code, second, err = run_json(plan, journal)
        assert code == 0, err
        assert second["changed"] is False
        assert {k["certificate"]["outcome"] for k in _tls(second)} == {"unchanged"}
        assert not _writes(sim.log_lines()[before:])
        assert _serials(second) == _serials(first)

        # The certificate disappears from modem0: --check says so, a run writes the SAME one.
        with open_port(sim.ports[0]) as port:
            assert command(port, "AT+CMEE=1", shell=line == "shell") == ["OK"]
            assert command(port, f"AT%CMNG=3,{TLS},1", shell=line == "shell") == ["OK"]
        code, check, err = run_json(plan, journal, "--check")
        assert code == 0 and check["changed"] is True, err
        planned = {(p["name"], p["type"]): p["action"] for d in check["devices"]
                   for p in d["planned"] if d["port"].endswith("modem0")}
        assert planned[("tls", "certificate")] == "write"
        before = len(sim.log_lines())
        code, third, err = run_json(plan, journal)
        assert code == 0, err
        outcomes = {d["port"].rsplit("/", 1)[-1]: _tls(third, d)[0]["certificate"]["outcome"]
                    for d in third["devices"]}
        assert outcomes == {"modem0": "rewritten", "modem1": "unchanged", "modem2": "unchanged",
                            "modem3": "unchanged"}
        assert len(_writes(sim.log_lines()[before:])) == 1
        assert _serials(third) == _serials(first)

    # nRF Cloud's onboarding CSV from the three verified manifests: one row per device.
    manifests = [Path(d["manifest"]) for d in (first, second, third)]
    exported = fleet("export", "nrfcloud", *manifests, "--pubkey", pubkey, "--tags", "line1;test")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert len(rows) == 4  # no header row, one per device
    pems = {d["imei"]: _tls(first, d)[0]["certificate"]["pem"] for d in first["devices"]}
    for row in rows:
        device_id, subtype, tags, fw_types, pem = row
        assert device_id in pems  # the certificate's CN, which the plan made the IMEI
        assert (subtype, tags, fw_types) == ("", "line1|test", "APP|MODEM")
        assert pem == pems[device_id]
    assert exported.stdout.count('"-----BEGIN CERTIFICATE-----\n') == 4  # quoted multi-line
    by_imei = fleet("export", "nrfcloud", manifests[0], "--pubkey", pubkey,
                    "--device-id", "nrf-imei")
    assert sorted(r[0] for r in csv.reader(io.StringIO(by_imei.stdout))) == sorted(
        f"nrf-{imei}" for imei in pems)

    # A manifest changed after signing is refused, and nothing is printed.
    document = json.loads(manifests[0].read_text())
    cert = document["signed"]["devices"][1]["keys"][0]["certificate"]
    cert["pem"] = pems[document["signed"]["devices"][0]["imei"]]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document))
    refused = fleet("export", "nrfcloud", tampered, "--pubkey", pubkey)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "does not verify" in refused.stderr and "public key" in refused.stderr


def test_signed_but_never_written_certificate_is_written_on_the_next_run(tmp_path: Path) -> None:
    """The journal holds the issued certificate, the write failed (store full): the next run
    writes that SAME certificate instead of signing a new one."""
    make_ca(tmp_path / "ca")
    keys = CA_KEYS.replace("      chain: ca/ca.pem\n", "")
    plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"), keys=keys,
                      slot_keys="[tls]")
    journal = tmp_path / "journal.sqlite"
    with run_sim(tmp_path, 1, "--capacity", "1"):
        code, first, err = run_json(plan, journal)
    assert code == 1, err
    device = first["devices"][0]
    tls = _tls(first)[0]
    assert device["outcome"] == "failed" and "certificate" in device["error"]
    assert "515" in tls["error"] and tls["certificate"]["outcome"] == "failed"
    serial = tls["certificate"]["serial"]
    assert serial  # issued and journaled before the write
    with run_sim(tmp_path, 1, "--capacity", "8") as sim:
        before = len(sim.log_lines())
        code, second, err = run_json(plan, journal)
        assert code == 0, err
        tls2 = _tls(second)[0]
        assert tls2["outcome"] == "unchanged"
        assert tls2["certificate"]["outcome"] == "issued"
        assert tls2["certificate"]["serial"] == serial
        (write,) = _writes(sim.log_lines()[before:])
        assert tls["certificate"]["pem"] in write
    for doc in (first, second):
        verified = fleet("verify", doc["manifest"], "--pubkey",
                         tmp_path / "keys" / "station.pub.pem")
        assert verified.returncode == 0, verified.stdout


def test_command_ca_in_process(tmp_path: Path) -> None:
    cert_path, key_path, issuer, _ = make_ca(tmp_path / "ca", name="Script CA")
    argv = json.dumps(script_ca_command(cert_path, key_path))
    keys = KEYS.replace("    if_exists: keep\n", f"""    if_exists: keep
    ca:
      command: {argv}
      issuer: ca/ca.pem
      chain: ca/ca.pem
""")
    extra = "simulator: {state: sim.json, log: sim.log, model: nrf9151}\n"
    plan = write_plan(tmp_path, ports="sim://0-1", keys=keys, extra=extra, slot_keys="[tls]")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    for key in _tls(doc):
        cert = x509.load_pem_x509_certificate(key["certificate"]["pem"].encode())
        cert.verify_directly_issued_by(issuer)
        assert key["certificate"]["issuer"] == "CN=Script CA"
    verified = fleet("verify", doc["manifest"], "--pubkey", tmp_path / "keys" / "station.pub.pem")
    assert verified.returncode == 0, verified.stdout

    failing = write_plan(tmp_path, ports="sim://2", name="failing.yaml", slot_keys="[tls]",
                         keys=keys.replace(argv, json.dumps(
                             script_ca_command(cert_path, key_path, "fail"))), extra=extra)
    code, doc, err = run_json(failing, tmp_path / "j2.sqlite")
    assert code == 1, err
    assert "certificate: CA command" in doc["devices"][0]["error"]
    assert "the CA is down" in doc["devices"][0]["error"]
    state = json.loads((tmp_path / "sim.json").read_text())
    modem2 = next(m for m in state["modems"] if m["index"] == 2)
    assert {(c["sec_tag"], c["type"]) for c in modem2["credentials"]} == {(TLS, 2)}


def test_certificates_fleet_did_not_write(tmp_path: Path) -> None:
    """A certificate for the key that another tool wrote is kept (pre-existing); one for another
    key cannot work in that sec_tag and is replaced."""
    make_ca(tmp_path / "ca")
    extra = "simulator: {state: sim.json, log: sim.log}\n"
    plain = write_plan(tmp_path, ports="sim://0-1", extra=extra, slot_keys="[tls]",
                       name="plain.yaml")
    journal = tmp_path / "j.sqlite"
    code, first, err = run_json(plain, journal)
    assert code == 0, err
    manifest = json.loads(Path(first["manifest"]).read_text())["signed"]
    answers = {d["port"]: d["keys"][0]["keygen_answer"] for d in manifest["devices"]}
    op_cert, op_key, op_ca, op_ca_key = make_ca(tmp_path / "operator", name="Operator CA")
    operator = LocalCa(cert_path=op_cert, key_path=op_key, certificate=op_ca,
                       private_key=op_ca_key)
    csr = parse_keygen(answers["sim://0"]).csr
    other = csr_answer().csr
    assert csr is not None and other is not None
    theirs = canonical_pem([operator.sign(csr, now=NOW)]).replace("\n", "\r\n")  # old tool: CRLF
    stale = canonical_pem([operator.sign(other, now=NOW)])
    state = json.loads((tmp_path / "sim.json").read_text())
    for modem in state["modems"]:
        content = theirs if modem["index"] == 0 else stale
        modem["credentials"].append({"sec_tag": TLS, "type": 1, "content": content})
    (tmp_path / "sim.json").write_text(json.dumps(state))

    plan = write_plan(tmp_path, ports="sim://0-1", keys=CA_KEYS, extra=extra, slot_keys="[tls]")
    code, second, err = run_json(plan, journal)
    assert code == 0, err
    certificate = {d["port"]: _tls(second, d)[0]["certificate"] for d in second["devices"]}
    assert certificate["sim://0"]["outcome"] == "pre-existing"
    assert certificate["sim://0"]["issuer"] == "CN=Operator CA"
    assert certificate["sim://1"]["outcome"] == "issued"
    assert certificate["sim://1"]["issuer"] == "CN=Test CA"
    state = json.loads((tmp_path / "sim.json").read_text())
    stored = {m["index"]: {c["type"]: c.get("content") for c in m["credentials"]
                           if c["sec_tag"] == TLS} for m in state["modems"]}
    assert stored[0][1] == theirs  # kept byte for byte
    assert stored[1][1] == certificate["sim://1"]["pem"]
    verified = fleet("verify", second["manifest"], "--pubkey",
                     tmp_path / "keys" / "station.pub.pem")
    assert verified.returncode == 0, verified.stdout

    code, third, err = run_json(plan, journal)
    assert code == 0 and third["changed"] is False, err
    assert [_tls(third, d)[0]["certificate"]["outcome"] for d in third["devices"]] == [
        "pre-existing", "unchanged"]


def test_firmware_without_sha_column_fails_the_certificate_step_saying_why(
        tmp_path: Path) -> None:
    """Older firmware lists credentials without the SHA column (the simulator's list-no-sha
    fault): the key step still works (it needs only presence), but a written certificate cannot
    be confirmed, and the device fails with a reason that says so rather than "lists
    nothing"."""
    import anyio

    from fleet.plan import load_plan
    from fleet.run import RunOptions, run_plan

    make_ca(tmp_path / "ca")
    plan_path = write_plan(tmp_path, ports="sim://0", keys=CA_KEYS, slot_keys="[tls]",
                           extra="simulator: {state: sim.json, log: sim.log, "
                           "faults: ['list-no-sha:1']}\n")
    outcome = anyio.run(lambda: run_plan(load_plan(plan_path), RunOptions(
        journal=tmp_path / "j.sqlite", handle_signals=False)), backend="asyncio")
    assert outcome.exit_code == 1
    record = outcome.record.devices[0]
    assert "without a SHA-256 column" in (record.error or ""), record.error
    tls = next(k for k in record.keys if k.name == "tls")
    assert tls.outcome.value == "failed" and (tls.error or "").startswith("certificate: ")
    assert tls.keygen_answer  # the key itself was made, verified and captured
    log = [json.loads(line) for line in (tmp_path / "sim.log").read_text().splitlines()]
    assert any(entry.get("fault") == "list-no-sha" for entry in log)


def test_export_refuses_a_plan_whose_devices_share_one_common_name(tmp_path: Path) -> None:
    """A fixed CN gives four devices one nRF Cloud device id; a CN a spreadsheet would run is
    refused too. Nothing is printed; every device is named with the reason."""
    make_ca(tmp_path / "ca")
    pubkey = tmp_path / "keys" / "station.pub.pem"
    fixed = CA_KEYS.replace('CN: "{imei}"', 'CN: "Acme"')
    plan = write_plan(tmp_path, ports="sim://0-3", keys=fixed, slot_keys="[tls]")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    imeis = [d["imei"] for d in doc["devices"]]
    refused = fleet("export", "nrfcloud", doc["manifest"], "--pubkey", pubkey)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "device id 'Acme' (cn) would be shared by 4 different devices" in refused.stderr
    assert all(f"device {imei}" in refused.stderr for imei in imeis)
    assert "Traceback" not in refused.stderr

    formula = CA_KEYS.replace('CN: "{imei}"', 'CN: "=1+{imei}"')
    plan = write_plan(tmp_path, ports="sim://4-5", keys=formula, slot_keys="[tls]",
                      name="formula.yaml")
    code, doc, err = run_json(plan, tmp_path / "j2.sqlite")
    assert code == 0, err
    refused = fleet("export", "nrfcloud", doc["manifest"], "--pubkey", pubkey)
    assert refused.returncode == 1 and refused.stdout == ""
    for device in doc["devices"]:
        assert (f"device {device['imei']}: device id (cn) '=1+{device['imei']}' starts with "
                "'='") in refused.stderr
