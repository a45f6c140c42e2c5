"""fleet from Ansible: the `fleet_run` module and `plans/ansible/site.yml`.

The playbook tests run the real `ansible-playbook` (ansible-core from the `test` extra) against
two stations on localhost (connection local), each with its own `fleet sim` on ptys, journal,
station key and plan. The module tests run `plans/ansible/library/fleet_run.py` the way Ansible
does (`python fleet_run.py ARGS_FILE` with `ANSIBLE_MODULE_ARGS`) against the real `fleet` and
plans on the in-process simulator (`sim://`): no mock of fleet anywhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.runhelpers import REPO, fleet, write_plan
from tests.simproc import SimProcess, run_sim

ANSIBLE_DIR = REPO / "plans" / "ansible"
MODULE = ANSIBLE_DIR / "library" / "fleet_run.py"
BIN = Path(sys.executable).parent
FLEET = BIN / "fleet"
WRITES = ("AT%KEYGEN", "AT%CMNG=0", "AT%CMNG=3", "AT+CFUN=")
TLS = 16842753


# --- the playbook -------------------------------------------------------------------------------


@dataclass
class Station:
    name: str
    directory: Path
    plan: Path
    journal: Path
    pubkey: Path
    sim: SimProcess


def _station(root: Path, name: str, sim_count: int, stack: ExitStack, *sim_args: str,
             retries: int = 2) -> Station:
    directory = root / name
    (directory / "sim").mkdir(parents=True)
    sim = stack.enter_context(run_sim(directory / "sim", sim_count, *sim_args))
    made = fleet("station-key", "init", "--out", directory / "keys", "--name", name)
    assert made.returncode == 0, made.stderr
    plan = write_plan(directory, ports=str(directory / "sim" / "ports" / "modem*"),
                      signing=f"signing_key: keys/{name}.pem",
                      defaults=f"{{timeout_s: 5, keygen_timeout_s: 10, retries: {retries}}}")
    plan.write_text(plan.read_text().replace("station: test-station", f"station: {name}"))
    return Station(name=name, directory=directory, plan=plan,
                   journal=directory / "journal.sqlite",
                   pubkey=directory / "keys" / f"{name}.pub.pem", sim=sim)


def _inventory(root: Path, stations: list[Station], manifests: Path) -> Path:
    """Two stations on localhost: the first with a trusted public key on the controller, the
    second with its public key fetched from the station."""
    hosts: dict[str, dict[str, Any]] = {}
    for index, station in enumerate(stations):
        host: dict[str, Any] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "fleet_executable": str(FLEET),
            "fleet_plan": str(station.plan),
            "fleet_journal": str(station.journal),
            "fleet_station_pubkey": str(station.pubkey),
        }
        if index == 0:
            host["fleet_trusted_pubkey"] = str(station.pubkey)
        hosts[station.name] = host
    inventory = {"all": {"vars": {"fleet_manifest_dir": str(manifests),
                                  "fleet_controller_executable": str(FLEET)},
                         "children": {"stations": {"hosts": hosts}}}}
    path = root / "inventory.yml"
    path.write_text(json.dumps(inventory, indent=2))  # JSON is YAML
    return path


def _ansible_env(root: Path) -> dict[str, str]:
    home = root / "ansible-home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    config = root / "ansible.cfg"
    config.write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({
        "HOME": str(home),
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp" / "local"),
        "ANSIBLE_REMOTE_TEMP": str(home / "tmp" / "remote"),
        "ANSIBLE_COLLECTIONS_PATH": str(home / "collections"),
        "ANSIBLE_LIBRARY": str(ANSIBLE_DIR / "library"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_GATHERING": "explicit",
        "LC_ALL": "C.UTF-8",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


def _playbook(root: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE_DIR / "site.yml"),
         *args],
        cwd=root, env=_ansible_env(root), capture_output=True, text=True, timeout=240,
        check=False, stdin=subprocess.DEVNULL)


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, skipped, ...}."""
    recap: dict[str, dict[str, int]] = {}
    text = output.split("PLAY RECAP", 1)[1]
    for match in re.finditer(r"^(\S+)\s+:\s+(.*)$", text, re.MULTILINE):
        recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)",
                                                                    match.group(2))}
    return recap


def _show(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def _write_commands(sim: SimProcess) -> list[str]:
    commands = [r["command"].upper() for r in sim.log_lines() if "fault" not in r]
    return [c for c in commands if c.startswith(WRITES)]


@pytest.fixture
def stations(tmp_path: Path) -> Iterator[list[Station]]:
    with ExitStack() as stack:
        # Other boards at each station (another simulator seed): the same IMEIs at two stations
        # are a finding of the playbook's audit.
        yield [_station(tmp_path, "line1-a", 2, stack),
               _station(tmp_path, "line1-b", 3, stack, "--seed", "1")]


def test_playbook_provisions_two_stations_collects_and_verifies(
        tmp_path: Path, stations: list[Station]) -> None:
    manifests = tmp_path / "controller" / "manifests"
    inventory = _inventory(tmp_path, stations, manifests)

    first = _playbook(tmp_path, inventory)
    assert first.returncode == 0, _show(first)
    recap = _recap(first.stdout)
    for station in stations:
        assert recap[station.name]["failed"] == 0, _show(first)
        assert recap[station.name]["changed"] >= 1, _show(first)
    assert recap["localhost"]["failed"] == 0
    assert "TASK [fleet verify each station's manifest" in first.stdout
    assert first.stdout.count("ok: [localhost] => (item=") == 2, _show(first)
    assert "TASK [fleet audit every manifest collected so far]" in first.stdout
    collected: dict[str, Path] = {}
    for station, count in zip(stations, (2, 3), strict=True):
        files = sorted((manifests / station.name).glob(f"{station.name}-*.json"))
        assert len(files) == 1, files
        collected[station.name] = files[0]
        document = json.loads(files[0].read_text())
        assert document["signed"]["station"] == station.name
        assert document["signed"]["summary"]["devices"] == count
        verified = fleet("verify", files[0], "--pubkey", station.pubkey)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # The second station's public key was fetched from it; the first one's was trusted.
    assert (manifests / "line1-b" / "station.pub.pem").read_text() == \
        stations[1].pubkey.read_text()
    assert not (manifests / "line1-a" / "station.pub.pem").exists()

    second = _playbook(tmp_path, inventory)
    assert second.returncode == 0, _show(second)
    recap = _recap(second.stdout)
    for station in stations:
        assert recap[station.name]["changed"] == 0, _show(second)
        assert recap[station.name]["failed"] == 0, _show(second)
        # The re-run's manifest is collected too, and says every key is unchanged.
        files = sorted((manifests / station.name).glob(f"{station.name}-*.json"))
        assert len(files) == 2, files
        newest = next(f for f in files if f != collected[station.name])
        keys = [k for d in json.loads(newest.read_text())["signed"]["devices"]
                for k in d["keys"]]
        assert keys and {k["outcome"] for k in keys} == {"unchanged"}
        verified = fleet("verify", newest, "--pubkey", station.pubkey)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert recap["localhost"]["changed"] == 0 and recap["localhost"]["failed"] == 0


def test_playbook_check_mode_reports_changes_and_sends_no_write(
        tmp_path: Path, stations: list[Station]) -> None:
    manifests = tmp_path / "controller" / "manifests"
    inventory = _inventory(tmp_path, stations, manifests)
    result = _playbook(tmp_path, inventory, "--check", "--diff")
    assert result.returncode == 0, _show(result)
    recap = _recap(result.stdout)
    for station in stations:
        assert recap[station.name]["changed"] >= 1, _show(result)
        assert recap[station.name]["failed"] == 0, _show(result)
        assert station.sim.log_lines(), "the station's modems were inspected"
        assert _write_commands(station.sim) == []
    # The diff says what would be generated, per device.
    assert "-tls: absent" in result.stdout and "+tls: generate (sec_tag 16842753)" in \
        result.stdout, _show(result)
    assert "+endorsement: capture (sec_tag 33)" in result.stdout
    assert not manifests.exists() or not any(manifests.rglob("*.json"))


def test_playbook_failed_station_still_collects_and_verifies_its_manifest(
        tmp_path: Path) -> None:
    with ExitStack() as stack:
        healthy = _station(tmp_path, "line1-a", 1, stack)
        faulty = _station(tmp_path, "line1-b", 2, stack, "--fault", "keygen-fail:1@1",
                          "--seed", "1", retries=0)
        manifests = tmp_path / "controller" / "manifests"
        result = _playbook(tmp_path, _inventory(tmp_path, [healthy, faulty], manifests))
    assert result.returncode == 2, _show(result)  # ansible-playbook: a host failed
    recap = _recap(result.stdout)
    assert recap["line1-a"]["failed"] == 0 and recap["line1-b"]["failed"] == 1, _show(result)
    assert "fleet run: 1 of 2 devices failed (the others finished): slot1 (" in result.stdout
    # The faulty station's manifest records the device that was done: collected and verified.
    # ... and audited with the other station's (ok: the verify loop, then the audit)
    assert recap["localhost"]["failed"] == 0 and recap["localhost"]["ok"] == 2, _show(result)
    assert result.stdout.count("ok: [localhost] => (item=") == 2, _show(result)
    (collected,) = (manifests / "line1-b").glob("line1-b-*.json")
    signed = json.loads(collected.read_text())["signed"]
    assert [d["outcome"] for d in signed["devices"]] == ["done", "failed"]


# --- the module, run as Ansible runs it ---------------------------------------------------------


def _module_plan(directory: Path, *, faults: str = "[]", signing: str | None = None) -> Path:
    """A plan for two in-process simulated modems (``sim://0-1``) that log their commands."""
    extra = f"simulator: {{seed: 7, state: sim.json, log: sim.log, faults: {faults}}}\n"
    kwargs = {} if signing is None else {"signing": signing}
    return write_plan(directory, ports="sim://0-1", extra=extra,
                      defaults="{timeout_s: 10, keygen_timeout_s: 10, retries: 0}", **kwargs)


def _module_args(directory: Path, args: dict[str, Any], *, check: bool, diff: bool) -> Path:
    path = directory / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "fleet": str(FLEET), **args, "_ansible_check_mode": check, "_ansible_diff": diff}}))
    return path


def _module(directory: Path, args: dict[str, Any], *, check: bool = False,
            diff: bool = True, cwd: Path | None = None) -> tuple[int, dict[str, Any]]:
    """Run the module file as Ansible does; returns (its exit status, its JSON result)."""
    argfile = _module_args(directory, args, check=check, diff=diff)
    proc = subprocess.run([sys.executable, str(MODULE), str(argfile)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=cwd or directory)
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"module printed no JSON: {proc.stdout}\n{proc.stderr}") from exc
    return proc.returncode, result


def _sim_writes(directory: Path) -> list[str]:
    log = directory / "sim.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [r["command"].upper() for r in lines
            if "fault" not in r and r["command"].upper().startswith(WRITES)]


def test_module_check_mode_passes_check_and_diffs_what_would_be_generated(
        tmp_path: Path) -> None:
    plan = _module_plan(tmp_path)
    code, result = _module(tmp_path, {"plan": str(plan), "journal": str(tmp_path / "j.sqlite")},
                           check=True)
    assert code == 0, result
    assert "--check" in result["cmd"] and result["check"] is True
    assert result["changed"] is True and result["manifest"] is None
    assert result["summary"] == {"devices": 2, "done": 2}
    assert [p["action"] for p in result["devices"][0]["planned"]] == ["generate", "capture"]
    assert len(result["diff"]) == 2
    diff = result["diff"][0]
    assert diff["before"] == "tls: absent\nendorsement: absent\n"
    assert diff["after"] == f"tls: generate (sec_tag {TLS})\nendorsement: capture (sec_tag 33)\n"
    assert diff["before_header"].startswith("slot0 (sim://0, IMEI ")
    assert _sim_writes(tmp_path) == []
    # Without diff mode there is no diff.
    code, result = _module(tmp_path, {"plan": str(plan)}, check=True, diff=False)
    assert code == 0 and "diff" not in result


def test_module_real_run_then_rerun(tmp_path: Path) -> None:
    _module_plan(tmp_path)
    args = {"plan": "plan.yaml", "chdir": str(tmp_path), "journal": "j.sqlite",
            "only": ["slot0", "slot1"], "concurrency": 1}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, result = _module(tmp_path, args, cwd=elsewhere)  # plan and journal: under chdir
    assert code == 0, result
    assert result["cmd"][1:] == ["run", "plan.yaml", "--json", "--journal", "j.sqlite",
                                 "--concurrency", "1", "--only=slot0", "--only=slot1"]
    assert (tmp_path / "j.sqlite").is_file() and not list(elsewhere.iterdir())
    assert result["changed"] is True and result["rc"] == 0 and "failed" not in result
    manifest = Path(result["manifest"])
    assert manifest.is_file()
    verified = fleet("verify", manifest, "--pubkey", tmp_path / "keys" / "station.pub.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert {k["outcome"] for d in result["devices"] for k in d["keys"]} == {"generated"}
    diff = result["diff"][1]
    assert diff["before"] == "tls: no key from fleet\nendorsement: no key from fleet\n"
    assert re.fullmatch(rf"tls: generated \(sec_tag {TLS}, public key SHA-256 [0-9a-f]{{16}}"
                        r"\.\.\.\)\nendorsement: generated \(sec_tag 33, public key SHA-256 "
                        r"[0-9a-f]{16}\.\.\.\)\n", diff["after"]), diff["after"]
    # The throwaway key's WARNING reaches Ansible as a warning; the log is returned.
    assert any("THROWAWAY" in str(w) for w in result.get("warnings", [])), result
    assert any(r.get("event") == "run started" for r in result["fleet_log"])

    code, again = _module(tmp_path, args, cwd=elsewhere)
    assert code == 0, again
    assert again["changed"] is False and again["diff"] == []
    assert again["manifest"] != result["manifest"] and Path(again["manifest"]).is_file()
    # --only keeps the run open: this invocation resumed it, and the run's record keeps what
    # the run did (the same words as its manifest), while nothing changed now.
    assert again["devices"] and not any(d["changed"] for d in again["devices"])
    assert {k["outcome"] for d in again["devices"] for k in d["keys"]} == {"generated"}


def test_module_exit_1_fails_with_the_failing_devices(tmp_path: Path) -> None:
    plan = _module_plan(tmp_path, faults='["keygen-fail:1@1"]',
                        signing="signing_key: keys/station.pem\nthrowaway_signing_key: true")
    code, result = _module(tmp_path, {"plan": str(plan), "journal": str(tmp_path / "j.sqlite")})
    assert code == 1 and result["failed"] is True and result["rc"] == 1, result
    assert result["msg"].startswith("fleet run: 1 of 2 devices failed (the others finished): "
                                    "slot1 (sim://1, IMEI "), result["msg"]
    assert "523" in result["msg"]
    assert result["changed"] is True  # slot0 got its keys
    assert Path(result["manifest"]).is_file()  # the manifest is written all the same
    assert [d["outcome"] for d in result["devices"]] == ["done", "failed"]


def test_module_exit_2_fails_with_the_plan_errors(tmp_path: Path) -> None:
    plan = _module_plan(tmp_path)
    plan.write_text(plan.read_text().replace(f"sec_tag: {TLS}", "sec_tag: 2147483648"))
    code, result = _module(tmp_path, {"plan": str(plan)})
    assert code == 1 and result["failed"] is True and result["rc"] == 2, result
    assert result["changed"] is False and result["manifest"] is None
    lines = result["msg"].splitlines()
    assert lines[0] == "fleet run: plan or usage error, nothing was sent to any device"
    assert re.match(r".*plan\.yaml:\d+: .*sec_tag", lines[1]), result["msg"]
    assert lines[-1] == "fleet run: invalid plan; nothing was sent to any device"
    assert not (tmp_path / "sim.log").exists()

    # A plan whose signing key is missing: fleet says how to make one.
    plan = _module_plan(tmp_path, signing="signing_key: keys/none.pem")
    code, result = _module(tmp_path, {"plan": str(plan)})
    assert code == 1 and result["rc"] == 2, result
    assert "fleet station-key init" in result["msg"], result["msg"]

    # A fleet executable that is not there.
    code, result = _module(tmp_path, {"plan": str(plan), "fleet": "no-such-fleet-here"})
    assert code == 1 and result["failed"] is True
    assert "no-such-fleet-here" in result["msg"]


def test_module_only_items_are_slot_names_never_options(tmp_path: Path) -> None:
    plan = _module_plan(tmp_path)
    journal = str(tmp_path / "j.sqlite")
    code, result = _module(tmp_path, {"plan": str(plan), "journal": journal,
                                      "only": ["slot0", "--check"]})
    assert result["cmd"][-2:] == ["--only=slot0", "--only=--check"], result
    # "--check" is no slot of the plan: a plan error, not a check run in a real run's place.
    assert code == 1 and result["rc"] == 2 and result["check"] is False, result
    assert "--only '--check' is neither the name nor the port of a slot" in result["msg"]
    assert not (tmp_path / "sim.log").exists()
    code, result = _module(tmp_path, {"plan": str(plan), "journal": journal, "only": ["slot1"]})
    assert code == 0 and result["check"] is False, result
    assert {d["slot"]: d["outcome"] for d in result["devices"]} == {"slot0": "not-started",
                                                                    "slot1": "done"}
    assert _sim_writes(tmp_path)  # a real run


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_module_exit_3_fails_as_interrupted(tmp_path: Path) -> None:
    # Every modem answers 5 s late, so the run is still going when fleet gets SIGTERM.
    plan = _module_plan(tmp_path, faults='["slow:1"]')
    argfile = _module_args(tmp_path, {"plan": str(plan), "journal": str(tmp_path / "j.sqlite")},
                           check=False, diff=False)
    proc = subprocess.Popen([sys.executable, str(MODULE), str(argfile)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # The simulator logs a command once the slots run (signal handling is on by then).
        while not (tmp_path / "sim.log").exists() or not (tmp_path / "sim.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        children = _children(proc.pid)
        assert len(children) == 1, children
        os.kill(children[0], signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(stdout)
    assert proc.returncode == 1 and result["failed"] is True and result["rc"] == 3, result
    assert result["interrupted"] is True
    assert result["msg"].startswith("fleet run was interrupted: the journal is consistent and "
                                    "a re-run resumes"), result["msg"]


def test_module_documentation_matches_its_arguments(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", "-M", str(ANSIBLE_DIR / "library"), "fleet_run"],
        capture_output=True, text=True, timeout=120, check=False, env=_ansible_env(tmp_path),
        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)["fleet_run"]
    options = doc["doc"]["options"]
    assert set(options) == {"plan", "fleet", "journal", "concurrency", "only", "fresh", "chdir"}
    assert options["plan"]["required"] is True
    assert {"changed", "manifest", "devices", "summary", "rc", "fleet_log"} <= set(doc["return"])
    assert doc["examples"].strip()


def test_example_inventory_and_playbook_pass_syntax_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i",
         str(ANSIBLE_DIR / "inventory.example.yml"), str(ANSIBLE_DIR / "site.yml")],
        capture_output=True, text=True, timeout=120, check=False, env=_ansible_env(tmp_path),
        cwd=tmp_path)
    assert result.returncode == 0, _show(result)
    assert "WARNING" not in result.stderr, result.stderr
    listed = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(ANSIBLE_DIR / "inventory.example.yml"),
         "--list"], capture_output=True, text=True, timeout=120, check=False,
        env=_ansible_env(tmp_path), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    hosts = json.loads(listed.stdout)["stations"]["hosts"]
    assert hosts == ["line1-a", "line1-b"]
