"""Bad input is refused, saying why and what to do, before any device is touched: key and
certificate files that are not regular files (a FIFO would hang the read, a device would be read
until memory runs out), a manifest path that names a directory or cannot be written, a CA
program that leaves a child behind; and a modem whose model or firmware string is not text fails,
with nothing of it recorded. Through the real command line and the in-process simulator."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.station_key import init_station_key
from tests.certhelpers import make_ca, script_ca_command
from tests.runhelpers import KEYS, fleet, run_json, write_plan

NOT_REGULAR = {"fifo": "a FIFO (named pipe)", "device": "a character device"}
SIM = "simulator: {log: sim.log, state: sim.json}\n"


def _special(tmp_path: Path, kind: str) -> Path:
    """A FIFO nobody writes to, or /dev/zero."""
    if kind == "device":
        return Path("/dev/zero")
    path = tmp_path / "special.fifo"
    os.mkfifo(path)
    return path


def _sim_commands(tmp_path: Path, modem: int | None = None) -> list[str]:
    """The commands the simulator received (by ``modem`` when given)."""
    log = tmp_path / "sim.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [r["command"] for r in lines if modem is None or r["modem"] == modem]


@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
@pytest.mark.parametrize("throwaway", [False, True])
def test_a_signing_key_that_is_not_a_regular_file_is_refused_before_any_device(
        tmp_path: Path, kind: str, throwaway: bool) -> None:
    key = _special(tmp_path, kind)
    signing = f"signing_key: {key}" + ("\nthrowaway_signing_key: true" if throwaway else "")
    plan = write_plan(tmp_path, ports="sim://0", extra=SIM, signing=signing)
    code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=60)
    assert code == 2, err
    reason = f"cannot read signing key {key}: it is {NOT_REGULAR[kind]}, not a regular file"
    assert reason in doc["error"] and reason in err
    assert "Traceback" not in err
    assert _sim_commands(tmp_path) == []


@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_verify_refuses_a_pubkey_or_manifest_that_is_not_a_regular_file(
        tmp_path: Path, kind: str) -> None:
    special = _special(tmp_path, kind)
    keys = init_station_key(tmp_path / "keys")
    manifest = tmp_path / "m.json"
    manifest.write_text("{}")
    result = fleet("verify", manifest, "--pubkey", special, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"fleet verify: --pubkey: cannot read public key {special}: "
                                     f"it is {NOT_REGULAR[kind]}, not a regular file: name the "
                                     "file itself")
    result = fleet("verify", special, "--pubkey", keys.public_path, timeout=60)
    assert result.returncode == 2
    assert f"it is {NOT_REGULAR[kind]}, not a regular file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("field", ["cert", "key", "chain"])
@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_ca_files_that_are_not_regular_files_are_plan_errors(
        tmp_path: Path, kind: str, field: str) -> None:
    cert, key, _, _ = make_ca(tmp_path / "ca")
    paths = {"cert": cert, "key": key, "chain": cert}
    paths[field] = _special(tmp_path, kind)
    keys = KEYS.replace("    if_exists: keep\n", "    if_exists: keep\n    ca:\n" + "".join(
        f"      {name}: {path}\n" for name, path in paths.items()))
    plan = write_plan(tmp_path, ports="sim://0", keys=keys, extra=SIM)
    result = fleet("plan", "check", plan, timeout=60)
    assert result.returncode == 2
    assert f"keys.tls.ca.{field}: " in result.stderr
    assert f"{paths[field]}: cannot read (it is {NOT_REGULAR[kind]}, not a regular file" \
        in result.stderr
    code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=60)
    assert code == 2 and f"keys.tls.ca.{field}: " in doc["error"], err
    assert _sim_commands(tmp_path) == []


def test_a_ca_issuer_that_is_not_a_regular_file_is_a_plan_error(tmp_path: Path) -> None:
    cert, key, _, _ = make_ca(tmp_path / "ca")
    fifo = _special(tmp_path, "fifo")
    keys = KEYS.replace("    if_exists: keep\n", "    if_exists: keep\n    ca:\n"
                        f"      command: {json.dumps(script_ca_command(cert, key))}\n"
                        f"      issuer: {fifo}\n")
    plan = write_plan(tmp_path, ports="sim://0", keys=keys, extra=SIM)
    result = fleet("plan", "check", plan, timeout=60)
    assert result.returncode == 2
    assert f"keys.tls.ca.issuer: issuer certificate {fifo}: cannot read (it is a FIFO" \
        in result.stderr


@pytest.mark.parametrize("manifest", ["out", "out/", "out/{station}"])
def test_a_manifest_path_naming_a_directory_is_a_plan_error(tmp_path: Path,
                                                             manifest: str) -> None:
    (tmp_path / "out" / "test-station").mkdir(parents=True)
    plan = write_plan(tmp_path, ports="sim://0", extra=SIM)
    plan.write_text(plan.read_text().replace("manifest: out/{station}-{run_id}.json",
                                             f"manifest: {json.dumps(manifest)}"))
    result = fleet("plan", "check", plan)
    assert result.returncode == 2
    assert f"{plan}:5: manifest: " in result.stderr
    assert "name a file in it, like <directory>/{station}-{date}-{time}.json" in result.stderr
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 2 and "manifest: " in doc["error"], err
    assert _sim_commands(tmp_path) == []


def test_a_manifest_directory_that_cannot_be_made_stops_the_run_before_any_device(
        tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a file, where the manifest directory should be\n")
    plan = write_plan(tmp_path, ports="sim://0-1", extra=SIM)
    plan.write_text(plan.read_text().replace("manifest: out/{station}-{run_id}.json",
                                             "manifest: afile/{date}/{run_id}.json"))
    journal = tmp_path / "j.sqlite"
    code, doc, err = run_json(plan, journal)
    assert code == 2, err
    assert doc["failed"] is True and doc["devices"] == [] and doc["manifest"] is None
    assert (f"the manifest directory {tmp_path / 'afile'}/2" in doc["error"]
            and f"{tmp_path / 'afile'} is not a directory" in doc["error"]), doc["error"]
    assert "the run cannot write its manifest there, so it does not start" in doc["error"]
    assert "after the devices were provisioned" not in doc["error"]  # none was
    assert "nothing was sent to any device" in err
    assert _sim_commands(tmp_path) == []
    assert not journal.exists()  # no run was started
    # The text output says the same, and so does every later run until it is fixed.
    result = fleet("run", plan, "--journal", journal)
    assert result.returncode == 2 and "is not a directory" in result.stderr
    assert result.stdout == ""
    # Fixed: the run makes the directory (the {run_id} part only when the manifest is written).
    (tmp_path / "afile").unlink()
    code, doc, err = run_json(plan, journal)
    assert code == 0, err
    assert Path(doc["manifest"]).parent.parent == tmp_path / "afile"


@pytest.mark.parametrize("over", [1, 0])  # one byte too long for the names a write uses; fits
def test_a_manifest_name_too_long_for_the_file_system_stops_the_run_before_any_device(
        tmp_path: Path, over: int) -> None:
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    # The name of a run: the prefix, "-", a run id (a UUID, 36), ".json"; a write also needs a
    # "-<n>" name (a clash) and a temp file ".<name>.<12 hex>.tmp" beside it.
    prefix = "a" * (limit - len("-") - 36 - len(".json") - len("-9999") - 18 + over)
    plan = write_plan(tmp_path, ports="sim://0", extra=SIM)
    plan.write_text(plan.read_text().replace("manifest: out/{station}-{run_id}.json",
                                             f"manifest: out/{prefix}-{{run_id}}.json"))
    journal = tmp_path / "j.sqlite"
    result = fleet("plan", "check", plan)
    assert result.returncode == 0, result.stderr
    if not over:
        assert "(directory writable)" in result.stdout
        code, doc, err = run_json(plan, journal)
        assert code == 0, err
        assert Path(doc["manifest"]).name.startswith(prefix)
        return
    reason = (f"the manifest file name {prefix}-00000000-0000-0000-0000-000000000000.json is "
              f"too long for {tmp_path / 'out'}: a run writes it as ")
    limits = f"{limit} bytes, the longest name the file system takes there"
    assert f"  fleet run would stop: {reason}" in result.stdout and limits in result.stdout
    doc = json.loads(fleet("plan", "check", "--json", plan).stdout)
    assert doc["ready"] is False and reason in doc["manifest_problem"]
    assert not (tmp_path / "out").exists()
    code, doc, err = run_json(plan, journal)
    assert code == 2, err
    assert reason in doc["error"] and limits in doc["error"], doc["error"]
    assert "nothing was sent to any device" in err
    assert _sim_commands(tmp_path) == []
    assert not journal.exists()  # no run was started


@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_a_manifest_path_naming_a_file_that_is_not_regular_stops_the_run_before_any_device(
        tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out" / "test-station.manifest"
    target.parent.mkdir()
    if kind == "device":
        target.symlink_to("/dev/null")
    else:
        os.mkfifo(target)
    plan = write_plan(tmp_path, ports="sim://0", extra=SIM)
    plan.write_text(plan.read_text().replace("manifest: out/{station}-{run_id}.json",
                                             "manifest: out/{station}.manifest"))
    reason = f"the manifest path {target} is {NOT_REGULAR[kind]}, not a regular file"
    result = fleet("plan", "check", plan)
    assert result.returncode == 0, result.stderr
    assert "(NOT WRITABLE, see below)" in result.stdout
    assert f"  fleet run would stop: {reason}" in result.stdout
    journal = tmp_path / "j.sqlite"
    code, doc, err = run_json(plan, journal)
    assert code == 2, err
    assert reason in doc["error"] and "nothing was sent to any device" in err
    assert _sim_commands(tmp_path) == []
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    # A regular file there is never overwritten: the manifest is written beside it.
    target.unlink()
    target.write_text("not a manifest\n")
    assert "(directory writable)" in fleet("plan", "check", plan).stdout
    code, doc, err = run_json(plan, journal)
    assert code == 0, err
    assert doc["manifest"] == str(target.parent / "test-station-2.manifest")
    assert target.read_text() == "not a manifest\n"


def _run_with_ca(tmp_path: Path, mode: str, timeout_s: float
                 ) -> tuple[int, dict[str, Any], float, int]:
    """`fleet run --json` of one slot whose key's certificate comes from the script CA in
    ``mode``: (exit status, document, seconds it took, pid of the child the CA left)."""
    cert, key, _, _ = make_ca(tmp_path / "ca")
    keys = KEYS.replace("    if_exists: keep\n", "    if_exists: keep\n    ca:\n"
                        f"      command: {json.dumps(script_ca_command(cert, key, mode))}\n"
                        f"      issuer: {cert}\n      timeout_s: {timeout_s}\n")
    plan = write_plan(tmp_path, ports="sim://0", keys=keys, extra=SIM, slot_keys="[tls]")
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    result = fleet("run", plan, "--journal", tmp_path / "j.sqlite", "--json", timeout=60,
                   env={"FLEET_TEST_CHILD_PID": str(pid_file)})
    elapsed = time.monotonic() - started
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout), elapsed, int(pid_file.read_text())


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"):
            return True
        time.sleep(0.05)
    return False


def test_a_ca_program_that_leaves_a_child_holding_its_output_never_hangs_the_run(
        tmp_path: Path) -> None:
    code, doc, elapsed, child = _run_with_ca(tmp_path, "leave-child-slow", timeout_s=2)
    assert code == 1, doc
    key = doc["devices"][0]["keys"][0]
    assert "did not finish within 2 s (killed)" in json.dumps(key), key
    # Attempts are retries + 1 = 3, each bounded by the CA's timeout (and a few seconds).
    assert elapsed < 3 * 2 + 10, elapsed
    assert _gone(child), "the CA program's child outlived the run"


def test_a_ca_program_that_exits_leaving_a_child_behind_is_done_when_it_exits(
        tmp_path: Path) -> None:
    code, doc, elapsed, child = _run_with_ca(tmp_path, "leave-child", timeout_s=20)
    assert code == 0, doc
    assert doc["devices"][0]["keys"][0]["certificate"]["outcome"] == "issued"
    assert elapsed < 15  # neither the CA's 20 s timeout nor the child's 60 s
    assert _gone(child)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("firmware", "mfw_nrf9160_1.3.5\u0000", "AT+CGMR answered a firmware string with the "
                                            "control character U+0000"),
    ("firmware", "mfw_nrf9160_1.3.5\u001b[2J", "AT+CGMR answered a firmware string with the "
                                               "control character U+001B"),
    ("cgmm", "nRF9160-SICA\udcff", "AT+CGMM answered a model string with bytes that are not "
                                   "UTF-8"),
])
def test_a_model_or_firmware_string_that_is_not_text_fails_that_device(
        tmp_path: Path, field: str, value: str, reason: str) -> None:
    plan = write_plan(tmp_path, ports="sim://0-1", extra=SIM,
                      defaults="{timeout_s: 5, keygen_timeout_s: 10, retries: 0}")
    code, _, err = run_json(plan, tmp_path / "first.sqlite", "--check")  # makes the state
    assert code == 0, err
    state = json.loads((tmp_path / "sim.json").read_text())
    state["modems"][1][field] = value
    (tmp_path / "sim.json").write_text(json.dumps(state))
    (tmp_path / "sim.log").unlink()
    journal = tmp_path / "j.sqlite"
    code, doc, err = run_json(plan, journal)
    assert code == 1, err
    bad = doc["devices"][1]
    assert doc["devices"][0]["outcome"] == "done"
    assert bad["outcome"] == "failed" and reason in bad["error"], bad
    assert bad["model"] is None and bad["firmware"] is None
    assert all(k["outcome"] == "not-attempted" for k in bad["keys"])
    with sqlite3.connect(journal) as conn:
        recorded = conn.execute("SELECT model, firmware FROM devices").fetchall()
    assert len(recorded) == 1 and value not in recorded[0]
    writes = ("AT%KEYGEN", "AT+CFUN=", "AT%CMNG=")
    assert [c for c in _sim_commands(tmp_path, 1) if c.upper().startswith(writes)] == []
    assert len([c for c in _sim_commands(tmp_path, 0) if c.upper().startswith(writes)]) >= 2
    signed = json.loads(Path(doc["manifest"]).read_text())["signed"]
    assert value not in json.dumps(signed)


def test_the_simulator_state_keeps_a_model_string_of_its_own(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", extra=SIM)
    assert run_json(plan, tmp_path / "j.sqlite", "--check")[0] == 0
    state = json.loads((tmp_path / "sim.json").read_text())
    assert "cgmm" not in state["modems"][0]  # the model's own string is not written
    state["modems"][0]["cgmm"] = "nRF9160-SICB"
    (tmp_path / "sim.json").write_text(json.dumps(state))
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    assert doc["devices"][0]["model"] == "nRF9160-SICB"
    assert json.loads((tmp_path / "sim.json").read_text())["modems"][0]["cgmm"] == "nRF9160-SICB"


def test_a_plan_that_is_a_fifo_is_refused_by_run(tmp_path: Path) -> None:
    fifo = _special(tmp_path, "fifo")
    result = fleet("run", fifo, "--json", timeout=60)
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"] == (
        f"{fifo}: cannot read the plan: it is a FIFO (named pipe), not a regular file: name the "
        "file itself")
