"""`fleet plan check` end to end, through the real command line (python -m fleet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fleet.cli import main
from fleet.station_key import init_station_key

REPO = Path(__file__).resolve().parent.parent

PLAN = """\
version: 1
station: line1-a
signing_key: keys/station.pem
keys:
  tls:
    sec_tag: 16842753
    type: client_key
    response: csr
    attributes: {CN: "{imei}", O: "Acme", C: "NO"}
    key_usage: "101010000"
    if_exists: replace
  endorsement:
    sec_tag: 33
    type: endorsement_key
slots:
  - port: sim://0-1
    keys: [tls, endorsement]
  - port: socket://gang-hub.local:4001
    name: remote
    keys: [tls]
    settings: {timeout_s: 40}
"""
TLS_COMMAND = 'AT%KEYGEN=16842753,2,0,"CN={imei},O=Acme,C=NO","101010000"'
NOTHING_SENT = "nothing was sent to any device"


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=REPO)


def test_valid_plan_prints_slots_and_commands(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    key = init_station_key(tmp_path / "keys")
    result = fleet("plan", "check", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "station:   line1-a" in out
    assert f"signing:   {tmp_path / 'keys' / 'station.pem'}  (loads: ES256 key " \
           f"{key.keyid[:16]}...)" in out.splitlines()
    assert f"manifest:  {tmp_path / 'out'}/{{station}}-{{date}}.json  (directory writable)" \
        in out.splitlines()
    assert "slots:     3, 5 key action(s)" in out
    for line in ("  slot0  sim://0  (line 16)", "  slot1  sim://1  (line 16)",
                 "  remote  socket://gang-hub.local:4001  (line 18)",
                 "    tls: sec_tag=16842753 type=client_key response=csr  if_exists=replace",
                 f"      {TLS_COMMAND}",
                 "    endorsement: sec_tag=33 type=endorsement_key response=public_key",
                 "      AT%KEYGEN=33,8",
                 "    settings: timeout_s=40.0 (the rest as defaults)",
                 "simulator: 2 modem(s) model=nrf9160 profile=fast seed=0"):
        assert line in out.splitlines(), (line, out)
    assert out.rstrip().endswith(f"plan is valid, and fleet run can start here; {NOTHING_SENT}")
    assert result.stderr == ""


def test_json_document(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    result = fleet("plan", "check", "--json", str(path))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["changed"] is False and doc["failed"] is False
    assert doc["station"] == "line1-a"
    assert len(doc["sha256"]) == 64
    assert [s["name"] for s in doc["slots"]] == ["slot0", "slot1", "remote"]
    assert doc["slots"][2]["settings"]["timeout_s"] == 40.0
    assert "concurrency" not in doc["slots"][2]["settings"]
    assert doc["defaults"]["concurrency"] is None
    tls = doc["slots"][0]["keys"][0]
    assert tls == {"name": "tls", "sec_tag": 16842753, "type": "client_key", "response": "csr",
                   "if_exists": "replace", "attributes": {"CN": "{imei}", "O": "Acme",
                                                          "C": "NO"},
                   "key_usage": "101010000", "command": TLS_COMMAND}
    assert doc["slots"][0]["keys"][1]["command"] == "AT%KEYGEN=33,8"
    assert doc["slots"][0]["keys"][1]["if_exists"] is None
    assert doc["simulator"]["count"] == 2


def test_invalid_plan_exits_2_with_every_error_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(PLAN.replace("sec_tag: 33", "sec_tag: 0").replace(
        '"101010000"', '"101010001"').replace('O: "Acme"', 'O: "Acme\\"\\r\\nAT+CFUN=0"'))
    result = fleet("plan", "check", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{path}:9: keys.tls.attributes.O: attribute O value contains a "
                               "double quote")
    assert lines[1].startswith(f"{path}:10: keys.tls.key_usage: key_usage '101010001' sets "
                               "decipherOnly")
    assert lines[2] == f"{path}:13: keys.endorsement.sec_tag: must be greater than or equal " \
                       "to 1 (got 0)"
    assert lines[3] == f"fleet plan check: {path}: 3 errors; {NOTHING_SENT}"
    assert len(lines) == 4
    as_json = fleet("plan", "check", "--json", str(path))
    assert as_json.returncode == 2
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and doc["failed"] is True and len(doc["errors"]) == 3


def test_missing_and_unreadable_plans_exit_2(tmp_path: Path) -> None:
    result = fleet("plan", "check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'nope.yaml'}: cannot read the plan: No such file or directory",
        f"fleet plan check: {tmp_path / 'nope.yaml'}: 1 error; {NOTHING_SENT}"]
    result = fleet("plan", "check", str(tmp_path))
    assert result.returncode == 2
    assert "cannot read the plan: it is a directory, not a regular file" in result.stderr
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)  # nobody writes to it: reading it would wait forever
    for path, kind in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")):
        result = fleet("plan", "check", str(path))
        assert result.returncode == 2
        assert result.stderr.splitlines()[0] == (f"{path}: cannot read the plan: it is {kind}, "
                                                 "not a regular file: name the file itself")


def test_usage_errors_exit_2() -> None:
    assert fleet("plan").returncode == 2
    assert fleet("plan", "check").returncode == 2


def test_glob_matching_nothing_and_no_expand(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.replace("sim://0-1", '"/dev/serial/by-id/*no-such-board*"'))
    result = fleet("plan", "check", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}:16: slots[0].port: port pattern '/dev/serial/by-id/*no-such-board*' matches "
        "no port",
        f"fleet plan check: {path}: 1 error (--no-expand checks the rest without the devices); "
        f"{NOTHING_SENT}"]
    result = fleet("plan", "check", "--no-expand", str(path))
    assert result.returncode == 0, result.stderr
    assert ("  slot0  /dev/serial/by-id/*no-such-board*  (line 16, pattern not expanded)"
            in result.stdout.splitlines())


def test_only(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    result = fleet("plan", "check", "--json", "--only", "remote", "--only", "sim://1",
                   str(path))
    assert result.returncode == 0, result.stderr
    assert [s["name"] for s in json.loads(result.stdout)["slots"]] == ["slot1", "remote"]
    assert main(["plan", "check", "--only", "slot7", str(path)]) == 2


def test_only_naming_a_malformed_port_is_a_plan_error(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    for item in ("", "slot0 ", "usb:", "socket://x:0", "sim://a", "a\nb"):
        result = fleet("plan", "check", "--json", "--only", item, str(path))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        errors = json.loads(result.stdout)["errors"]
        assert len(errors) == 1
        assert f"--only {item!r} is neither the name nor the port of a slot" in errors[0]


def test_example_plan_checks_without_the_devices() -> None:
    result = fleet("plan", "check", "--no-expand", "plans/example.yaml")
    assert result.returncode == 0, result.stderr
    assert ('AT%KEYGEN=16842753,2,0,"CN={imei},O=Acme Devices,OU={station},C=NO","101010000"'
            in result.stdout)


def test_a_plan_nested_too_deeply_is_a_plan_error(tmp_path: Path) -> None:
    reason = "nested too deeply: more than 64 levels of mappings and sequences"
    for name, deep in (("lists.yaml", "[" * 600 + "]" * 600),
                       ("mappings.yaml", "{a: " * 600 + "1" + "}" * 600)):
        path = tmp_path / name
        path.write_text(PLAN.replace("    keys: [tls]\n", f"    keys: {deep}\n"))
        line = PLAN.splitlines().index("    keys: [tls]") + 1
        for command in (["plan", "check"], ["run"], ["run", "--check"]):
            result = fleet(*command, str(path))
            assert result.returncode == 2, result.stderr
            assert f"{path}:{line}: {reason}\n" in result.stderr
            assert NOTHING_SENT in result.stderr and "Traceback" not in result.stderr
            result = fleet(*command, "--json", str(path))
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            doc = json.loads(result.stdout)
            assert doc["failed"] is True and doc["changed"] is False
            errors = doc["errors"] if command == ["plan", "check"] else doc["error"].splitlines()
            assert errors == [f"{path}:{line}: {reason}"]


def test_check_says_when_run_would_stop_for_the_key_or_the_manifest_directory(
        tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a file, where the manifest directory should be\n")
    path = tmp_path / "plans" / "plan.yaml"
    path.parent.mkdir()
    path.write_text(PLAN.replace("signing_key: keys/station.pem",
                                 "signing_key: ../keys/station.pem\n"
                                 "manifest: ../afile/{station}/../m.json"))
    result = fleet("plan", "check", str(path))
    assert result.returncode == 0, result.stderr  # the plan is valid; this machine is not ready
    lines = result.stdout.splitlines()
    assert f"signing:   {tmp_path / 'keys' / 'station.pem'}  (NOT USABLE, see below)" in lines
    assert f"manifest:  {tmp_path / 'afile' / 'm.json'}  (NOT WRITABLE, see below)" in lines
    assert (f"  fleet run would stop: signing key {tmp_path / 'keys' / 'station.pem'} does "
            "not exist: create it with `fleet station-key init --out ") in result.stdout
    assert (f"  fleet run would stop: the manifest directory {tmp_path / 'afile'} cannot be "
            f"made: {tmp_path / 'afile'} is not a directory") in lines
    assert lines[-1] == ("plan is valid, but fleet run would stop here before any device (see "
                         f"above); {NOTHING_SENT}")
    doc = json.loads(fleet("plan", "check", "--json", str(path)).stdout)
    assert doc["ok"] is True and doc["ready"] is False
    assert "does not exist" in doc["signing_key_problem"]
    assert "is not a directory" in doc["manifest_problem"]
    assert doc["manifest_pattern"] == str(tmp_path / "afile" / "m.json")
    assert not (tmp_path / "keys").exists()  # plan check makes nothing

    init_station_key(tmp_path / "keys")
    (tmp_path / "afile").unlink()
    doc = json.loads(fleet("plan", "check", "--json", str(path)).stdout)
    assert doc["ready"] is True and doc["signing_key_problem"] is None
    assert doc["manifest_problem"] is None and doc["signing_key_state"].startswith("loads: ")
    assert not (tmp_path / "afile").exists()  # nor the manifest directory


def test_check_help_shows_the_keygen_command() -> None:
    result = fleet("plan", "check", "--help")
    assert result.returncode == 0
    assert "AT%KEYGEN command" in result.stdout and "%%" not in result.stdout
