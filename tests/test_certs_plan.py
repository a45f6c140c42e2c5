"""The plan's `ca:` section: both forms load, every mistake is a line-numbered error."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from fleet.certs import CommandCa, LocalCa
from fleet.errors import PlanError
from fleet.plan import load_plan
from tests.certhelpers import SCRIPT_CA, make_ca
from tests.runhelpers import write_plan

LOCAL = """
    ca:
      cert: ca/ca.pem
      key: ca/ca.key
      validity_days: 90
      chain: ca/ca.pem
"""


def keys(ca: str = LOCAL, *, head: str = "type: client_key\n    response: csr") -> str:
    return ("keys:\n  tls:\n    sec_tag: 16842753\n    " + head + "\n"
            '    attributes: {CN: "{imei}"}\n'
            + textwrap.indent(textwrap.dedent(ca).rstrip("\n") + "\n", "    "))


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    make_ca(tmp_path / "ca")
    make_ca(tmp_path / "leaf", ca=False)
    make_ca(tmp_path / "other")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    return tmp_path


def load(directory: Path, text: str) -> object:
    return load_plan(write_plan(directory, ports="sim://0", keys=text, slot_keys="[tls]"))


def errors(directory: Path, text: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        load(directory, text)
    return info.value.errors


def test_local_ca_loads(plan_dir: Path) -> None:
    plan = load_plan(write_plan(plan_dir, ports="sim://0", keys=keys(), slot_keys="[tls]"))
    ca = plan.keys["tls"].ca
    assert isinstance(ca, LocalCa)
    assert ca.cert_path == plan_dir / "ca" / "ca.pem" and ca.validity_days == 90
    assert ca.chain is not None and ca.chain.path == plan_dir / "ca" / "ca.pem"
    assert ca.chain.pem == (plan_dir / "ca" / "ca.pem").read_text()
    assert "\r" not in ca.chain.pem


@pytest.mark.parametrize("form", ["list", "string"])
def test_command_ca_loads(plan_dir: Path, form: str) -> None:
    (plan_dir / "bin").mkdir()
    script = plan_dir / "bin" / "sign.sh"
    script.write_text("#!/bin/sh\nexec true\n")
    script.chmod(0o755)
    command = ('["./bin/sign.sh", "--profile", "device cert"]' if form == "list"
               else "'./bin/sign.sh --profile \"device cert\"'")
    plan = load_plan(write_plan(plan_dir, ports="sim://0", slot_keys="[tls]", keys=keys(
        f"ca:\n  command: {command}\n  timeout_s: 5\n  issuer: ca/ca.pem\n")))
    ca = plan.keys["tls"].ca
    assert isinstance(ca, CommandCa)
    assert ca.argv == (str(script), "--profile", "device cert")
    assert ca.timeout_s == 5 and ca.cwd == plan_dir and ca.issuer is not None


def test_encrypted_key_with_passphrase_env(plan_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    make_ca(plan_dir / "enc", passphrase=b"open sesame")
    text = keys("ca:\n  cert: enc/ca.pem\n  key: enc/ca.key\n  key_passphrase_env: CA_PASS\n")
    assert any("CA_PASS" in e and "not set" in e for e in errors(plan_dir, text))
    monkeypatch.setenv("CA_PASS", "open sesame")
    assert isinstance(load_plan(write_plan(plan_dir, ports="sim://0", keys=text,
                                           slot_keys="[tls]")).keys["tls"].ca, LocalCa)


# (case, keys text, expected line of the error, a fragment of the reason)
BAD: list[tuple[str, str, int, str]] = [
    ("endorsement key", keys("ca: {cert: ca/ca.pem, key: ca/ca.key}",
                             head="type: endorsement_key"), 0, "only valid for a client_key"),
    ("public key response", keys("ca: {cert: ca/ca.pem, key: ca/ca.key}",
                                 head="type: client_key\n    response: public_key"), 0,
     "only valid for a client_key"),
    ("both forms", keys('ca: {cert: ca/ca.pem, key: ca/ca.key, command: ["true"]}'), 0,
     "either a local CA"),
    ("neither form", keys("ca: {chain: ca/ca.pem}"), 0, "needs either cert and key"),
    ("no key", keys("ca:\n  cert: ca/ca.pem\n"), 0, "a local CA needs key"),
    ("unknown field", keys("ca:\n  cert: ca/ca.pem\n  key: ca/ca.key\n  days: 3\n"), 3,
     "unknown key 'days'"),
    ("missing file", keys("ca:\n  cert: ca/nope.pem\n  key: ca/ca.key\n"), 1, "cannot read"),
    ("not a CA", keys("ca:\n  cert: leaf/ca.pem\n  key: leaf/ca.key\n"), 1,
     "not a CA certificate"),
    ("key of another CA", keys("ca:\n  cert: ca/ca.pem\n  key: other/ca.key\n"), 2,
     "is not the key of the CA certificate"),
    ("validity too long", keys("ca:\n  cert: ca/ca.pem\n  key: ca/ca.key\n"
                               "  validity_days: 36501\n"), 3, "36500"),
    ("validity zero", keys("ca:\n  cert: ca/ca.pem\n  key: ca/ca.key\n  validity_days: 0\n"),
     3, "greater than or equal to 1"),
    ("timeout on a local CA", keys("ca:\n  cert: ca/ca.pem\n  key: ca/ca.key\n"
                                   "  timeout_s: 3\n"), 3, "does not apply to a local CA"),
    ("validity on a command", keys("ca:\n  command: [\"true\"]\n  validity_days: 3\n"), 2,
     "does not apply to a command CA"),
    ("chain not PEM", keys("ca:\n  cert: ca/ca.pem\n  key: ca/ca.key\n  chain: garbage.pem\n"),
     3, "no PEM certificate"),
    ("program not found", keys("ca:\n  command: [fleet-no-such-ca-program]\n"), 1,
     "not found on PATH"),
    ("program not executable", keys("ca:\n  command: [./garbage.pem]\n"), 1,
     "not executable"),
    ("unbalanced quote", keys("ca:\n  command: 'sign \"oops'\n"), 1, "cannot be split"),
    ("empty command", keys("ca:\n  command: []\n"), 1, "command is empty"),
    ("command not strings", keys("ca:\n  command: [sign, 3]\n"), 1,
     "a list of strings or one string"),
    ("bad env name", keys("ca:\n  cert: ca/ca.pem\n  key: ca/ca.key\n"
                          "  key_passphrase_env: 1BAD\n"), 3, "environment variable name"),
]


@pytest.mark.parametrize(("case", "text", "offset", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_ca_sections_are_line_numbered_errors(plan_dir: Path, case: str, text: str,
                                                  offset: int, reason: str) -> None:
    found = errors(plan_dir, text)
    plan_text = (plan_dir / "plan.yaml").read_text().splitlines()
    ca_line = next(i for i, line in enumerate(plan_text, 1) if line.strip().startswith("ca:"))
    matching = [e for e in found if reason in e]
    assert matching, found
    line = int(re.match(r".*plan\.yaml:(\d+):", matching[0]).group(1))  # type: ignore[union-attr]
    assert line == ca_line + offset, (matching, ca_line)


def test_ca_key_usage_refused(plan_dir: Path) -> None:
    text = keys().replace('attributes: {CN: "{imei}"}',
                          'attributes: {CN: "{imei}"}\n    key_usage: "100001000"')
    assert any("keyCertSign" in e for e in errors(plan_dir, text))


def test_chain_too_long_for_one_command(plan_dir: Path) -> None:
    pem = (plan_dir / "ca" / "ca.pem").read_text()
    (plan_dir / "big.pem").write_text(pem * 10)
    text = keys("ca:\n  cert: ca/ca.pem\n  key: ca/ca.key\n  chain: big.pem\n")
    assert any("cannot be written in one AT%CMNG" in e for e in errors(plan_dir, text))


def test_plan_check_shows_the_ca(plan_dir: Path) -> None:
    from tests.runhelpers import fleet

    plan = write_plan(plan_dir, ports="sim://0", keys=keys(f"""
        ca:
          command: ["{sys.executable}", "{SCRIPT_CA}", ca/ca.pem, ca/ca.key]
          chain: ca/ca.pem
        """), slot_keys="[tls]")
    result = fleet("plan", "check", plan)
    assert result.returncode == 0, result.stderr
    assert "certificate: CA command" in result.stdout and "as type 0" in result.stdout
