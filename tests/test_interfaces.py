"""`fleet run` through every interface a board may show: a Zephyr shell with the at command
(with and without wildcards, raw AT mode, a small command buffer) and AT hosts built with each
line terminator, against `fleet sim` on real pseudo-terminals."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runhelpers import KEYS, fleet, run_json, write_plan
from tests.simproc import run_sim
from tests.test_certs_e2e import CA_KEYS

TLS = 16842753
WRITES = ("AT+CFUN=", "AT%KEYGEN", "AT%CMNG=0", "AT%CMNG=3")
FAST = "{timeout_s: 5, keygen_timeout_s: 10, retries: 2, probe_timeout_s: 1}"


def _ports(tmp_path: Path) -> str:
    return str(tmp_path / "ports" / "modem*")


def _writes(commands: list[str]) -> list[str]:
    return [c for c in commands if c.upper().startswith(WRITES)]


def _manifest_devices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = json.loads(Path(doc["manifest"]).read_text())[
        "signed"]["devices"]
    return devices


def test_shell_without_wildcards_writes_keys_and_certificates_then_changes_nothing(
        tmp_path: Path) -> None:
    assert fleet("ca", "init", tmp_path / "ca").returncode == 0
    with run_sim(tmp_path, 4, "--interface", "shell", "--shell-wildcards", "off",
                 "--shell-buffer", "3584", "--unescape-lf") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), keys=CA_KEYS)
        code, first, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        for device in first["devices"]:
            assert (device["interface"], device["terminator"]) == ("shell", "cr")
            tls = next(k for k in device["keys"] if k["name"] == "tls")
            assert tls["outcome"] == "generated"
            assert tls["certificate"]["outcome"] == "issued"
            assert tls["ca_chain"]["outcome"] == "written"
            index = int(Path(device["port"]).name.removeprefix("modem"))
            stored = {(c["sec_tag"], c["type"]): c for c in sim.modem_state(index)["credentials"]}
            # the PEM reached the modem byte for byte (LF, not the shell's escapes)
            assert stored[(TLS, 1)]["content"] == tls["certificate"]["pem"]
        assert {(d["interface"], d["terminator"]) for d in _manifest_devices(first)} == {
            ("shell", "cr")}
        before = len(sim.log_lines())
        code, second, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        assert second["changed"] is False
        for device in second["devices"]:
            tls = next(k for k in device["keys"] if k["name"] == "tls")
            assert tls["outcome"] == "unchanged" and tls["certificate"]["outcome"] == "unchanged"
        assert not _writes([r["command"] for r in sim.log_lines()[before:]])


def test_zephyr_defaults_reach_the_modem_through_raw_at_mode(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--interface", "shell", "--at-cmd-mode", "on",
                 "--function-mode", "1") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), defaults=FAST)
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        assert all(k["outcome"] == "generated" for d in doc["devices"] for k in d["keys"])
        commands = sim.commands(0)
        assert "AT+CFUN?" in commands and "AT+CFUN=1" in commands  # read, and restored
    state = sim.modem_state(0)
    assert state["function_mode"] == 1


def test_zephyr_defaults_without_raw_at_mode_fail_fast_naming_the_options(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--interface", "shell", "--function-mode", "1") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), defaults=FAST)
        started = time.monotonic()
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        elapsed = time.monotonic() - started
        assert code == 1, err
        for device in doc["devices"]:
            assert device["outcome"] == "failed"
            assert "CONFIG_SHELL_WILDCARD=n" in device["error"], device["error"]
            assert "CONFIG_AT_SHELL_CMD_MODE" in device["error"], device["error"]
            assert {k["outcome"] for k in device["keys"]} == {"not-attempted"}
        assert elapsed < 20, elapsed
        for index in range(2):
            assert not _writes(sim.commands(index)), sim.commands(index)


def test_a_certificate_longer_than_the_shell_buffer_fails_its_step_naming_the_option(
        tmp_path: Path) -> None:
    assert fleet("ca", "init", tmp_path / "ca").returncode == 0
    with run_sim(tmp_path, 1, "--interface", "shell", "--shell-wildcards", "off") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path), keys=CA_KEYS, defaults=FAST)
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 1, err
        tls, endorsement = doc["devices"][0]["keys"]
        assert tls["csr_pem"]  # the key is made; its certificate is not written
        assert tls["certificate"]["outcome"] == "failed"
        assert "CONFIG_SHELL_CMD_BUFF_SIZE" in tls["certificate"]["error"]
        assert endorsement["outcome"] == "generated"
        assert not [c for c in sim.commands(0) if c.upper().startswith("AT%CMNG=0")]


@pytest.mark.parametrize(("built", "found"), [("crlf", "crlf"), ("lf", "crlf"), ("nul", "nul")])
def test_terminator_auto_finds_the_at_hosts_line_end(tmp_path: Path, built: str,
                                                     found: str) -> None:
    with run_sim(tmp_path, 2, "--terminator", built):
        plan = write_plan(tmp_path, ports=_ports(tmp_path), defaults=FAST)
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        assert code == 0, err
        for device in doc["devices"]:
            assert (device["interface"], device["terminator"]) == ("at", found)
            assert {k["outcome"] for k in device["keys"]} == {"generated"}


def test_a_named_terminator_the_firmware_was_not_built_with_fails_fast(tmp_path: Path) -> None:
    with run_sim(tmp_path, 1, "--terminator", "crlf") as sim:
        plan = write_plan(tmp_path, ports=_ports(tmp_path),
                          defaults="{timeout_s: 5, terminator: cr, interface: at}")
        started = time.monotonic()
        code, doc, err = run_json(plan, tmp_path / "j.sqlite")
        assert time.monotonic() - started < 20
        assert code == 1, err
        error = doc["devices"][0]["error"]
        assert "`terminator` (cr now)" in error and "terminator: auto" in error, error
        assert sim.commands(0) == []  # CR never ended a command on this build


def test_a_plan_that_names_its_line_costs_no_extra_commands(tmp_path: Path) -> None:
    with run_sim(tmp_path, 1, "--terminator", "crlf") as sim:
        named = write_plan(tmp_path, ports=_ports(tmp_path), keys=KEYS, name="named.yaml",
                           defaults="{terminator: crlf, interface: at}")
        code, doc, err = run_json(named, tmp_path / "named.sqlite")
        assert code == 0, err
        assert doc["devices"][0]["terminator"] == "crlf"
        assert sim.commands(0)[:2] == ["AT", "AT+CGSN=1"]  # one probe, then identification


def test_sim_ports_take_the_line_options_from_the_plan(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        version: 1
        station: s
        signing_key: keys/station.pem
        throwaway_signing_key: true
        manifest: out/{station}-{run_id}.json
        simulator: {interface: shell, at_cmd_mode: true, prompt: "mosh:~$ "}
        keys:
          endorsement: {sec_tag: 33, type: endorsement_key}
        slots:
          - {name: b, port: "sim://0-1", keys: [endorsement]}
        """))
    code, doc, err = run_json(plan, tmp_path / "j.sqlite")
    assert code == 0, err
    assert {(d["interface"], d["outcome"]) for d in doc["devices"]} == {("shell", "done")}
