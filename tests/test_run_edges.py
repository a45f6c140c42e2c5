"""`fleet run` at its edges: a vanished captured key, interrupted runs' output, check mode and
the journal, --only, journal and manifest failures, a new device's UUID."""

from __future__ import annotations

import datetime
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet.credentials import parse_keygen
from fleet.plan import load_plan
from fleet.run import RunOptions, run_plan
from tests.runhelpers import KEYS, fleet, logged_commands, run_json, write_plan
from tests.simproc import command, open_port, run_sim

TLS = 16842753


def _ports(tmp_path: Path) -> str:
    return str(tmp_path / "ports" / "modem*")


def _device_key(sim_state: dict, index: int, sec_tag: int) -> str:  # type: ignore[type-arg]
    modem = next(m for m in sim_state["modems"] if m["index"] == index)
    return next(c["public_key_pem"] for c in modem["credentials"]
                if c["sec_tag"] == sec_tag and c["type"] == 2)


def test_a_vanished_captured_key_whose_new_answer_was_lost_is_recovered(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports=_ports(tmp_path), slot_keys="[tls]",
                      defaults="{timeout_s: 2, keygen_timeout_s: 4, retries: 0}")
    journal = tmp_path / "j.sqlite"
    with run_sim(tmp_path, 1) as sim:
        code, _, err = run_json(plan, journal)
        assert code == 0, err
        port = open_port(sim.ports[0])  # someone deletes the key behind fleet's back
        try:
            assert command(port, "AT+CMEE=1")[-1] == "OK"
            assert command(port, f"AT%CMNG=3,{TLS},2")[-1] == "OK"
        finally:
            port.close()
    with run_sim(tmp_path, 1, "--fault", "lost-answer:1@0"):
        code, doc, _ = run_json(plan, journal)  # a new key is made; its answer is lost
        assert code == 1
    with run_sim(tmp_path, 1) as sim:
        code, doc, err = run_json(plan, journal)
        assert code == 0, err
        key = doc["devices"][0]["keys"][0]
        assert key["outcome"] == "recovered"
        assert key["public_key_pem"] == _device_key(sim.state(), 0, TLS)
    with sqlite3.connect(journal) as conn:
        answer = conn.execute("SELECT answer FROM keys WHERE sec_tag = ?", (TLS,)).fetchone()[0]
    assert parse_keygen(answer).public_key_pem == _device_key(sim.state(), 0, TLS)


def test_sigint_twice_still_exits_3_with_every_device_in_the_output(tmp_path: Path) -> None:
    with run_sim(tmp_path, 3, "--profile", "realistic"):
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "j.sqlite"
        proc = subprocess.Popen([sys.executable, "-m", "fleet", "run", str(plan), "--journal",
                                 str(journal), "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
                    if conn.execute("SELECT count(*) FROM steps WHERE action = 'keygen'"
                                    ).fetchone()[0] >= 3:
                        break
            except sqlite3.Error:
                continue
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err
        doc = json.loads(out)
        assert doc["interrupted"] is True
        assert [d["outcome"] for d in doc["devices"]] == ["interrupted"] * 3
        manifest = json.loads(Path(doc["manifest"]).read_text())
        assert manifest["signed"]["run"]["complete"] is False
        assert len(manifest["signed"]["devices"]) == 3
        # The next run resumes and finishes the same run.
        code, again, err = run_json(plan, journal)
        assert code == 0, err
        assert again["resumed"] is True and again["run_id"] == doc["run_id"]


def test_check_mode_creates_no_journal(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2):
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "never" / "j.sqlite"
        code, doc, err = run_json(plan, journal, "--check")
        assert code == 0, err
        assert doc["changed"] is True
        assert not journal.parent.exists()


def test_only_may_be_repeated_and_keeps_the_run_open(tmp_path: Path) -> None:
    with run_sim(tmp_path, 3):
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "j.sqlite"
        code, doc, err = run_json(plan, journal, "--only", "slot0", "--only", "slot2")
        assert code == 0, err
        assert {d["slot"]: d["outcome"] for d in doc["devices"]} == {
            "slot0": "done", "slot2": "done", "slot1": "not-started"}
        manifest = json.loads(Path(doc["manifest"]).read_text())
        assert manifest["signed"]["run"]["complete"] is False
        code, rest, err = run_json(plan, journal)
        assert code == 0, err
        assert rest["resumed"] is True and rest["run_id"] == doc["run_id"]
        full = json.loads(Path(rest["manifest"]).read_text())
        assert full["signed"]["run"]["complete"] is True
        outcomes = {d["slot"]: [k["outcome"] for k in d["keys"]]
                    for d in full["signed"]["devices"]}
        assert outcomes == {f"slot{i}": ["generated", "generated"] for i in range(3)}


@pytest.mark.parametrize("item", ["", "slot0 ", "usb:", "socket://x:0", "sim://a", "a\nb"])
def test_only_naming_a_malformed_port_is_a_plan_error_like_an_unknown_slot(
        tmp_path: Path, item: str) -> None:
    plan = write_plan(tmp_path, ports="sim://0-1")
    journal = tmp_path / "j.sqlite"
    unknown_code, unknown, _ = run_json(plan, journal, "--only", "nosuch")
    code, doc, err = run_json(plan, journal, "--only", item)
    assert (code, unknown_code) == (2, 2), err
    assert "Traceback" not in err
    assert f"--only {item!r} is neither the name nor the port of a slot" in doc["error"]
    assert {**doc, "error": None} == {**unknown, "error": None}
    assert not journal.exists()


def test_unusable_journal_path_exits_2_with_a_json_document(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with run_sim(tmp_path, 1) as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        result = fleet("run", plan, "--journal", blocker / "j.sqlite", "--json")
        assert result.returncode == 2, result.stderr
        assert "cannot use journal" in result.stderr
        assert "Traceback" not in result.stderr
        assert json.loads(result.stdout)["failed"] is True
        assert sim.log_lines() == []


def test_a_manifest_that_cannot_be_written_keeps_the_run_open(tmp_path: Path) -> None:
    # The directory out/ passes the check before the run; the {time} directory in it is made
    # only when the manifest is written, and a file is in its way for the next two minutes.
    out = tmp_path / "out"
    out.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    for second in range(-5, 120):
        moment = now + datetime.timedelta(seconds=second)
        (out / moment.strftime("%H%M%SZ")).write_text("a file where a directory should be")
    with run_sim(tmp_path, 1):
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        plan.write_text(plan.read_text().replace("manifest: out/{station}-{run_id}.json",
                                                 "manifest: out/{time}/{run_id}.json"))
        journal = tmp_path / "j.sqlite"
        code, doc, _ = run_json(plan, journal)
        assert code == 1
        assert doc["manifest"] is None and "cannot write manifest" in doc["manifest_error"]
        for blocker in out.iterdir():
            blocker.unlink()
        code, again, err = run_json(plan, journal)
        assert code == 0, err
        assert again["resumed"] is True
        signed = json.loads(Path(again["manifest"]).read_text())["signed"]
        assert signed["run"]["complete"] is True
        assert [k["outcome"] for k in signed["devices"][0]["keys"]] == ["generated"] * 2


def test_a_new_devices_uuid_is_attested_once_and_journaled_with_its_first_capture(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 2) as sim:
        two_keys = write_plan(tmp_path, ports=_ports(tmp_path))
        code, doc, err = run_json(two_keys, tmp_path / "j.sqlite")
        assert code == 0, err
        commands = [c.upper() for c in sim.commands(0)]
        attest = commands.index("AT%ATTESTTOKEN")
        assert attest < min(i for i, c in enumerate(commands) if c.startswith("AT%KEYGEN"))
        with sqlite3.connect(tmp_path / "j.sqlite") as conn:
            known = dict(conn.execute("SELECT imei, device_uuid FROM devices"))
        assert known == {d["imei"]: d["device_uuid"] for d in doc["devices"]}
        code, _, err = run_json(two_keys, tmp_path / "j.sqlite")
        assert code == 0, err
        assert [c.upper() for c in sim.commands(0)].count("AT%ATTESTTOKEN") == 1
    (tmp_path / "one").mkdir()
    with run_sim(tmp_path / "one", 1) as sim:
        one_key = write_plan(tmp_path / "one", ports=str(tmp_path / "one" / "ports" / "modem*"),
                             slot_keys="[tls]")
        code, _, err = run_json(one_key, tmp_path / "one" / "j.sqlite")
        assert code == 0, err
        assert [c.upper() for c in sim.commands(0)].count("AT%ATTESTTOKEN") == 1
        code, _, err = run_json(one_key, tmp_path / "one" / "j.sqlite")
        assert code == 0, err
        assert [c.upper() for c in sim.commands(0)].count("AT%ATTESTTOKEN") == 1


def _faults_fired(log: Path) -> list[tuple[str, str]]:
    """``(fault, command)`` for every fault the simulator's ``--log`` recorded."""
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [(e["fault"], e["command"]) for e in entries if "fault" in e]


def test_an_answer_with_a_corrupted_device_uuid_loses_its_capture(tmp_path: Path) -> None:
    """A changed bit in the device UUID of the COSE payload (the simulator's keygen-bad-uuid
    fault, on the first answer only) passes every local check, but not the comparison with what
    %ATTESTTOKEN said: the answer is never captured, and the key it made is recovered (deleted
    and made again) within the same run."""
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(write_plan(tmp_path, ports="sim://0").read_text().replace(
        "defaults:", "simulator: {state: sim.json, log: sim.log, model: nrf9151, "
        "faults: ['keygen-bad-uuid:1:1']}\ndefaults:"))
    journal = tmp_path / "j.sqlite"

    def run() -> Any:
        plan = load_plan(plan_path)
        return anyio.run(lambda: run_plan(plan, RunOptions(journal=journal,
                                                           handle_signals=False)),
                         backend="asyncio")

    first = run()
    assert first.exit_code == 0
    assert [(fault, command.split(",")[0]) for fault, command in
            _faults_fired(tmp_path / "sim.log")] == [("keygen-bad-uuid", f"AT%KEYGEN={TLS}")]
    record = first.record.devices[0]
    keys = {k.name: k for k in record.keys}
    assert keys["tls"].outcome.value == "recovered"
    assert keys["tls"].deleted
    assert keys["endorsement"].outcome.value == "generated"
    assert parse_keygen(keys["tls"].keygen_answer or "").payload.device_uuid == \
        uuid.UUID(record.device_uuid)
    second = run()
    assert second.exit_code == 0
    assert {k.name: k.outcome.value for k in second.record.devices[0].keys} == {
        "tls": "unchanged", "endorsement": "unchanged"}


def test_answers_that_disagree_on_the_device_uuid_stop_a_modem_without_attestation(
        tmp_path: Path) -> None:
    """An nRF9160 has no %ATTESTTOKEN: its first answer gives the device UUID. When a later
    answer carries another one (here the first was corrupted: keygen-bad-uuid on it alone),
    fleet cannot tell a clone from a corrupted answer: the device stops at once, saying so,
    and no key is made and deleted again and again, in this run or the next."""
    simulator = "simulator: {state: sim.json, log: sim.log, model: nrf9160%s}\n"
    journal = tmp_path / "j.sqlite"
    for faults in (", faults: ['keygen-bad-uuid:1:1']", ""):  # then the next run, fault-free
        plan = write_plan(tmp_path, ports="sim://0", extra=simulator % faults)
        code, document, err = run_json(plan, journal)
        assert code == 1, err
        device = document["devices"][0]
        assert device["outcome"] == "failed"
        assert "another board with the same IMEI" in device["error"]
        assert "or a corrupted answer" in device["error"]
    sent = logged_commands(tmp_path / "sim.log")
    assert [c for c in sent if c.startswith("AT%KEYGEN=33,")] == ["AT%KEYGEN=33,8"] * 2
    assert not [c for c in sent if c.startswith("AT%CMNG=3")], sent


def test_a_failed_listing_prefetch_is_recovered_before_the_attestation_read(
        tmp_path: Path) -> None:
    """The one AT%CMNG=1 listing is read while the journal records the device; when it fails
    (the simulator's list-drop fault, once: the port drops, so the session needs recovering),
    reading %ATTESTTOKEN for a {device_uuid} template must recover and retry, not fail the
    device."""
    keys = write_plan(tmp_path, ports="sim://0").read_text().replace(
        'attributes: {CN: "{imei}"', 'attributes: {CN: "{device_uuid}"')
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(keys.replace("defaults:", "simulator: {state: sim.json, log: sim.log, "
                                      "model: nrf9151, faults: ['list-drop:1:1']}\n"
                                      "defaults:"))
    outcome = anyio.run(lambda: run_plan(load_plan(plan_path), RunOptions(
        journal=tmp_path / "j.sqlite", handle_signals=False)), backend="asyncio")
    assert _faults_fired(tmp_path / "sim.log") == [("list-drop", "AT%CMNG=1")], \
        "the prefetch did not run"
    record = outcome.record.devices[0]
    assert outcome.exit_code == 0, record.error
    assert {k.name: k.outcome.value for k in record.keys} == {"tls": "generated",
                                                              "endorsement": "generated"}
    tls = next(k for k in record.keys if k.name == "tls")
    assert tls.csr_pem and record.device_uuid
    assert parse_keygen(tls.keygen_answer or "").csr is not None


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_built_in_simulator_that_cannot_write_its_log_fails_the_devices_not_the_run(
        tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-1", slot_keys="[tls]",
                      extra="simulator: {log: /dev/full}\n")  # a full disk
    code, document, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1 and "Traceback" not in err, err
    reason = ("the built-in simulator stopped: the simulator's log /dev/full cannot be written: "
              "No space left on device")
    assert [(d["outcome"], d["error"]) for d in document["devices"]] == [("failed", reason)] * 2
    verified = fleet("verify", document["manifest"])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_built_in_simulator_that_cannot_write_its_state_file_stops_the_run_before_it_starts(
        tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", slot_keys="[tls]",
                      extra="simulator: {state: plan.yaml/sim.json}\n")  # under a file
    code, document, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 2 and "Traceback" not in err, err
    assert (f"simulator: the simulator's state file {tmp_path}/plan.yaml/sim.json cannot be "
            "written: Not a directory") in document["error"], document
    assert "nothing was sent to any device" in err


def test_a_last_key_lost_with_its_port_still_puts_the_function_mode_back(
        tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", slot_keys="[tls]",
                      defaults="{timeout_s: 2, keygen_timeout_s: 4, retries: 0}",
                      extra="simulator: {state: sim.json, log: sim.log, function_mode: 1, "
                      "faults: ['lost-answer:1:1']}\n")
    code, document, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    device = document["devices"][0]
    assert device["error"].startswith("tls: gave up after 1 attempt(s): connection lost during "
                                      "AT%KEYGEN="), device["error"]
    assert device["keys"][0]["outcome"] == "interrupted"
    assert json.loads((tmp_path / "sim.json").read_text())["modems"][0]["function_mode"] == 1
    assert logged_commands(tmp_path / "sim.log")[-1] == "AT+CFUN=1"


def test_a_key_that_fails_after_the_devices_deadline_ends_the_device(tmp_path: Path) -> None:
    # Every %KEYGEN is refused with 523 (retried on any other day); the deadline has passed by
    # the first refusal, so the key is not tried again and the next key is not started, but the
    # function mode fleet changed is put back.
    plan = write_plan(tmp_path, ports="sim://0",
                      defaults="{timeout_s: 5, keygen_timeout_s: 10, retries: 3, "
                               "device_deadline_s: 0.001}",
                      extra="simulator: {log: sim.log, function_mode: 1, "
                            "faults: ['keygen-fail:1']}\n")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    device = doc["devices"][0]
    tls, endorsement = device["keys"]
    assert tls["outcome"] == "failed" and tls["attempts"] == 1
    assert "gave up after 1 attempt(s) (the device's deadline passed)" in tls["error"]
    assert endorsement["outcome"] == "not-attempted"
    assert device["outcome"] == "failed"
    assert device["error"].startswith(f"tls: {tls['error']}; the device's deadline "
                                      "(device_deadline_s: 0.001 s) had passed, so nothing "
                                      "more was tried on this device"), device["error"]
    received = logged_commands(tmp_path / "sim.log", faults=False)
    assert [c.split(",")[0] for c in received if c.startswith("AT%KEYGEN")] == [
        f"AT%KEYGEN={TLS}"]  # one try of the first key, none of the second
    assert received[-1] == "AT+CFUN=1"  # the mode it was found in


def test_a_key_refused_after_the_devices_deadline_leaves_the_device_to_its_other_keys(
        tmp_path: Path) -> None:
    # The modem's store holds one credential: the second key is refused (515), which is no
    # sign of a board that stopped answering, so the third is still tried, deadline or not.
    keys = KEYS + "  other:\n    sec_tag: 16842754\n    type: client_key\n    response: csr\n"
    plan = write_plan(tmp_path, ports="sim://0", keys=keys, slot_keys="[tls, endorsement, other]",
                      defaults="{timeout_s: 5, keygen_timeout_s: 10, retries: 3, "
                               "device_deadline_s: 0.001}",
                      extra="simulator: {log: sim.log, capacity: 1}\n")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 1, err
    device = doc["devices"][0]
    assert [k["outcome"] for k in device["keys"]] == ["generated", "failed", "failed"]
    assert all("515" in k["error"] for k in device["keys"][1:]), device["keys"]
    assert "deadline" not in device["error"], device["error"]
    received = logged_commands(tmp_path / "sim.log", faults=False)
    assert len([c for c in received if c.startswith("AT%KEYGEN")]) == 3
