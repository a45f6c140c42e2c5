"""The record of a run says what happened, at the edges too: interruptions at every stage, boards
that lie about who they are, keys deleted before a failure, a journal whose disk fills. Each
test runs the real `fleet run` against the simulator and checks the `--json` document, the
screen summary and the manifest (which must pass `fleet verify`) against the journal and the
simulator's own state."""

from __future__ import annotations

import datetime
import json
import resource
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.credentials import parse_keygen
from fleet.manifest import verify
from fleet.nrf91 import luhn_digit
from tests.certhelpers import NOW, make_ca
from tests.runhelpers import (
    KEYS,
    fleet,
    journal_rows,
    logged_commands,
    run_json,
    wait_for,
    write_plan,
)
from tests.simproc import command, open_port, run_sim

TLS = 16842753
CAPTURED = "action = 'keygen' AND outcome = 'ok'"  #: steps of a captured %KEYGEN answer
REPLACE = f"""
keys:
  tls:
    sec_tag: {TLS}
    type: client_key
    response: csr
    if_exists: replace
"""


def _ports(tmp_path: Path) -> str:
    return str(tmp_path / "ports" / "modem*")


def _start(plan: Path, journal: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fleet", "run", str(plan), "--journal",
                             str(journal), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _interrupt(plan: Path, journal: Path, until: Callable[[], bool], what: str, signum: int,
               *args: str) -> tuple[int, str, str]:
    """`fleet run PLAN ARGS` stopped by ``signum`` once ``until()`` holds: (exit, stdout,
    stderr)."""
    proc = _start(plan, journal, *args)
    wait_for(until, what)
    return _stop(proc, signum)


def _steps(journal: Path, where: str, count: int = 1) -> Callable[[], bool]:
    """Whether the journal has ``count`` steps (at least) that match ``where``."""
    return lambda: len(journal_rows(journal, f"SELECT 1 FROM steps WHERE {where}")) >= count


def _document(out: str, err: str) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{out}\n{err}") from exc
    return document


def _manifest(document: dict[str, Any]) -> dict[str, Any]:
    """The run's manifest, which must pass `fleet verify`."""
    assert document["manifest"], document
    data = Path(document["manifest"]).read_bytes()
    report = verify(data, trusted=None)
    assert report.ok, [c.line() for c in report.failures]
    signed: dict[str, Any] = json.loads(data)["signed"]
    return signed


def _outcomes(devices: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["slot"]: {k["name"]: k["outcome"] for k in d["keys"]} for d in devices}


def _edit_state(sim_dir: Path, edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """Change the simulator's state file between two simulator runs."""
    path = sim_dir / "sim.json"
    state = json.loads(path.read_text())
    edit(state["modems"])
    path.write_text(json.dumps(state))


def _luhn(digits: str) -> str:
    return digits + luhn_digit(digits)


def _make_key_behind_fleets_back(port: Path, sec_tag: int, *,
                                 ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
                                 = None) -> None:
    """A client key made with plain pyserial, and with ``ca`` a certificate for it."""
    serial_port = open_port(port)
    try:
        command(serial_port, "AT+CMEE=1")
        command(serial_port, "AT+CFUN=4")
        answer = command(serial_port, f"AT%KEYGEN={sec_tag},2,0")
        assert answer[-1] == "OK", answer
        if ca is not None:
            ca_cert, ca_key = ca
            public_key = parse_keygen(answer[0]).public_key
            cert = (x509.CertificateBuilder().subject_name(ca_cert.subject)
                    .issuer_name(ca_cert.subject).public_key(public_key)
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(NOW - datetime.timedelta(days=1))
                    .not_valid_after(NOW + datetime.timedelta(days=365))
                    .sign(ca_key, hashes.SHA256()))
            pem = cert.public_bytes(serialization.Encoding.PEM).decode().strip()
            written = command(serial_port, f'AT%CMNG=0,{sec_tag},1,"{pem}"')
            assert written[-1] == "OK", written
    finally:
        serial_port.close()


def test_sigterm_between_the_two_keys_of_a_device_gives_a_manifest_that_verifies(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 4, "--profile", "realistic"):
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "j.sqlite"
        code, out, err = _interrupt(plan, journal, _steps(journal, CAPTURED),
                                    "a first captured key", signal.SIGTERM, "--json")
        assert code == 3, err
        document = _document(out, err)
        assert document["interrupted"] is True and document["complete"] is False
        signed = _manifest(document)
        assert signed["run"]["complete"] is False
        assert len(signed["devices"]) == 4
        half_done = [d for d in signed["devices"]
                     if [k["outcome"] for k in d["keys"]].count("generated") == 1]
        assert half_done, _outcomes(signed["devices"])
        for device in half_done:
            assert device["device_uuid"] is not None
        assert _outcomes(document["devices"]) == _outcomes(signed["devices"])
        # The resumed run finishes and its manifest covers everything the run did.
        code, again, err = run_json(plan, journal)
        assert code == 0, err
        assert again["resumed"] is True
        final = _manifest(again)
        assert final["run"]["complete"] is True
        # A %KEYGEN the SIGTERM cut off made a key nobody saw: deleted and made again.
        assert {k["outcome"] for d in final["devices"] for k in d["keys"]} <= {
            "generated", "recovered"}


def test_sigterm_during_a_keygen_reports_the_key_interrupted(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--profile", "realistic"):
        plan = write_plan(tmp_path, ports=_ports(tmp_path), slot_keys="[tls]")
        journal = tmp_path / "j.sqlite"
        code, out, err = _interrupt(plan, journal,
                                    _steps(journal, "action = 'keygen' AND outcome IS NULL", 2),
                                    "two %KEYGEN sent", signal.SIGTERM, "--json")
        assert code == 3, err
        document = _document(out, err)
        signed = _manifest(document)
        for devices in (document["devices"], signed["devices"]):
            assert [k["outcome"] for d in devices for k in d["keys"]] == ["interrupted"] * 2
        assert document["changed"] is True  # a %KEYGEN reached the modems
        assert all(d["changed"] for d in document["devices"])


def test_slots_waiting_for_their_turn_are_reported_not_started(tmp_path: Path) -> None:
    with run_sim(tmp_path, 4, "--profile", "realistic"):
        plan = write_plan(tmp_path, ports=_ports(tmp_path), slot_keys="[tls]")
        journal = tmp_path / "j.sqlite"
        code, out, err = _interrupt(plan, journal, _steps(journal, "action = 'keygen'"),
                                    "the first slot's %KEYGEN", signal.SIGINT, "--json",
                                    "--concurrency", "1")
        assert code == 3, err
        document = _document(out, err)
        signed = _manifest(document)
        for devices in (document["devices"], signed["devices"]):
            assert len(devices) == 4
            outcomes = sorted(d["outcome"] for d in devices)
            assert outcomes.count("not-started") == 3, outcomes
            waiting = [d for d in devices if d["outcome"] == "not-started"]
            assert all(k["outcome"] == "not-attempted" for d in waiting for k in d["keys"])
        assert document["summary"]["not-started"] == 3
        assert signed["summary"]["not-started"] == 3


def test_two_boards_with_one_imei_both_fail_and_share_nothing(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2):
        pass
    imei = json.loads((tmp_path / "sim.json").read_text())["modems"][0]["imei"]

    def clone(modems: list[dict[str, Any]]) -> None:
        modems[1]["imei"] = imei

    _edit_state(tmp_path, clone)
    with run_sim(tmp_path, 2) as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "j.sqlite"
        for _ in range(2):  # the re-run fails them again: nothing became permanent
            code, document, err = run_json(plan, journal)
            assert code == 1, err
            signed = _manifest(document)
            for devices in (document["devices"], signed["devices"]):
                assert [d["outcome"] for d in devices] == ["failed", "failed"]
                for device in devices:
                    assert f"two boards report IMEI {imei}" in device["error"]
        # Whatever one board's slot captured is that board's: its device UUID and its key.
        uuids = {m["index"]: m["device_uuid"] for m in sim.state()["modems"]}
        known = journal_rows(journal, "SELECT device_uuid FROM devices")
        assert len(known) == 1 and known[0][0] in (uuids[0], uuids[1], None)
        for (answer,) in journal_rows(journal, "SELECT answer FROM keys WHERE answer IS NOT NULL"):
            assert str(parse_keygen(answer).payload.device_uuid) == known[0][0]


def test_a_device_uuid_known_under_another_imei_stops_the_slot_before_any_write(
        tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    plan = write_plan(tmp_path, ports=_ports(tmp_path))
    with run_sim(tmp_path, 1, "--model", "nrf9151"):  # %ATTESTTOKEN: nRF91x1
        code, document, err = run_json(plan, journal)
        assert code == 0, err
        old_imei = document["devices"][0]["imei"]
    new_imei = _luhn(old_imei[:8] + "999999")

    def reprogram(modems: list[dict[str, Any]]) -> None:
        modems[0]["imei"] = new_imei
        modems[0]["credentials"] = []  # a new board as far as the keys go

    _edit_state(tmp_path, reprogram)
    with run_sim(tmp_path, 1) as sim:
        before = len(sim.log_lines())
        code, document, err = run_json(plan, journal)
        assert code == 1, err
        device = document["devices"][0]
        assert device["imei"] == new_imei and device["outcome"] == "failed"
        assert f"belongs to IMEI {old_imei}" in device["error"]
        sent = [r["command"].upper() for r in sim.log_lines()[before:]]
        assert not [c for c in sent if c.startswith(("AT%KEYGEN", "AT%CMNG=3", "AT+CFUN="))]
        _manifest(document)


def test_a_key_replaced_behind_fleets_back_is_never_reported_with_the_old_csr(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 1) as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "j.sqlite"
        code, document, err = run_json(plan, journal)  # it makes the keys and lists them
        assert code == 0, err
        first = {k["name"]: k for k in _manifest(document)["devices"][0]["keys"]}
        listed = {(c["sec_tag"], c["type"]): c for c in sim.modem_state(0)["credentials"]}
        for name, tag, kind in (("tls", TLS, 2), ("endorsement", 33, 8)):
            assert first[name]["outcome"] == "generated"
            assert first[name]["cmng_sha256"] == listed[tag, kind]["sha256"], first[name]
        port = open_port(sim.ports[0])
        try:  # both keys made again with plain pyserial
            for line in ("AT+CFUN=4", f"AT%CMNG=3,{TLS},2", f"AT%KEYGEN={TLS},2,0",
                         "AT%CMNG=3,33,8", "AT%KEYGEN=33,8"):
                assert command(port, line)[-1] == "OK", line
        finally:
            port.close()
        before = len(sim.log_lines())
        code, document, err = run_json(plan, journal)
        assert code == 1, err
        signed = _manifest(document)
        for devices in (document["devices"], signed["devices"]):
            keys = {k["name"]: k for k in devices[0]["keys"]}
            assert keys["tls"]["outcome"] == "failed" and keys["tls"]["csr_pem"] is None
            assert "not the one fleet made" in keys["tls"]["error"]
            assert keys["endorsement"]["outcome"] == "changed"
            assert keys["endorsement"]["public_key_pem"] != first["endorsement"]["public_key_pem"]
        sent = [r["command"].upper() for r in sim.log_lines()[before:]]
        assert not [c for c in sent if c.startswith((f"AT%KEYGEN={TLS}", "AT%CMNG=3"))], sent


def test_a_device_lost_during_its_keygen_is_reported_as_such(tmp_path: Path) -> None:
    with run_sim(tmp_path, 1, "--profile", "realistic") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), slot_keys="[tls]")
        journal = tmp_path / "j.sqlite"
        proc = _start(plan, journal, "--json")
        wait_for(_steps(journal, "action = 'keygen'"), "the %KEYGEN")
        sim.stop()  # its ports go away while the modem makes the key
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    document = _document(out, err)
    assert document["interrupted"] is False
    key = _manifest(document)["devices"][0]["keys"][0]
    assert key["outcome"] == "interrupted", key
    assert "the device was lost" in key["error"] and "the next run finds out" in key["error"]


def test_replace_then_failing_keygen_records_the_deletion(tmp_path: Path) -> None:
    with run_sim(tmp_path, 1) as sim:
        _make_key_behind_fleets_back(sim.ports[0], TLS)
    with run_sim(tmp_path, 1, "--fault", "keygen-fail:1.0") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), keys=REPLACE, slot_keys="[tls]")
        code, document, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 1, err
        assert document["changed"] is True
        key = document["devices"][0]["keys"][0]
        assert key["outcome"] == "failed" and key["deleted"] is True
        signed = _manifest(document)
        assert signed["devices"][0]["keys"][0]["deleted"] is True
        stored = {(c["sec_tag"], c["type"]) for c in sim.modem_state(0)["credentials"]}
        assert (TLS, 2) not in stored  # what the record says: the old key is gone


def test_replacing_a_key_deletes_its_client_certificate_too(tmp_path: Path) -> None:
    _, _, ca_cert, ca_key = make_ca(tmp_path / "old-ca")
    with run_sim(tmp_path, 1) as sim:
        _make_key_behind_fleets_back(sim.ports[0], TLS, ca=(ca_cert, ca_key))
        assert (TLS, 1) in {(c["sec_tag"], c["type"]) for c in sim.modem_state(0)["credentials"]}
        plan = write_plan(tmp_path, ports=_ports(tmp_path), keys=REPLACE, slot_keys="[tls]")
        before = len(sim.log_lines())
        code, document, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        sent = [r["command"].upper() for r in sim.log_lines()[before:] if "fault" not in r]
        assert sent.index(f"AT%CMNG=3,{TLS},1") < sent.index(f"AT%CMNG=3,{TLS},2")
        stored = {(c["sec_tag"], c["type"]) for c in sim.modem_state(0)["credentials"]}
        assert (TLS, 1) not in stored and (TLS, 2) in stored
        assert document["devices"][0]["keys"][0]["outcome"] == "generated"
        _manifest(document)


def test_a_journal_whose_disk_fills_never_claims_a_complete_run(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-31", slot_keys="[tls]")
    journal = tmp_path / "j.sqlite"

    def small_files() -> None:  # what a full disk does to the journal's writes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (160_000, 160_000))

    result = subprocess.run([sys.executable, "-m", "fleet", "run", str(plan), "--journal",
                             str(journal), "--json"], capture_output=True, text=True,
                            timeout=300, preexec_fn=small_files, check=False)
    document = _document(result.stdout, result.stderr)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert document["journal_error"], document
    assert document["complete"] is False
    assert len(document["devices"]) == 32
    # Only what the journal holds is ever signed: nothing, until the journal has it all.
    assert document["manifest"] is None
    assert "the journal could not record everything" in document["manifest_error"]
    # With room again, the next run resumes and completes.
    code, again, err = run_json(plan, journal)
    assert code == 0, err
    assert _manifest(again)["run"]["complete"] is True


def test_the_summary_on_screen_says_what_the_manifest_says(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--profile", "realistic"):
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "j.sqlite"
        _interrupt(plan, journal, _steps(journal, CAPTURED), "a first captured key",
                   signal.SIGKILL)
        result = fleet("run", plan, "--journal", journal)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        manifest = Path(next(line for line in lines if line.startswith("manifest: "))
                        .removeprefix("manifest: "))
        signed = json.loads(manifest.read_bytes())["signed"]
        assert verify(manifest.read_bytes(), trusted=None).ok
        for device in signed["devices"]:
            line = next(line for line in lines if line.startswith(device["slot"] + " "))
            assert device["outcome"] in line
            for key in device["keys"]:
                assert f"{key['name']}={key['outcome']}" in line, (key, line)
        # Resumed: the keys the first invocation made are reported as made, not "unchanged".
        assert "=unchanged" not in result.stdout


def test_the_summary_shows_issued_certificates(tmp_path: Path) -> None:
    created = fleet("ca", "init", tmp_path / "ca", "--cn", "Line 1 test CA")
    assert created.returncode == 0, created.stderr
    keys = KEYS.replace("    if_exists: keep\n", "    if_exists: keep\n    ca:\n"
                        "      cert: ca/ca.pem\n      key: ca/ca.key\n")
    with run_sim(tmp_path, 1):
        plan = write_plan(tmp_path, ports=_ports(tmp_path), keys=keys)
        result = fleet("run", plan, "--journal", tmp_path / "j.sqlite")
        assert result.returncode == 0, result.stderr
        assert "tls=generated cert=issued" in result.stdout
        assert "certificate serial" in result.stdout and "Line 1 test CA" in result.stdout


def test_ctrl_c_during_the_certificate_step_keeps_the_key_generated(tmp_path: Path) -> None:
    created = fleet("ca", "init", tmp_path / "ca", "--cn", "Line 1 test CA")
    assert created.returncode == 0, created.stderr
    keys = KEYS.replace("    if_exists: keep\n", "    if_exists: keep\n    ca:\n"
                        "      cert: ca/ca.pem\n      key: ca/ca.key\n      chain: ca/ca.pem\n")
    with run_sim(tmp_path, 2, "--profile", "realistic"):
        plan = write_plan(tmp_path, ports=_ports(tmp_path), keys=keys, slot_keys="[tls]")
        journal = tmp_path / "j.sqlite"
        code, out, err = _interrupt(
            plan, journal,
            lambda: bool(journal_rows(journal, "SELECT 1 FROM certs WHERE state = 'issued'")),
            "a certificate issued", signal.SIGINT, "--json")
        assert code == 3, err
        document = _document(out, err)
        signed = _manifest(document)
        captured = {imei for (imei,) in journal_rows(
            journal, "SELECT imei FROM keys WHERE state = 'captured'")}
        assert captured
        for devices in (document["devices"], signed["devices"]):
            for device in devices:
                if device["imei"] in captured:
                    assert device["keys"][0]["outcome"] == "generated", device
        # A certificate issued to be written may be on the device: never left out of the record.
        issued = {imei for (imei,) in journal_rows(
            journal, "SELECT imei FROM certs WHERE type = 1 AND state IN ('issued', 'confirmed')")}
        assert issued
        for devices in (document["devices"], signed["devices"]):
            for device in devices:
                if device["imei"] in issued:
                    certificate = device["keys"][0].get("certificate")
                    assert certificate is not None, device
                    assert certificate["outcome"] in ("interrupted", "issued"), certificate
        code, again, err = run_json(plan, journal)
        assert code == 0, err
        final = _manifest(again)
        for device in final["devices"]:  # one whose %KEYGEN the Ctrl-C cut off is recovered
            wanted = {"generated"} if device["imei"] in captured else {"generated", "recovered"}
            assert device["keys"][0]["outcome"] in wanted, device
        assert all(k["certificate"]["outcome"] == "issued"
                   for d in final["devices"] for k in d["keys"])



def _flip_a_character(answer: str) -> object:
    body, cose = answer.split(".")
    return body[:40] + ("A" if body[40] != "A" else "B") + body[41:] + "." + cose


@pytest.mark.parametrize("damage", [_flip_a_character, lambda answer: b"\x00\xff"],
                         ids=["one-character", "a-blob"])
def test_a_damaged_answer_in_the_journal_is_never_reported_or_signed(
        tmp_path: Path, damage: Callable[[str], object]) -> None:
    plan = write_plan(tmp_path, ports="sim://0", slot_keys="[tls]",
                      extra="simulator: {state: sim.json}\n")
    journal = tmp_path / "j.sqlite"
    code, _, err = run_json(plan, journal)
    assert code == 0, err
    with sqlite3.connect(journal) as conn:
        (answer,) = conn.execute("SELECT answer FROM keys WHERE type = 2").fetchone()
        conn.execute("UPDATE keys SET answer = ? WHERE type = 2", (damage(answer),))
    code, document, err = run_json(plan, journal)
    assert code == 1 and "Traceback" not in err, err
    signed = _manifest(document)
    for devices in (document["devices"], signed["devices"]):
        device = devices[0]
        assert device["outcome"] == "failed"
        key = device["keys"][0]
        assert key["outcome"] == "failed" and key["csr_pem"] is None
        assert "captured answer for this key is not reported" in key["error"]
        assert f"delete the key with AT%CMNG=3,{TLS},2 so that" in key["error"]
    assert signed["devices"][0]["keys"][0]["keygen_answer"] is None


def _swap_board(sim_state: Path, index: int, imei: str) -> None:
    """Another board in slot ``index``: a new IMEI and device UUID, no credentials."""
    state = json.loads(sim_state.read_text())
    modem = state["modems"][index]
    modem.update(imei=imei, device_uuid=str(uuid.uuid4()), credentials=[])
    sim_state.write_text(json.dumps(state))


def test_a_board_swapped_after_a_sigkill_keeps_its_keys_in_the_record(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-1",
                      extra="simulator: {state: sim.json, profile: realistic}\n")
    journal = tmp_path / "j.sqlite"
    _interrupt(plan, journal, _steps(journal, CAPTURED), "a first captured key", signal.SIGKILL,
               "--json")
    ((slot, imei),) = journal_rows(journal, "SELECT slot, imei FROM run_keys LIMIT 1")
    _swap_board(tmp_path / "sim.json", int(slot.removeprefix("slot")), _luhn("35999999000000"))
    code, document, err = run_json(plan, journal)
    assert code == 0, err
    signed = _manifest(document)
    for devices in (document["devices"], signed["devices"]):
        old = [d for d in devices if d["imei"] == imei]
        assert len(old) == 1 and old[0]["outcome"] == "interrupted"
        assert "generated" in [k["outcome"] for k in old[0]["keys"]]
        assert len(devices) == 3  # both slots' boards, and the one swapped out
    assert signed["run"]["complete"] is True  # every slot's board now is done


def _one_board_provisioned(tmp_path: Path, model: str, slot_keys: str = "[tls]", *,
                           sha_listed: bool = True) -> tuple[Path, Path, dict[str, Any]]:
    """A plan for one simulated board of ``model`` (state in sim.json, log in sim.log), its
    journal, and the document of its first run, which succeeded. ``sha_listed=False``: that
    run's listings had no SHA-256 column, so the journal holds none for the keys (as for keys
    an earlier fleet captured); the plan returned lists them as usual."""
    extra = f"simulator: {{state: sim.json, log: sim.log, model: {model}}}\n"
    plan = write_plan(tmp_path, ports="sim://0", slot_keys=slot_keys, extra=extra if sha_listed
                      else extra.replace("}\n", ", faults: ['list-no-sha:1']}\n"))
    journal = tmp_path / "j.sqlite"
    code, document, err = run_json(plan, journal)
    assert code == 0, err
    assert journal_rows(journal, "SELECT count(*) FROM keys WHERE cmng_sha IS NULL")[0][0] == (
        0 if sha_listed else len(document["devices"][0]["keys"]))
    write_plan(tmp_path, ports="sim://0", slot_keys=slot_keys, extra=extra)
    return plan, journal, document


def test_another_board_with_a_known_imei_is_never_written_to(tmp_path: Path) -> None:
    plan, journal, document = _one_board_provisioned(tmp_path, "nrf9151")
    real_board = (tmp_path / "sim.json").read_text()
    imei = document["devices"][0]["imei"]
    _swap_board(tmp_path / "sim.json", 0, imei)  # a clone: the same IMEI, another board
    steps = journal_rows(journal, "SELECT count(*) FROM steps")[0][0]
    code, document, err = run_json(plan, journal)
    assert code == 1, err
    device = document["devices"][0]
    assert device["outcome"] == "failed" and "another board with the same IMEI" in device["error"]
    assert journal_rows(journal, "SELECT count(*) FROM steps")[0][0] == steps  # nothing was sent
    assert json.loads((tmp_path / "sim.json").read_text())["modems"][0]["credentials"] == []
    _manifest(document)
    (tmp_path / "sim.json").write_text(real_board)  # the real board comes back
    code, document, err = run_json(plan, journal)
    assert code == 0, err
    assert document["devices"][0]["keys"][0]["outcome"] == "unchanged"


def test_a_clone_holding_copies_of_the_real_boards_keys_is_never_reported_as_it(
        tmp_path: Path) -> None:
    plan, journal, first = _one_board_provisioned(tmp_path, "nrf9151", "[tls, endorsement]")
    real_uuid = first["devices"][0]["device_uuid"]
    state = json.loads((tmp_path / "sim.json").read_text())
    clone_uuid = state["modems"][0]["device_uuid"] = str(uuid.uuid4())  # same IMEI and keys
    (tmp_path / "sim.json").write_text(json.dumps(state))
    code, document, err = run_json(plan, journal)
    assert code == 1, err
    for devices in (document["devices"], _manifest(document)["devices"]):
        assert devices[0]["outcome"] == "failed"
        assert "another board with the same IMEI" in devices[0]["error"]
        assert "unchanged" not in [k["outcome"] for k in devices[0]["keys"]]
        # The slot held the clone: the record gives the UUID it attested, never the real one's.
        assert devices[0]["device_uuid"] == clone_uuid != real_uuid


def test_a_board_swapped_in_while_the_port_is_reopened_is_never_written_to(
        tmp_path: Path) -> None:
    # The swap comes at the listing that identification reads for both keys; the board on the
    # reopened port has the same IMEI and none of the real board's keys (a run would generate
    # them again), but attests another UUID: nothing is read for the record from it, nothing
    # is written to it, and the journal keeps the real board's captured keys.
    keys = "[tls, endorsement]"
    plan, journal, document = _one_board_provisioned(tmp_path, "nrf9151", keys)
    real = document["devices"][0]
    real_board = (tmp_path / "sim.json").read_text()
    write_plan(tmp_path, ports="sim://0", slot_keys=keys, extra="simulator: {state: "
               "sim.json, log: sim.log, model: nrf9151, faults: ['swap:1:1']}\n")
    log = tmp_path / "sim.log"
    before = len(logged_commands(log))
    code, document, err = run_json(plan, journal)
    assert code == 1, err
    clone_uuid = json.loads((tmp_path / "sim.json").read_text())["modems"][0]["device_uuid"]
    assert clone_uuid != real["device_uuid"]
    for devices in (document["devices"], _manifest(document)["devices"]):
        device = devices[0]
        assert device["outcome"] == "failed" and device["imei"] == real["imei"]
        assert f"device UUID {clone_uuid} is not {real['device_uuid']}" in device["error"]
        assert device["device_uuid"] == clone_uuid
    sent = logged_commands(log)[before:]
    after_swap = sent[sent.index("AT%CMNG=1") + 2:]  # past the listing and its fault's line
    assert "AT%ATTESTTOKEN" in after_swap
    assert not [c for c in after_swap if c.startswith("AT%CMNG")], after_swap  # nothing read
    assert not [c for c in sent if c.startswith(("AT%KEYGEN", "AT%CMNG=3", "AT+CFUN="))], sent
    (tmp_path / "sim.json").write_text(real_board)  # the real board comes back
    write_plan(tmp_path, ports="sim://0", slot_keys=keys,
               extra="simulator: {state: sim.json, log: sim.log, model: nrf9151}\n")
    code, document, err = run_json(plan, journal)
    assert code == 0, err
    again = _manifest(document)["devices"][0]["keys"]
    assert [k["outcome"] for k in again] == ["unchanged", "unchanged"]
    assert [k["csr_pem"] for k in again] == [k["csr_pem"] for k in real["keys"]]


def test_the_sha_of_a_board_swapped_in_before_the_closing_listing_is_never_recorded(
        tmp_path: Path) -> None:
    # The run makes the key on the real board, then the board is swapped at the listing that
    # records its SHA-256: the key keeps its record (it was made and captured on the real
    # board), and nothing is read from the board now in the slot, so no SHA is recorded for it.
    # The next run finds the other board before anything else.
    plan = write_plan(tmp_path, ports="sim://0", slot_keys="[tls]", extra="simulator: {state: "
                      "sim.json, log: sim.log, model: nrf9151, faults: ['swap:1:1']}\n")
    journal = tmp_path / "j.sqlite"
    code, document, err = run_json(plan, journal)
    assert code == 0, err
    device = _manifest(document)["devices"][0]
    assert device["keys"][0]["outcome"] == "generated" and "cmng_sha256" not in device["keys"][0]
    clone = json.loads((tmp_path / "sim.json").read_text())["modems"][0]
    real = str(parse_keygen(device["keys"][0]["keygen_answer"]).payload.device_uuid)
    assert device["device_uuid"] == real != clone["device_uuid"]  # the key's board
    assert journal_rows(journal, "SELECT cmng_sha FROM keys") == [(None,)]
    sent = logged_commands(tmp_path / "sim.log")
    after_swap = sent[sent.index("AT%CMNG=1") + 2:]  # past the listing and its fault's line
    assert not after_swap, after_swap
    code, document, err = run_json(plan, journal)
    assert code == 1, err
    again = _manifest(document)["devices"][0]
    assert "another board with the same IMEI" in again["error"], again["error"]
    assert again["device_uuid"] == clone["device_uuid"]
    assert journal_rows(journal, "SELECT cmng_sha FROM keys") == [(None,)]


def test_a_board_that_attested_and_refuses_after_a_reopen_is_not_taken_for_the_same_one(
        tmp_path: Path) -> None:
    # The board attests at identification; the swap comes at the closing listing, and the
    # board on the reopened port is an nRF9160 with the same IMEI, which cannot say which board
    # it is. Putting the function mode back reopens the port: the refusal counts as another
    # board, so the mode is never written to it, and the key keeps the real board's record.
    plan = write_plan(tmp_path, ports="sim://0", slot_keys="[tls]", extra="simulator: {state: "
                      "sim.json, log: sim.log, model: nrf9151, function_mode: 1, "
                      "faults: ['swap-unattested:1:1']}\n")
    code, document, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    clone = json.loads((tmp_path / "sim.json").read_text())["modems"][0]
    assert clone["model"] == "nrf9160"
    recorded = _manifest(document)["devices"][0]
    real = str(parse_keygen(recorded["keys"][0]["keygen_answer"]).payload.device_uuid)
    for device in (document["devices"][0], recorded):
        assert device["outcome"] == "failed"
        assert ("after the port was reopened this board refused %ATTESTTOKEN, which it "
                "answered before") in device["error"], device["error"]
        assert device["keys"][0]["outcome"] == "generated"
        # The record gives the board the key was made on, never the clone.
        assert device["device_uuid"] == real != clone["device_uuid"]
    sent = logged_commands(tmp_path / "sim.log")
    assert "AT+CFUN=4" in sent
    after_swap = sent[sent.index("AT%CMNG=1") + 2:]  # past the listing and its fault's line
    assert "AT%ATTESTTOKEN" in after_swap
    assert not [c for c in after_swap if c.startswith(("AT+CFUN=", "AT%CMNG", "AT%KEYGEN"))], \
        after_swap


def test_a_keygen_answer_that_failed_verification_is_not_reported_as_never_arrived(
        tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", slot_keys="[tls]",
                      defaults="{timeout_s: 5, keygen_timeout_s: 5, retries: 0}",
                      extra="simulator: {state: sim.json, model: nrf9151, "
                      "faults: ['keygen-bad-uuid:1']}\n")
    code, document, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    key = _manifest(document)["devices"][0]["keys"][0]
    assert key["outcome"] == "interrupted" and key["csr_pem"] is None
    assert "answer failed device_uuid" in key["error"]
    assert "answered, but fleet did not capture the answer (for the reason above)" in key["error"]
    assert "never arrived" not in key["error"]


@pytest.mark.parametrize(("recorded", "fault"), [
    (True, ""), (False, ""), (True, ", faults: ['lost-answer:1:1']")],
    ids=["sha-recorded", "no-sha-yet", "sha-recorded-clone-retried"])
def test_a_clone_without_attestation_never_costs_the_real_board_its_key(
        tmp_path: Path, recorded: bool, fault: str) -> None:
    # An nRF9160 refuses %ATTESTTOKEN: only its %KEYGEN answer tells a clone from the board the
    # journal knows, after the write. The real board must never lose its key for it, and is
    # reported unchanged only when its listing shows the SHA-256 recorded for its key.
    plan, journal, document = _one_board_provisioned(tmp_path, "nrf9160", sha_listed=recorded)
    first = _manifest(document)["devices"][0]
    real_board = (tmp_path / "sim.json").read_text()
    _swap_board(tmp_path / "sim.json", 0, first["imei"])  # a clone: same IMEI, another board
    write_plan(tmp_path, ports="sim://0", slot_keys="[tls]", extra="simulator: {state: "
               f"sim.json, log: sim.log, model: nrf9160{fault}}}\n")
    code, document, err = run_json(plan, journal)
    assert code == 1, err
    device = _manifest(document)["devices"][0]
    assert device["outcome"] == "failed" and "another board with the same IMEI" in device["error"]
    clone = json.loads((tmp_path / "sim.json").read_text())["modems"][0]
    assert len(clone["credentials"]) == 1  # stopped at its first answer: no more keys made
    write_plan(tmp_path, ports="sim://0", slot_keys="[tls]",
               extra="simulator: {state: sim.json, log: sim.log, model: nrf9160}\n")
    (tmp_path / "sim.json").write_text(real_board)  # the real board comes back
    log = tmp_path / "sim.log"
    before = len(logged_commands(log))
    code, document, err = run_json(plan, journal)
    key = _manifest(document)["devices"][0]["keys"][0]
    if recorded:
        assert code == 0, err
        assert key["outcome"] == "unchanged" and key["csr_pem"] == first["keys"][0]["csr_pem"]
    else:
        assert code == 1, err
        assert key["outcome"] == "failed" and key["csr_pem"] is None
        assert "fleet cannot tell whether the key in this sec_tag is the one" in key["error"]
    sent = logged_commands(log)[before:]
    assert not [c for c in sent if c.startswith(("AT%KEYGEN", "AT%CMNG=3"))], sent


@pytest.mark.parametrize("recorded", [True, False], ids=["sha-recorded", "no-sha-yet"])
def test_a_corrupted_answer_for_a_vanished_key_never_reports_the_old_csr(
        tmp_path: Path, recorded: bool) -> None:
    plan, journal, document = _one_board_provisioned(tmp_path, "nrf9160", sha_listed=recorded)
    first = _manifest(document)["devices"][0]["keys"][0]
    state = json.loads((tmp_path / "sim.json").read_text())
    state["modems"][0]["credentials"] = []  # the key is gone from the device
    (tmp_path / "sim.json").write_text(json.dumps(state))
    write_plan(tmp_path, ports="sim://0", slot_keys="[tls]", extra="simulator: {state: "
               "sim.json, log: sim.log, model: nrf9160, faults: ['keygen-bad-uuid:1:1']}\n")
    code, document, err = run_json(plan, journal)
    assert code == 1, err  # the new key's answer carries another UUID: stopped
    write_plan(tmp_path, ports="sim://0", slot_keys="[tls]",
               extra="simulator: {state: sim.json, log: sim.log, model: nrf9160}\n")
    code, document, err = run_json(plan, journal)
    assert code == 1, err
    key = _manifest(document)["devices"][0]["keys"][0]
    assert key["outcome"] == "failed" and key["csr_pem"] is None, key
    assert first["csr_pem"] not in json.dumps(document)


def test_a_damaged_device_uuid_in_the_journal_is_reported_not_a_traceback(
        tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", slot_keys="[tls]",
                      extra="simulator: {state: sim.json}\n")
    journal = tmp_path / "j.sqlite"
    code, _, err = run_json(plan, journal)
    assert code == 0, err
    with sqlite3.connect(journal) as conn:
        conn.execute("UPDATE devices SET device_uuid = 'not-a-uuid'")
        conn.execute("UPDATE run_devices SET device_uuid = 'not-a-uuid'")
    code, document, err = run_json(plan, journal)
    assert code == 1 and "Traceback" not in err, err
    signed = _manifest(document)
    key = signed["devices"][0]["keys"][0]
    assert key["outcome"] == "failed" and "'not-a-uuid', is not a UUID" in key["error"]


def test_a_run_limited_to_some_slots_still_lists_every_planned_slot(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-2", slot_keys="[tls]")
    code, document, err = run_json(plan, tmp_path / "j.sqlite", "--only", "slot1")
    assert code == 0, err
    signed = _manifest(document)
    for devices in (document["devices"], signed["devices"]):
        assert {d["slot"]: d["outcome"] for d in devices} == {
            "slot0": "not-started", "slot1": "done", "slot2": "not-started"}
    assert signed["run"]["complete"] is False
