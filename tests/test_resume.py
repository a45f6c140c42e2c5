"""Crash safety and resume: SIGKILL mid-%KEYGEN, lost answers, pre-existing keys,
endorsement keys across runs, boards swapped between runs, two runs on one journal."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runhelpers import fleet, run_json, wait_for, write_plan
from tests.simproc import LINES, command, open_port, run_sim

TLS = 16842753


def _ports(tmp_path: Path) -> str:
    return str(tmp_path / "ports" / "modem*")


def _start_run(plan: Path, journal: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fleet", "run", str(plan), "--journal",
                             str(journal), "--json", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _open_keygen_intents(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT count(*) FROM steps WHERE action = 'keygen' "
                               "AND outcome IS NULL").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def _outcomes(doc: dict) -> dict[str, dict[str, str]]:  # type: ignore[type-arg]
    return {Path(d["port"]).name: {k["name"]: k["outcome"] for k in d["keys"]}
            for d in doc["devices"]}


@pytest.mark.parametrize("line", LINES)
def test_sigkill_between_intent_and_answer_is_recovered(tmp_path: Path, line: str) -> None:
    with run_sim(tmp_path, 2, *LINES[line], "--profile", "realistic") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), slot_keys="[tls]")
        journal = tmp_path / "j.sqlite"
        proc = _start_run(plan, journal)
        try:
            wait_for(lambda: _open_keygen_intents(journal) == 2, "two %KEYGEN intents")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        time.sleep(2.0)  # the simulator finishes the %KEYGEN: the key exists, nobody saw it
        for index in range(2):
            stored = {(c["sec_tag"], c["type"]) for c in sim.modem_state(index)["credentials"]}
            assert (TLS, 2) in stored
        before = len(sim.log_lines())
        code, doc, err = run_json(plan, journal)
        assert code == 0, err
        assert doc["resumed"] is True
        assert {k: v["tls"] for k, v in _outcomes(doc).items()} == {
            "modem0": "recovered", "modem1": "recovered"}
        for index in range(2):
            later = [c.upper() for c in sim.commands(index)][-40:]
            assert f"AT%CMNG=3,{TLS},2" in later
        assert len(sim.log_lines()) > before
        # The manifest records the key as recovered, with the answer that was captured.
        manifest = Path(doc["manifest"])
        verified = fleet("verify", manifest)
        assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("line", LINES)
def test_lost_answer_is_recovered_on_the_next_run(tmp_path: Path, line: str) -> None:
    plan = write_plan(tmp_path, ports=_ports(tmp_path), slot_keys="[tls]",
                      defaults="{timeout_s: 2, keygen_timeout_s: 4, retries: 0}")
    journal = tmp_path / "j.sqlite"
    with run_sim(tmp_path, 2, *LINES[line], "--fault", "lost-answer:1@1") as sim:
        code, doc, _ = run_json(plan, journal)
        assert code == 1
        # No retry is left, and a key nobody saw is on the device: not a failed key but an
        # interrupted one, saying why and what the next run does.
        assert _outcomes(doc)["modem1"]["tls"] == "interrupted"
        key = next(d for d in doc["devices"] if d["port"].endswith("modem1"))["keys"][0]
        assert "gave up after 1 attempt" in key["error"]
        assert "its answer never arrived" in key["error"] and "recovered" in key["error"]
        assert sim.faults(1) and sim.faults(1)[0]["fault"] == "lost-answer"
        signed = json.loads(Path(doc["manifest"]).read_text())["signed"]
        assert signed["summary"]["keys"]["interrupted"] == 1, signed["summary"]
        verified = fleet("verify", Path(doc["manifest"]))
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # same state: the key made by the lost %KEYGEN is kept
    with run_sim(tmp_path, 2, *LINES[line]) as sim:
        before = len(sim.commands(0))
        code, doc, err = run_json(plan, journal)
        assert code == 0, err
        outcomes = _outcomes(doc)
        assert outcomes["modem1"]["tls"] == "recovered"
        assert outcomes["modem0"]["tls"] == "unchanged"
        again = [c.upper() for c in sim.commands(0)[before:]]
        assert again and not [c for c in again if c.startswith("AT%KEYGEN")]


def _make_key_behind_fleets_back(port: Path, sec_tag: int) -> None:
    serial_port = open_port(port)
    try:
        command(serial_port, "AT+CMEE=1")
        answer = command(serial_port, f'AT%KEYGEN={sec_tag},2,0')
        assert answer[-1] == "OK", answer
    finally:
        serial_port.close()


@pytest.mark.parametrize("policy", ["keep", "replace", "fail"])
def test_pre_existing_key_and_if_exists(tmp_path: Path, policy: str) -> None:
    keys = f"""
    keys:
      tls:
        sec_tag: {TLS}
        type: client_key
        response: csr
        if_exists: {policy}
    """
    with run_sim(tmp_path, 2) as sim:
        _make_key_behind_fleets_back(sim.ports[0], TLS)
        made_before = len(sim.commands(0))
        plan = write_plan(tmp_path, ports=_ports(tmp_path), keys=keys, slot_keys="[tls]")
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        outcomes = _outcomes(doc)
        run_commands = [c.upper() for c in sim.commands(0)[made_before:]]
        assert outcomes["modem1"]["tls"] == "generated"
        if policy == "keep":
            assert code == 0, err
            assert outcomes["modem0"]["tls"] == "pre-existing"
            assert not [c for c in run_commands if c.startswith(("AT%KEYGEN", "AT%CMNG=3"))]
        elif policy == "replace":
            assert code == 0, err
            assert outcomes["modem0"]["tls"] == "generated"
            delete = run_commands.index(f"AT%CMNG=3,{TLS},2")
            keygen = next(i for i, c in enumerate(run_commands) if c.startswith("AT%KEYGEN"))
            assert delete < keygen
        else:
            assert code == 1
            assert outcomes["modem0"]["tls"] == "failed"
            device = next(d for d in doc["devices"] if d["port"].endswith("modem0"))
            assert "if_exists: fail" in device["error"]
            assert not [c for c in run_commands if c.startswith(("AT%KEYGEN", "AT%CMNG=3"))]
        # A second run honours what the journal now knows.
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        assert doc["changed"] is False


@pytest.mark.parametrize("line", LINES)
def test_endorsement_key_unchanged_across_runs_and_journals(tmp_path: Path, line: str) -> None:
    with run_sim(tmp_path, 2, *LINES[line]) as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), slot_keys="[endorsement]")
        code, first, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        keys1 = {d["imei"]: d["keys"][0]["public_key_pem"] for d in first["devices"]}
        before = len(sim.log_lines())
        code, second, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        assert all(o["endorsement"] == "unchanged" for o in _outcomes(second).values())
        assert not [r for r in sim.log_lines()[before:] if "KEYGEN" in r.get("command", "")]
        # A new journal (another station PC): %KEYGEN=33,8 is sent, the same key comes back.
        code, third, err = run_json(plan, tmp_path / "other-journal.sqlite")
        assert code == 0, err
        assert all(o["endorsement"] == "pre-existing" for o in _outcomes(third).values())
        assert third["changed"] is False
        keys3 = {d["imei"]: d["keys"][0]["public_key_pem"] for d in third["devices"]}
        assert keys3 == keys1


@pytest.mark.parametrize("line", LINES)
def test_board_swapped_between_runs(tmp_path: Path, line: str) -> None:
    plan = write_plan(tmp_path, ports=_ports(tmp_path))
    journal = tmp_path / "j.sqlite"
    with run_sim(tmp_path, 2, *LINES[line], "--seed", "1"):
        code, first, err = run_json(plan, journal)
        assert code == 0, err
    (tmp_path / "sim.json").unlink()  # new boards in the same slots
    with run_sim(tmp_path, 2, *LINES[line], "--seed", "2"):
        code, second, err = run_json(plan, journal)
        assert code == 0, err
    old = {d["imei"] for d in first["devices"]}
    new = {d["imei"] for d in second["devices"]}
    assert not old & new
    assert all(o == {"tls": "generated", "endorsement": "generated"}
               for o in _outcomes(second).values())
    with sqlite3.connect(journal) as conn:
        known = {r[0] for r in conn.execute("SELECT imei FROM devices")}
    assert old | new <= known


def test_two_concurrent_runs_on_one_journal(tmp_path: Path) -> None:
    # One board at a time, about 3.5 s each: the first run is still live when the second is
    # refused however loaded the machine is; then it is stopped, and a third run finishes.
    with run_sim(tmp_path, 12, "--profile", "realistic") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path))
        journal = tmp_path / "j.sqlite"
        proc = _start_run(plan, journal, "--concurrency", "1")
        try:
            wait_for(lambda: _open_keygen_intents(journal) >= 1, "the first run's %KEYGEN")
            commands_before = len(sim.log_lines())
            second = fleet("run", plan, "--journal", journal)
            assert second.returncode == 2, second.stderr
            assert "in use by another fleet run" in second.stderr
            assert "nothing was sent" in second.stderr
            # The second run sent nothing: a run that sends probes all twelve ports at once,
            # while the first, one board at a time, reaches one or two more in the meantime
            # (more on a loaded machine than on a quiet one).
            new = sim.log_lines()[commands_before:]
            assert len({r["modem"] for r in new if "command" in r}) <= 2, new
            assert proc.poll() is None, "the first run ended before the second was refused"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 3
        code, doc, _ = run_json(plan, journal)
        assert code == 0
        assert [d["outcome"] for d in doc["devices"]] == ["done"] * 12


def test_a_port_held_by_another_run_fails_only_that_slot(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2) as sim:
        held = open_port(sim.ports[1])
        import fcntl

        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            plan = write_plan(tmp_path, ports=_ports(tmp_path))
            code, doc, _ = run_json(plan, tmp_path / "j.sqlite")
        finally:
            held.close()
        assert code == 1
        by_port = {Path(d["port"]).name: d for d in doc["devices"]}
        assert by_port["modem0"]["outcome"] == "done"
        assert by_port["modem1"]["outcome"] == "failed"
        assert "in use by another process" in by_port["modem1"]["error"]
