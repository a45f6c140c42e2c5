"""`fleet run` end to end against `fleet sim` on real pseudo-terminals."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from fleet.credentials import parse_keygen
from tests.runhelpers import REPO, fleet, run_json, write_plan
from tests.simproc import LINES, run_sim

TLS = 16842753


@pytest.mark.parametrize("line", LINES)
def test_32_modems_then_rerun_changes_nothing(tmp_path: Path, line: str) -> None:
    with run_sim(tmp_path, 32, *LINES[line]) as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"))
        journal = tmp_path / "journal.sqlite"
        code, doc, err = run_json(plan, journal)
        assert code == 0, err
        assert doc["changed"] is True and doc["failed"] is False
        assert doc["summary"] == {"devices": 32, "done": 32}
        imeis = set()
        for device in doc["devices"]:
            imeis.add(device["imei"])
            outcomes = {k["name"]: k["outcome"] for k in device["keys"]}
            assert outcomes == {"tls": "generated", "endorsement": "generated"}, device
            assert device["keys"][0]["csr_pem"].startswith("-----BEGIN CERTIFICATE REQUEST")
        assert len(imeis) == 32
        manifest = Path(doc["manifest"])
        assert manifest.is_file()
        verified = fleet("verify", manifest, "--pubkey", tmp_path / "keys" / "station.pub.pem")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        for index in range(32):
            state = sim.modem_state(index)
            stored = {(c["sec_tag"], c["type"]) for c in state["credentials"]}
            assert {(TLS, 2), (33, 8)} <= stored

        before = len(sim.log_lines())
        code, doc, err = run_json(plan, journal)
        assert code == 0, err
        assert doc["changed"] is False
        assert all(k["outcome"] == "unchanged" for d in doc["devices"] for k in d["keys"])
        second = [r["command"] for r in sim.log_lines()[before:] if "fault" not in r]
        assert second, "the second run inspected the devices"
        assert not [c for c in second if c.upper().startswith("AT%KEYGEN")]
        assert not [c for c in second if c.upper().startswith("AT+CFUN=")]


@pytest.mark.parametrize("line", LINES)
def test_check_mode_sends_only_read_only_commands(tmp_path: Path, line: str) -> None:
    with run_sim(tmp_path, 4, *LINES[line]) as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"))
        code, doc, err = run_json(plan, tmp_path / "j.sqlite", "--check")
        assert code == 0, err
        assert doc["check"] is True and doc["changed"] is True and doc["manifest"] is None
        for device in doc["devices"]:
            assert {p["name"]: p["action"] for p in device["planned"]} == {
                "tls": "generate", "endorsement": "capture"}
        commands = [r["command"].upper() for r in sim.log_lines() if "fault" not in r]
        assert commands
        forbidden = ("AT%KEYGEN", "AT%CMNG=0", "AT%CMNG=3", "AT+CFUN=")
        assert not [c for c in commands if c.startswith(forbidden)], commands


INVALID = {
    "sec_tag out of range": ("sec_tag: 16842753", "sec_tag: 2147483648"),
    "key_usage not 9 binary digits": ('key_usage: "101010000"', 'key_usage: "10101"'),
    "decipherOnly set": ('key_usage: "101010000"', 'key_usage: "101010001"'),
    "undocumented attribute": ('O: "Acme"', 'XX: "Acme"'),
    "value with a double quote": ('O: "Acme"', "O: 'Ac\"me'"),
    "value with a control character": ('O: "Acme"', 'O: "Ac\\u0007me"'),
    "smuggled AT command": ('O: "Acme"', 'O: "Acme\\"\\r\\nAT+CFUN=0\\r\\n\\""'),
    "unsupported response/type": ("type: endorsement_key",
                                  "type: endorsement_key\n    response: csr"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_plans_exit_2_and_send_nothing(tmp_path: Path, case: str) -> None:
    old, new = INVALID[case]
    with run_sim(tmp_path, 2) as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"))
        text = plan.read_text()
        assert old in text
        plan.write_text(text.replace(old, new, 1))
        result = fleet("run", plan, "--journal", tmp_path / "j.sqlite")
        assert result.returncode == 2, result.stdout + result.stderr
        assert re.search(r"plan\.yaml:\d+:", result.stderr), result.stderr
        assert "nothing was sent" in result.stderr
        time.sleep(0.2)
        assert sim.log_lines() == []


def test_faulty_modems_fail_with_reasons_healthy_ones_finish(tmp_path: Path) -> None:
    faults = ["--fault", "disconnect:1@1", "--fault", "keygen-fail:1@2",
              "--fault", "slow:1@3", "--fault", "silent:1@4"]
    with run_sim(tmp_path, 8, *faults):
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"),
                          defaults="{timeout_s: 1, keygen_timeout_s: 2, retries: 1}")
        started = time.monotonic()
        code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=240)
        elapsed = time.monotonic() - started
        assert code == 1, err
        by_port = {Path(d["port"]).name: d for d in doc["devices"]}
        for healthy in ("modem0", "modem5", "modem6", "modem7"):
            assert by_port[healthy]["outcome"] == "done", by_port[healthy]
        for bad in ("modem1", "modem2", "modem3", "modem4"):
            assert by_port[bad]["outcome"] == "failed", by_port[bad]
            assert by_port[bad]["error"], by_port[bad]
        assert "523" in by_port["modem2"]["error"]
        # every answer 5 s late: past the probe's waits (1 + 1 + 3 s) or, later, timeout_s
        assert any(word in by_port["modem3"]["error"]
                   for word in ("nothing answers", "no answer", "not usable"))
        assert "nothing answers" in by_port["modem4"]["error"], by_port["modem4"]
        assert "connection lost" in by_port["modem1"]["error"] or "not usable" in \
            by_port["modem1"]["error"] or "no answer" in by_port["modem1"]["error"]
        assert elapsed < 120


def test_active_modem_is_taken_offline_and_restored(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--function-mode", "1") as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"))
        code, _, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        for index in range(2):
            commands = [c.upper() for c in sim.commands(index)]
            sets = [c for c in commands if c.startswith("AT+CFUN=")]
            assert sets == ["AT+CFUN=4", "AT+CFUN=1"], commands
            first_write = next(i for i, c in enumerate(commands) if c.startswith("AT%KEYGEN"))
            assert commands.index("AT+CFUN=4") < first_write < commands.index("AT+CFUN=1")
            assert sim.modem_state(index)["function_mode"] == 1


def test_demo_plan_on_a_fresh_checkout_shows_the_table(tmp_path: Path) -> None:
    """`fleet run plans/demo.yaml` from a copy of the repository's plans, on a TTY."""
    shutil.copytree(REPO / "plans", tmp_path / "plans")
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "run", "plans/demo.yaml"],
                            cwd=tmp_path, stdin=child, stdout=child, stderr=child,
                            env={**os.environ, "COLUMNS": "160", "LINES": "50", "TERM": "xterm"})
    os.close(child)
    output = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    code = proc.wait(30)
    os.close(main)
    text = output.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "IMEI" in text and "keys" in text and "outcome" in text  # the live table's header
    assert "THROWAWAY" in text
    assert "manifest:" in text
    assert (tmp_path / "out").is_dir()
    # A second run finds everything in place.
    again = fleet("run", "plans/demo.yaml", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert '"changed": false' in again.stdout


def test_production_plan_without_its_signing_key_sends_nothing(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2) as sim:
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"),
                          signing="signing_key: keys/station.pem")
        result = fleet("run", plan, "--journal", tmp_path / "j.sqlite")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "fleet station-key init" in result.stderr
        assert "nothing was sent" in result.stderr
        time.sleep(0.2)
        assert sim.log_lines() == []
        # With the key created, the same plan runs and its manifest verifies.
        created = fleet("station-key", "init", "--out", tmp_path / "keys")
        assert created.returncode == 0, created.stderr
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        verified = fleet("verify", doc["manifest"], "--pubkey",
                         tmp_path / "keys" / "station.pub.pem")
        assert verified.returncode == 0, verified.stdout


def test_csr_pem_of_a_null_parameter_modem_loads_with_cryptography(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-1", slot_keys="[tls]",
                      extra="simulator: {model: nrf9160}\n")
    code, doc, err = run_json(plan, tmp_path / "journal.sqlite")
    assert code == 0, err
    manifest = json.loads(Path(doc["manifest"]).read_text())
    answers = {d["imei"]: d["keys"][0]["keygen_answer"] for d in manifest["signed"]["devices"]}
    csr_pems = [(d["imei"], d["keys"][0]["csr_pem"]) for d in manifest["signed"]["devices"]]
    csr_pems += [(d["imei"], d["keys"][0]["csr_pem"]) for d in doc["devices"]]
    assert len(csr_pems) == 4
    for imei, pem in csr_pems:
        answer = parse_keygen(answers[imei])
        assert answer.csr_null_parameter, "the simulated mfw 1.3.x modem has the NULL quirk"
        csr = x509.load_pem_x509_csr(pem.encode())
        assert csr.public_key() == answer.public_key
        assert csr.is_signature_valid
    verified = fleet("verify", doc["manifest"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
