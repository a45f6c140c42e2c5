"""The plan loader: every bad-input rule with its exact line, expansion, templates, the model."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet.at import parse_command
from fleet.errors import PlanError
from fleet.plan import (
    ATTRIBUTE_PLACEHOLDERS,
    IfExists,
    KeySpec,
    KeyType,
    Plan,
    Response,
    Settings,
    SimulatorSettings,
    Slot,
    Template,
    load_plan,
)

REPO = Path(__file__).resolve().parent.parent

# Line numbers of BASE, used by the tests below:
BASE = """\
version: 1
station: line1-a
keys:
  tls:
    sec_tag: 16842753
    type: client_key
    response: csr
    attributes:
      CN: "{imei}"
      O: "Acme"
      C: "NO"
    key_usage: "101010000"
  endorsement:
    sec_tag: 33
    type: endorsement_key
slots:
  - port: sim://0-1
    keys: [tls, endorsement]
"""
L_SEC_TAG, L_TYPE, L_RESPONSE, L_ATTRS, L_CN, L_O, L_C, L_KEY_USAGE = 5, 6, 7, 8, 9, 10, 11, 12
L_TLS, L_E_SEC_TAG, L_E_TYPE, L_SLOTS, L_PORT, L_SLOT_KEYS = 4, 14, 15, 16, 17, 18


def write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(tmp_path: Path, text: str, **kwargs: object) -> list[tuple[int, str]]:
    """Load ``text``; return its errors as (line, reason) (asserting the file:line: format)."""
    path = write(tmp_path, text)
    with pytest.raises(PlanError) as info:
        load_plan(path, **kwargs)  # type: ignore[arg-type]
    out = []
    for error in info.value.errors:
        match = re.match(re.escape(str(path)) + r":(\d+): (.*)\Z", error, re.S)
        assert match, f"not file:line: reason: {error!r}"
        out.append((int(match.group(1)), match.group(2)))
    return out


def one_error(tmp_path: Path, text: str, **kwargs: object) -> tuple[int, str]:
    found = errors(tmp_path, text, **kwargs)
    assert len(found) == 1, found
    return found[0]


def replace(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_base_plan_loads(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    plan = load_plan(path)
    assert plan.version == 1
    assert plan.station == "line1-a"
    assert plan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plan.path == path
    assert plan.signing_key is None
    assert plan.throwaway_signing_key is False
    assert plan.manifest == "out/{station}-{date}.json"
    assert plan.defaults == Settings()
    assert list(plan.keys) == ["tls", "endorsement"]
    tls = plan.keys["tls"]
    assert tls == KeySpec(name="tls", sec_tag=16842753, type=KeyType.CLIENT_KEY,
                          response=Response.CSR,
                          attributes=(("CN", "{imei}"), ("O", "Acme"), ("C", "NO")),
                          key_usage="101010000", if_exists=IfExists.KEEP, line=L_TLS)
    endorsement = plan.keys["endorsement"]
    assert endorsement.response is Response.PUBLIC_KEY
    assert endorsement.if_exists is IfExists.KEEP
    assert [(s.name, s.port, s.line) for s in plan.slots] == [
        ("slot0", "sim://0", L_PORT), ("slot1", "sim://1", L_PORT)]
    assert plan.slots[0].keys == (tls, endorsement)
    assert plan.simulator == SimulatorSettings(count=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.station = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.keys["x"] = tls  # type: ignore[index]


# -- every bad-input rule, with its line ----------------------------------------------------------

BAD = [
    # sec_tag
    ("sec_tag: 16842753", "sec_tag: 0", L_SEC_TAG, "greater than or equal to 1"),
    ("sec_tag: 16842753", "sec_tag: 2147483648", L_SEC_TAG, "less than or equal to 2147483647"),
    ("sec_tag: 16842753", "sec_tag: -5", L_SEC_TAG, "greater than or equal to 1"),
    ("sec_tag: 16842753", "sec_tag: true", L_SEC_TAG, "expected an integer, got a boolean"),
    ("sec_tag: 16842753", 'sec_tag: "16842753"', L_SEC_TAG, "expected an integer, got a string"),
    ("sec_tag: 16842753", "sec_tag: 1.5", L_SEC_TAG, "expected an integer"),
    # key_usage
    ('key_usage: "101010000"', 'key_usage: "10101000"', L_KEY_USAGE, "exactly 9 binary digits"),
    ('key_usage: "101010000"', 'key_usage: "1010100000"', L_KEY_USAGE, "exactly 9 binary"),
    ('key_usage: "101010000"', 'key_usage: "10101000x"', L_KEY_USAGE, "exactly 9 binary digits"),
    ('key_usage: "101010000"', 'key_usage: "101010001"', L_KEY_USAGE, "decipherOnly"),
    ('key_usage: "101010000"', "key_usage: 101010000", L_KEY_USAGE,
     'expected a string, got a number (101010000): YAML reads unquoted 101010000 as a number; '
     'write it in quotes: "101010000"'),
    # attribute names and values
    ('O: "Acme"', 'XX: "Acme"', L_O, "attribute 'XX' is not one the modem supports"),
    ('O: "Acme"', "O: 'Ac\"me'", L_O, "double quote"),
    ('O: "Acme"', 'O: "Ac\\tme"', L_O, "control character '\\t'"),
    ('O: "Acme"', 'O: "Ac\\x01me"', L_O, "control character '\\x01'"),
    ('O: "Acme"', 'O: "Acme\\r\\nAT+CFUN=0"', L_O, "control character '\\r'"),
    ('O: "Acme"', 'O: "Acme\\nAT+CFUN=0"', L_O, "control character '\\n'"),
    ('O: "Acme"', 'O: "Acme\\0"', L_O, "control character '\\x00'"),
    ('O: "Acme"', 'O: "Acme, Inc"', L_O, "comma"),
    ('O: "Acme"', 'O: ""', L_O, "empty value"),
    ('O: "Acme"', 'O: " Acme"', L_O, "leading or trailing spaces"),
    ('C: "NO"', 'C: "NOR"', L_C, "2-letter"),
    ('C: "NO"', "C: NO", L_C, 'YAML reads unquoted NO as a boolean; write it in quotes: "NO"'),
    ('O: "Acme"', 'O: "Acme\\"\\r\\nAT+CFUN=0\\r\\n\\""', L_O, "double quote"),
    # templates
    ('CN: "{imei}"', 'CN: "{serial}"', L_CN, "unknown placeholder {serial}"),
    ('CN: "{imei}"', 'CN: "{imei"', L_CN, "bad template"),
    ('CN: "{imei}"', 'CN: "imei}"', L_CN, "bad template"),
    ('CN: "{imei}"', 'CN: "{imei:>20}"', L_CN, "format spec"),
    ('CN: "{imei}"', 'CN: "{imei!r}"', L_CN, "format spec or conversion"),
    ('CN: "{imei}"', 'CN: "{0}"', L_CN, "unknown placeholder {0}"),
    ('CN: "{imei}"', 'CN: "{imei.real}"', L_CN, "unknown placeholder"),
    ('C: "NO"', 'C: "{imei}"', L_C, "countryName must be a 2-letter code"),
    ('O: "Acme"', f'O: "{"A" * 4100}"', L_TLS, "%KEYGEN cannot be sent: AT%KEYGEN is 4"),
    # response / type combinations the modem does not support
    ("    response: csr\n", "", L_TLS, "response is required for a client_key"),
    ("response: csr", "response: pem", L_RESPONSE, "must be 'csr' or 'public_key'"),
    ("type: client_key", "type: root_ca", L_TYPE, "must be 'client_key' or 'endorsement_key'"),
    ("type: endorsement_key", "type: endorsement_key\n    response: csr", L_E_TYPE + 1,
     "an endorsement_key returns only its public key"),
    ("type: endorsement_key", "type: endorsement_key\n    if_exists: keep", L_E_TYPE + 1,
     "if_exists does not apply to an endorsement_key"),
    ("type: endorsement_key", "type: endorsement_key\n    if_exists:\n      keep", L_E_TYPE + 1,
     "keys.endorsement.if_exists: if_exists does not apply"),  # the key's line: it is misplaced
    ("type: endorsement_key", "type: endorsement_key\n    key_usage: '101010000'",
     L_E_TYPE + 1, "key_usage is only valid with response: csr, not for an endorsement_key"),
    ("type: endorsement_key", "type: endorsement_key\n    attributes: {CN: x}", L_E_TYPE + 1,
     "attributes is only valid with response: csr"),
    # unknown keys at every level, also the fields fleet fills in itself
    ("    type: endorsement_key", "    type: endorsement_key\n    name: other", L_E_TYPE + 1,
     "keys.endorsement.name: unknown key 'name' (allowed here: sec_tag, type, response,"),
    ("slots:", "simulator:\n  count: 5\nslots:", L_SLOTS + 1, "simulator.count: unknown key"),
    ("station: line1-a", "station: line1-a\nstaton: x", 3, "unknown key 'staton'"),
    ("    type: client_key", "    type: client_key\n    tag: 1", L_TYPE + 1, "unknown key 'tag'"),
    ("    keys: [tls, endorsement]", "    keys: [tls, endorsement]\n    baud: 9600",
     L_SLOT_KEYS + 1, "unknown key 'baud' (allowed here: port, keys, name, settings)"),
    ("    keys: [tls, endorsement]", "    keys: [tls, endorsement]\n    settings:\n"
     "      retries: 2\n      timeout: 5", L_SLOT_KEYS + 3, "unknown key 'timeout'"),
    ("version: 1", "version: 1\ndefaults:\n  baud: 9600", 3, "defaults.baud: unknown key"),
    ("slots:", "simulator:\n  seeds: 1\nslots:", L_SLOTS + 1, "simulator.seeds: unknown key"),
    # duplicate YAML keys
    ("station: line1-a", "station: line1-a\nstation: line1-b", 3,
     "duplicate key 'station' (first at line 2)"),
    ('      O: "Acme"', '      O: "Acme"\n      O: "Other"', L_O + 1,
     "duplicate key 'O' (first at line 10)"),
    ("    sec_tag: 33", "    sec_tag: 33\n    sec_tag: 34", L_E_SEC_TAG + 1, "duplicate key"),
    # slots
    ("keys: [tls, endorsement]", "keys: [tls, endorsment]", L_SLOT_KEYS,
     "unknown key 'endorsment' (defined under keys: tls, endorsement)"),
    ("keys: [tls, endorsement]", "keys: [tls, tls]", L_SLOT_KEYS, "'tls' is listed twice"),
    ("keys: [tls, endorsement]", "keys: []", L_SLOT_KEYS, "slots[0].keys: must not be empty"),
    ("    keys: [tls, endorsement]\n", "    keys: [tls, endorsement]\n    name: a\n"
     "  - port: sim://1\n    keys: [tls]\n", L_SLOT_KEYS + 2,
     "port 'sim://1' is already used by slot 'a-1' (line 17)"),
    ("  - port: sim://0-1\n", "  - port: [sim://0, sim://1, sim://0]\n", L_PORT,
     "port 'sim://0' is already used by slot 'slot0'"),
    ("port: sim://0-1", "port: socket://hub:0", L_PORT, "TCP port must be a number from 1"),
    ("port: sim://0-1", "port: socket://hub:70000", L_PORT, "TCP port must be a number from 1"),
    ("port: sim://0-1", "port: socket://hub:abc", L_PORT, "TCP port must be a number from 1"),
    ("port: sim://0-1", "port: socket://hub", L_PORT, "TCP port must be a number from 1"),
    ("port: sim://0-1", "port: socket://:4001", L_PORT, "no host name"),
    ("port: sim://0-1", "port: socket://hub:4001/x", L_PORT, "nothing after the port"),
    ("port: sim://0-1", "port: rfc2217://hub:4001", L_PORT, "unsupported scheme rfc2217://"),
    ("port: sim://0-1", "port: sim://3-1", L_PORT, "backwards"),
    ("port: sim://0-1", "port: sim://x", L_PORT, "write sim://N or sim://A-B"),
    ("port: sim://0-1", "port: sim://0-99999", L_PORT, "indices go up to 4095"),
    ("port: sim://0-1", "port: 5", L_PORT, "expected a port string"),
    ("port: sim://0-1", "port: []", L_PORT, "non-empty list"),
    ("port: sim://0-1", "port: [sim://0, 7]", L_PORT, "expected a port string"),
    ("  - port: sim://0-1\n", "  - port: sim://0-1\n    name: bad/name\n", L_PORT + 1,
     "slot name 'bad/name' must match"),
    ("    keys: [tls, endorsement]\n", "    keys: [tls, endorsement]\n  - port: sim://2\n"
     "    keys: [tls]\n    name: slot3\n  - port: sim://3\n    keys: [tls]\n", L_SLOT_KEYS + 4,
     "slots[2]: slot name 'slot3' is already used (line 19)"),
    ("  - port: sim://0-1\n    keys: [tls, endorsement]\n", "  - port: sim://0-1\n", L_PORT,
     "slots[0].keys: missing (required)"),
    ("  - port: sim://0-1\n", "  - name: x\n", L_PORT, "slots[0].port: missing (required)"),
    # top level
    ("version: 1", "version: 2", 1, "unsupported plan version 2"),
    ("version: 1", "version: true", 1, "expected an integer, got a boolean"),
    ("version: 1\n", "", 1, "version: missing (required)"),
    ("station: line1-a", "station: line 1", 2, "station 'line 1' must match"),
    ("station: line1-a", f"station: {'x' * 65}", 2, "must match [A-Za-z0-9._-]{1,64}"),
    ("station: line1-a", "station: line1-a\nmanifest: out/{station}-{day}.json", 3,
     "unknown placeholder {day}"),
    ("station: line1-a", "station: line1-a\nthrowaway_signing_key: 'yes'", 3,
     "expected true or false"),
    ("station: line1-a", "station: line1-a\nsigning_key: ''", 3, "not a usable path"),
    ("  endorsement:", "  bad.name:\n    sec_tag: 1\n    type: endorsement_key\n"
     "  endorsement:", L_E_SEC_TAG - 1, "key name 'bad.name' must match"),
    # sections that are not mappings
    ("  endorsement:\n    sec_tag: 33\n    type: endorsement_key\n", "  endorsement: 5\n",
     L_E_SEC_TAG - 1, "keys.endorsement: expected a mapping, got a number (5)"),
    ("    keys: [tls, endorsement]\n", "    keys: [tls, endorsement]\n  - 5\n", L_SLOT_KEYS + 1,
     "slots[1]: expected a mapping, got a number (5)"),
    ("version: 1", "version: 1\ndefaults: 5", 2, "defaults: expected a mapping"),
    # defaults and settings
    ("version: 1", "version: 1\ndefaults: {baudrate: 12345}", 2, "baudrate 12345 is not a rate"),
    ("version: 1", "version: 1\ndefaults: {timeout_s: 0}", 2, "greater than 0"),
    ("version: 1", "version: 1\ndefaults: {keygen_timeout_s: -1}", 2, "greater than 0"),
    ("version: 1", "version: 1\ndefaults: {timeout_s: .inf}", 2, "finite number"),
    ("version: 1", "version: 1\ndefaults: {retries: 11}", 2, "less than or equal to 10"),
    ("version: 1", "version: 1\ndefaults: {concurrency: 0}", 2, "greater than or equal to 1"),
    ("version: 1", "version: 1\ndefaults: {rtscts: 1}", 2, "expected true or false"),
    ("version: 1", "version: 1\ndefaults: {interface: telnet}", 2,
     "must be 'auto', 'at' or 'shell'"),
    ("version: 1", "version: 1\ndefaults: {terminator: crcr}", 2,
     "must be 'auto', 'cr', 'lf', 'crlf' or 'nul'"),
    ("version: 1", "version: 1\ndefaults: {xonxoff: 'on'}", 2, "expected true or false"),
    ("    keys: [tls, endorsement]", "    keys: [tls, endorsement]\n    settings:\n"
     "      concurrency: 2", L_SLOT_KEYS + 2, "concurrency is plan-wide"),
    # simulator
    ("slots:", "simulator:\n  faults: [boom:0.1]\nslots:", L_SLOTS + 1, "unknown fault 'boom'"),
    ("slots:", "simulator:\n  faults: ['slow:1.5']\nslots:", L_SLOTS + 1, "from 0 to 1"),
    ("slots:", "simulator:\n  faults: ['slow']\nslots:", L_SLOTS + 1, "NAME:PROB"),
    ("slots:", "simulator:\n  faults: ['slow:0.5@7']\nslots:", L_SLOTS + 1,
     "names modem 7, but the plan's sim:// ports only go up to sim://1"),
    ("slots:", "simulator:\n  model: nrf9999\nslots:", L_SLOTS + 1, "'nrf9160' or 'nrf9151'"),
    ("slots:", "simulator:\n  function_mode: 3\nslots:", L_SLOTS + 1, "not a documented"),
    ("slots:", "simulator:\n  capacity: 0\nslots:", L_SLOTS + 1, "greater than or equal to 1"),
    ("slots:", "simulator:\n  interface: telnet\nslots:", L_SLOTS + 1, "'at' or 'shell'"),
    ("slots:", "simulator:\n  shell_buffer: 1\nslots:", L_SLOTS + 1,
     "greater than or equal to 2"),
    ("slots:", "simulator:\n  prompt: ''\nslots:", L_SLOTS + 1, "at least 1 character"),
    # YAML itself
    ("    type: client_key", "    type: client_key\n   bad: indent", L_TYPE + 1,
     "YAML syntax error"),
    ('O: "Acme"', 'O: "Acme', L_O + 1, "YAML syntax error"),  # where PyYAML notices it
    ("port: sim://0-1", "port:", L_PORT, "expected a port string"),
    ("port: sim://0-1", "port: !!binary AAAA", L_PORT, "expected a port string"),
    ("version: 1", "version: 2024-02-30", 1, "cannot read value '2024-02-30'"),
    ("  - port: sim://0-1\n", "  - ? [a]\n    : 1\n    port: sim://0-1\n", L_PORT,
     "a mapping key must be a plain string"),
    ("version: 1", "version: !!python/object:os.system 1", 1, "cannot read value"),
    ("version: 1", "<<: {version: 1}", 1, "merge keys"),
    ('O: "Acme"', 'O: "Ac\x07me"', L_O, "special characters are not allowed ('\\x07')"),
]


@pytest.mark.parametrize(("old", "new", "line", "reason"), BAD,
                         ids=[f"{i}-{case[1][:30]}" for i, case in enumerate(BAD)])
def test_bad_input_is_refused_with_its_line(tmp_path: Path, old: str, new: str, line: int,
                                            reason: str) -> None:
    got_line, got_reason = one_error(tmp_path, replace(old, new))
    assert (got_line, reason in got_reason) == (line, True), (got_line, got_reason)


def test_public_key_response_refuses_attributes_and_key_usage(tmp_path: Path) -> None:
    found = errors(tmp_path, replace("response: csr", "response: public_key"))
    assert found == [
        (L_ATTRS, "keys.tls.attributes: attributes is only valid with response: csr, not with "
                  "response: public_key (the modem would silently ignore it)"),
        (L_KEY_USAGE, "keys.tls.key_usage: key_usage is only valid with response: csr, not "
                      "with response: public_key (the modem would silently ignore it)"),
    ]


def test_smuggled_at_command_is_refused_at_load(tmp_path: Path) -> None:
    smuggle = 'Acme"\r\nAT+CFUN=0\r\n"'
    yaml_text = '"' + smuggle.replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n") + '"'
    line, reason = one_error(tmp_path, replace('O: "Acme"', f"O: {yaml_text}"))
    assert line == L_O
    assert reason.startswith("keys.tls.attributes.O: attribute O value contains a double quote")
    assert repr(smuggle) in reason


def test_duplicate_sec_tag_and_type_in_one_slot(tmp_path: Path) -> None:
    text = replace("  endorsement:", "  tls2:\n    sec_tag: 16842753\n    type: client_key\n"
                   "    response: public_key\n  endorsement:")
    text = replace("keys: [tls, endorsement]", "keys: [tls, endorsement, tls2]", text)
    line, reason = one_error(tmp_path, text)
    assert line == L_SLOT_KEYS + 4
    assert reason == ("slots[0].keys[2]: keys 'tls' and 'tls2' are both a client_key at sec_tag "
                      "16842753: one slot can hold only one")
    # The same sec_tag with another type is fine (a client key and an endorsement key).
    ok = replace("sec_tag: 33", "sec_tag: 16842753")
    assert load_plan(write(tmp_path, ok)).slots[0].keys[1].sec_tag == 16842753


def test_several_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace("sec_tag: 16842753", "sec_tag: 0").replace(
        'key_usage: "101010000"', 'key_usage: "101010001"').replace(
        'O: "Acme"', 'O: "Ac,me"').replace("keys: [tls, endorsement]", "keys: [tls, nope]")
    text = text.replace("station: line1-a", "station: line1-a\nextra: 1")
    found = errors(tmp_path, text)
    assert [line for line, _ in found] == [3, L_SEC_TAG + 1, L_O + 1, L_KEY_USAGE + 1,
                                           L_SLOT_KEYS + 1]
    assert "decipherOnly" in found[3][1]
    assert "comma" in found[2][1]


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    line, reason = one_error(tmp_path, "version: 1\nstation: [a, b\nkeys: {}\n")
    assert line in (3, 4)  # PyYAML reports where it noticed the unclosed flow sequence
    assert reason.startswith("YAML syntax error")
    line, reason = one_error(tmp_path, "version: 1\nstation: x\n\tkeys: 1\n")
    assert (line, reason.startswith("YAML syntax error")) == (3, True)


def test_file_level_problems(tmp_path: Path) -> None:
    assert one_error(tmp_path, "") == (1, "the plan is empty")
    assert one_error(tmp_path, "# only a comment\n") == (1, "the plan is empty")
    line, reason = one_error(tmp_path, "- a\n- b\n")
    assert (line, "must be a mapping" in reason) == (1, True)
    line, reason = one_error(tmp_path, "a: 1\n---\nb: 2\n")
    assert reason.startswith("YAML syntax error") and "single document" in reason
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"version: 1\nstation: caf\xe9\n")
    with pytest.raises(PlanError, match=re.escape(f"{bad}:2: the plan is not UTF-8 text")):
        load_plan(bad)
    with pytest.raises(PlanError, match="cannot read the plan: No such file"):
        load_plan(tmp_path / "missing.yaml")
    with pytest.raises(PlanError, match="cannot read the plan"):
        load_plan(tmp_path)


def test_recursive_and_exploding_aliases_are_refused(tmp_path: Path) -> None:
    found = errors(tmp_path, replace("keys: [tls, endorsement]", "keys: &k [tls, *k]"))
    assert any("recursive YAML alias" in reason for _, reason in found)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(6))
    found = errors(tmp_path, bomb)
    assert any("more than 50000 YAML nodes" in reason for _, reason in found)



@pytest.mark.parametrize("depth", [65, 600, 100_000])
def test_nesting_too_deep_is_a_plan_error_at_its_line(tmp_path: Path, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    reason = "nested too deeply: more than 64 levels of mappings and sequences"
    assert one_error(tmp_path, f"version: 1\nstation: x\nkeys: {deep}\n") == (3, reason)
    mapping = "{a: " * depth + "1" + "}" * depth
    assert one_error(tmp_path, f"version: 1\nstation: x\nkeys: {mapping}\n") == (3, reason)


def test_nesting_in_block_style_names_the_first_line_too_deep(tmp_path: Path) -> None:
    lines = "".join("  " * level + "a:\n" for level in range(1, 70))
    # the top mapping is level 1, "keys:"'s value level 2: the 65th level starts on line 66
    line, reason = errors(tmp_path, f"version: 1\nkeys:\n{lines}")[0]
    assert (line, reason) == (66, "nested too deeply: more than 64 levels of mappings and "
                                   "sequences")
    fits = "version: 1\nstation: x\nkeys: " + "[" * 63 + "]" * 63 + "\n"
    assert not any("nested too deeply" in r for _, r in errors(tmp_path, fits))


def test_aliases_cannot_nest_a_plan_too_deeply(tmp_path: Path) -> None:
    chain = "a0: &a0 " + "[" * 40 + "]" * 40 + "\n" + "".join(
        f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 + "\n" for i in range(1, 30))
    found = errors(tmp_path, BASE + chain)
    deep = [(line, r) for line, r in found if "nested too deeply" in r]
    assert deep == [(BASE.count("\n") + 1, "nested too deeply: more than 64 levels of mappings "
                     "and sequences (through YAML aliases)")]


def test_yaml_anchors_and_aliases_work(tmp_path: Path) -> None:
    text = replace("keys: [tls, endorsement]", "keys: &both [tls, endorsement]")
    text += "  - port: sim://2\n    keys: *both\n"
    plan = load_plan(write(tmp_path, text))
    assert [s.keys for s in plan.slots][2] == plan.slots[0].keys


def test_bad_key_spec_does_not_hide_slot_errors(tmp_path: Path) -> None:
    text = replace("sec_tag: 16842753", "sec_tag: 0")
    text = replace("port: sim://0-1", "port: socket://x:0", text)
    assert [line for line, _ in errors(tmp_path, text)] == [L_SEC_TAG, L_PORT]


# -- ports and slot names ----------------------------------------------------------------------


def devices(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "dev"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


def slots_plan(slots: str) -> str:
    return BASE.split("slots:\n")[0] + "slots:\n" + slots


def test_glob_expands_sorted_relative_to_the_plan(tmp_path: Path) -> None:
    folder = devices(tmp_path, "ttyACM2", "ttyACM0", "ttyACM10", "ttyUSB0")
    path = write(tmp_path, slots_plan('  - port: "dev/ttyACM*"\n    keys: [tls]\n'))
    plan = load_plan(path)
    assert [(s.name, s.port) for s in plan.slots] == [
        ("slot0", str(folder / "ttyACM0")), ("slot1", str(folder / "ttyACM10")),
        ("slot2", str(folder / "ttyACM2"))]
    assert plan.simulator is None


def test_glob_that_matches_nothing_names_the_pattern(tmp_path: Path) -> None:
    text = slots_plan('  - port: sim://0\n    keys: [tls]\n  - port: "/dev/serial/by-id/*nope*"'
                      '\n    keys: [tls]\n')
    line, reason = one_error(tmp_path, text)
    assert line == L_SLOTS + 3
    assert reason == "slots[1].port: port pattern '/dev/serial/by-id/*nope*' matches no port"
    plan = load_plan(write(tmp_path, text), expand_globs=False)
    assert plan.slots[1].port == "/dev/serial/by-id/*nope*"


def test_lists_ranges_names_and_global_indices(tmp_path: Path) -> None:
    devices(tmp_path, "a0", "a1")
    text = slots_plan(
        "  - port: [sim://0, socket://hub.local:4001]\n    keys: [tls]\n    name: left\n"
        "  - port: sim://2-4\n    keys: [endorsement]\n"
        "  - port: 'dev/a*'\n    keys: [tls]\n    name: bench\n"
        "  - port: sim://7\n    keys: [tls]\n    name: single\n"
        "  - port: [sim://9]\n    keys: [tls]\n")
    plan = load_plan(write(tmp_path, text))
    assert [(s.name, s.port) for s in plan.slots] == [
        ("left-0", "sim://0"), ("left-1", "socket://hub.local:4001"),
        ("slot2", "sim://2"), ("slot3", "sim://3"), ("slot4", "sim://4"),
        ("bench-0", str(tmp_path / "dev" / "a0")), ("bench-1", str(tmp_path / "dev" / "a1")),
        ("single", "sim://7"), ("slot8", "sim://9")]
    assert [s.line for s in plan.slots][:3] == [L_SLOTS + 1, L_SLOTS + 1, L_SLOTS + 4]
    assert plan.simulator is not None and plan.simulator.count == 10
    assert plan.slots[2].sim_index == 2 and plan.slots[1].sim_index is None


def test_same_device_through_a_symlink_is_a_duplicate_port(tmp_path: Path) -> None:
    folder = devices(tmp_path, "ttyACM0")
    os.symlink(folder / "ttyACM0", folder / "usb-Nordic-if00")
    text = slots_plan("  - port: dev/ttyACM0\n    keys: [tls]\n"
                      "  - port: dev/usb-Nordic-if00\n    keys: [tls]\n")
    line, reason = one_error(tmp_path, text)
    assert line == L_SLOTS + 3
    assert f"already used by slot 'slot0' (line {L_SLOTS + 1}) (both are {folder}/ttyACM0)" \
        in reason


def test_device_paths_are_absolute_and_not_required_to_exist(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, slots_plan(
        "  - port: /dev/ttyACM7\n    keys: [tls]\n  - port: relative/tty\n    keys: [tls]\n")))
    assert [s.port for s in plan.slots] == ["/dev/ttyACM7", str(tmp_path / "relative" / "tty")]


def test_slot_settings_override_defaults(tmp_path: Path) -> None:
    text = BASE.replace("version: 1", "version: 1\ndefaults: {baudrate: 921600, retries: 1,\n"
                        "  concurrency: 4, timeout_s: 5}")
    text += ("  - port: sim://2\n    keys: [tls]\n    settings:\n      retries: 0\n"
             "      rtscts: false\n      keygen_timeout_s: 60\n")
    plan = load_plan(write(tmp_path, text))
    assert plan.defaults == Settings(baudrate=921600, retries=1, concurrency=4, timeout_s=5.0)
    assert plan.slots[0].settings == plan.defaults
    assert plan.slots[2].settings == Settings(baudrate=921600, retries=0, concurrency=4,
                                              timeout_s=5.0, rtscts=False,
                                              keygen_timeout_s=60.0)


def test_only_keeps_named_slots_and_refuses_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert [s.name for s in load_plan(path, only=["slot1"]).slots] == ["slot1"]
    assert [s.name for s in load_plan(path, only=["sim://0", "slot1"]).slots] == ["slot0",
                                                                                   "slot1"]
    line, reason = one_error(tmp_path, BASE, only=["slot9", "slot0"])
    assert line == L_SLOTS
    assert reason == ("slots: --only 'slot9' is neither the name nor the port of a slot "
                      "(slots: slot0, slot1)")
    plan = load_plan(path, only=["slot1"])
    assert plan.simulator is not None and plan.simulator.count == 2  # still the whole plan


# -- paths, simulator, manifest ---------------------------------------------------------------


def test_paths_are_relative_to_the_plan_directory(tmp_path: Path, monkeypatch:
                                                   pytest.MonkeyPatch) -> None:
    sub = tmp_path / "plans"
    sub.mkdir()
    text = BASE.replace("station: line1-a", "station: line1-a\nsigning_key: ../keys/s.pem\n"
                        "throwaway_signing_key: true")
    text += ("simulator:\n  seed: 7\n  model: nrf9151\n  profile: realistic\n"
             "  state: state/sim.json\n  log: /var/tmp/sim.log\n"
             "  faults: ['disconnect:0.1', 'keygen-fail:0.5@0,1']\n  function_mode: 1\n"
             "  capacity: 12\n")
    write(sub, text)
    monkeypatch.chdir(tmp_path)
    plan = load_plan("plans/plan.yaml")
    assert plan.path == sub / "plan.yaml"
    assert plan.signing_key == tmp_path / "keys" / "s.pem"
    assert plan.throwaway_signing_key is True
    assert plan.simulator == SimulatorSettings(
        seed=7, model="nrf9151", profile="realistic", state=sub / "state" / "sim.json",
        log=Path("/var/tmp/sim.log"), faults=("disconnect:0.1", "keygen-fail:0.5@0,1"),
        function_mode=1, capacity=12, count=2)


def test_simulator_section_without_sim_ports_is_an_error(tmp_path: Path) -> None:
    text = slots_plan("  - port: socket://hub:4001\n    keys: [tls]\nsimulator:\n  seed: 1\n")
    assert one_error(tmp_path, text) == (
        L_SLOTS + 3, "simulator: no slot uses a sim:// port, so this section would do nothing: "
                     "remove it")


def test_manifest_path(tmp_path: Path) -> None:
    text = BASE.replace("station: line1-a",
                        "station: line1-a\nmanifest: out/{station}/{date}-{time}-{run_id}.json")
    plan = load_plan(write(tmp_path, text))
    now = datetime(2024, 3, 9, 23, 30, 5, tzinfo=timezone(timedelta(hours=-2)))
    assert plan.manifest_path(now=now, run_id="r-42") == (
        tmp_path / "out" / "line1-a" / "20240310-013005Z-r-42.json")
    default = load_plan(write(tmp_path, BASE))
    assert default.manifest_path(now=datetime(2024, 1, 2, tzinfo=UTC), run_id="x") == (
        tmp_path / "out" / "line1-a-20240102.json")
    with pytest.raises(ValueError, match="timezone-aware"):
        default.manifest_path(now=datetime(2024, 1, 2), run_id="x")
    with pytest.raises(ValueError, match="not safe in a file name"):
        default.manifest_path(now=datetime(2024, 1, 2, tzinfo=UTC), run_id="../x")
    absolute = load_plan(write(tmp_path, BASE.replace(
        "station: line1-a", "station: line1-a\nmanifest: /srv/m/{run_id}.json")))
    assert absolute.manifest_path(now=datetime.now(UTC), run_id="a") == Path("/srv/m/a.json")


# -- templates, %KEYGEN arguments ---------------------------------------------------------------

CTX = {"imei": "352656100367872", "slot": "slot3", "station": "line1-a",
       "device_uuid": "50503041-3633-4377-800c-0b1a349680df"}


def test_render_attributes_and_keygen_args(tmp_path: Path) -> None:
    text = replace('CN: "{imei}"', 'CN: "{station}-{slot}-{imei}"')
    text = replace('O: "Acme"', 'O: "Acme {{lab}} {device_uuid}"', text)
    text = replace("  endorsement:", "  pub:\n    sec_tag: 7\n    type: client_key\n"
                   "    response: public_key\n    if_exists: replace\n  bare:\n    sec_tag: 8\n"
                   "    type: client_key\n    response: csr\n    if_exists: fail\n"
                   "  endorsement:", text)
    plan = load_plan(write(tmp_path, text))
    tls, pub, bare, endorsement = (plan.keys[k] for k in ("tls", "pub", "bare", "endorsement"))
    expected = ("CN=line1-a-slot3-352656100367872,"
                "O=Acme {lab} 50503041-3633-4377-800c-0b1a349680df,C=NO")
    assert tls.render_attributes(CTX) == expected
    assert tls.keygen_args(CTX) == (16842753, 2, 0, expected, "101010000")
    assert str(tls.keygen_command(CTX)) == f'AT%KEYGEN=16842753,2,0,"{expected}","101010000"'
    assert tls.uses_device_uuid and not pub.uses_device_uuid
    assert tls.keygen_template() == ('AT%KEYGEN=16842753,2,0,"CN={station}-{slot}-{imei},'
                                     'O=Acme {lab} {device_uuid},C=NO","101010000"')
    assert pub.keygen_args(CTX) == (7, 2, 1, None, None)
    assert pub.if_exists is IfExists.REPLACE and bare.if_exists is IfExists.FAIL
    assert str(pub.keygen_command(CTX)) == "AT%KEYGEN=7,2,1"
    assert bare.keygen_args(CTX) == (8, 2, 0, None, None)
    assert bare.render_attributes(CTX) is None
    assert endorsement.keygen_args(CTX) == (33, 8, None, None, None)
    assert str(endorsement.keygen_command(CTX)) == "AT%KEYGEN=33,8"
    assert endorsement.keygen_template() == "AT%KEYGEN=33,8"
    # The same bytes the modem side of the codec parses back, as one command.
    parsed = parse_command(tls.keygen_command(CTX).encode().decode())
    assert parsed.args == (16842753, 2, 0, expected, "101010000")


def test_key_usage_without_attributes_leaves_an_empty_argument() -> None:
    spec = KeySpec(name="k", sec_tag=11, type=KeyType.CLIENT_KEY, response=Response.CSR,
                   key_usage="101010000")
    assert spec.keygen_args({}) == (11, 2, 0, None, "101010000")
    assert str(spec.keygen_command({})) == 'AT%KEYGEN=11,2,0,,"101010000"'  # at-keygen.txt
    assert spec.keygen_template() == 'AT%KEYGEN=11,2,0,,"101010000"'


def test_render_refuses_missing_and_unsafe_values() -> None:
    spec = KeySpec(name="k", sec_tag=1, type=KeyType.CLIENT_KEY, response=Response.CSR,
                   attributes=(("CN", "{device_uuid}"),))
    with pytest.raises(ValueError, match=r"no value for \{device_uuid\}"):
        spec.render_attributes({"imei": "1"})
    with pytest.raises(ValueError, match="double quote"):
        spec.render_attributes({"device_uuid": 'x"\r\nAT+CFUN=0'})
    with pytest.raises(ValueError, match="comma"):
        spec.keygen_args({"device_uuid": "a,O=Evil"})
    with pytest.raises(ValueError, match="control character"):
        spec.keygen_command({"device_uuid": "a\x00"})


def test_records_validate_on_construction() -> None:
    good = {"name": "k", "sec_tag": 1, "type": KeyType.CLIENT_KEY, "response": Response.CSR}
    KeySpec(**good)  # type: ignore[arg-type]
    for change, message in [
        ({"sec_tag": 0}, "sec_tag"), ({"sec_tag": True}, "sec_tag"),
        ({"name": "a b"}, "key name"), ({"key_usage": "111111111"}, "decipherOnly"),
        ({"attributes": (("XX", "a"),)}, "not one the modem supports"),
        ({"attributes": (("CN", "{nope}"),)}, "unknown placeholder"),
        ({"response": Response.PUBLIC_KEY, "key_usage": "101010000"}, "only valid"),
        ({"type": KeyType.ENDORSEMENT_KEY}, "public key"),
        ({"type": KeyType.ENDORSEMENT_KEY, "response": Response.PUBLIC_KEY,
          "if_exists": IfExists.FAIL}, "if_exists"),
    ]:
        with pytest.raises(ValueError, match=message):
            KeySpec(**{**good, **change})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baudrate"):
        Settings(baudrate=1234)
    with pytest.raises(ValueError, match="retries"):
        Settings(retries=11)
    with pytest.raises(ValueError, match="timeout_s"):
        Settings(timeout_s=0)
    with pytest.raises(ValueError, match="response is required for a client_key"):
        KeySpec(name="k", sec_tag=1, type=KeyType.CLIENT_KEY)
    endorsement = KeySpec(name="e", sec_tag=2, type=KeyType.ENDORSEMENT_KEY)
    assert (endorsement.response, endorsement.if_exists) == (Response.PUBLIC_KEY, IfExists.KEEP)
    with pytest.raises(ValueError, match="valid dictionary"):  # pairs, or the plan's mapping
        KeySpec(**{**good, "attributes": (("CN",),)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unexpected keyword argument"):
        Settings(retry=1)  # type: ignore[call-arg]
    spec = KeySpec(**good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        Slot(name="s", port="", keys=(spec,))
    with pytest.raises(ValueError, match="both a client_key at sec_tag 1"):
        Slot(name="s", port="sim://0", keys=(spec, spec))
    with pytest.raises(ValueError, match="slot name"):
        Slot(name="a b", port="sim://0", keys=(spec,))
    with pytest.raises(ValueError, match="fault"):
        SimulatorSettings(faults=("nope:1",))
    with pytest.raises(ValueError, match="version"):
        Plan(path=Path("/p"), sha256="", version=2, station="s", signing_key=None,
             throwaway_signing_key=False, manifest="m", defaults=Settings(), keys={},
             slots=(), simulator=None)
    assert KeyType.CLIENT_KEY.code == 2 and KeyType.ENDORSEMENT_KEY.code == 8
    assert Response.CSR.code == 0 and Response.PUBLIC_KEY.code == 1


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=12)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_TEXT)
@example(value="{{")
@example(value="x{imei}}}")
@example(value='Acme"\r\nAT+CFUN=0\r\n"')
def test_whatever_loads_encodes_as_exactly_one_command(tmp_path: Path, value: str) -> None:
    """An attribute value either is refused at load, or its %KEYGEN is one command that the
    modem side parses back to the same attributes."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\U{ord(c):08x}" for c in escaped)
    path = write(tmp_path, replace('O: "Acme"', f'O: "{escaped}"'))
    try:
        plan = load_plan(path)
    except PlanError:
        return
    line = plan.keys["tls"].keygen_command(CTX).encode()
    assert not set(line) & {0, 10, 13}
    attributes = parse_command(line.decode()).args[3]
    assert attributes == plan.keys["tls"].render_attributes(CTX)
    rendered = Template.parse(value, ATTRIBUTE_PLACEHOLDERS).render(CTX)  # {{ is a literal {
    assert isinstance(attributes, str) and f",O={rendered}," in attributes


# -- the example plan ---------------------------------------------------------------------------


def test_example_plan_is_valid_apart_from_absent_devices() -> None:
    example = REPO / "plans" / "example.yaml"
    plan = load_plan(example, expand_globs=False)
    assert plan.station and plan.signing_key is not None
    assert {s.type for s in plan.keys.values()} == {KeyType.CLIENT_KEY, KeyType.ENDORSEMENT_KEY}
    assert any(s.port.startswith("socket://") for s in plan.slots)
    assert any(k.sec_tag == 16842753 and k.response is Response.CSR
               and "imei" in k.keygen_template() for k in plan.keys.values())
    try:
        load_plan(example)
    except PlanError as exc:  # no devices on this machine: only the globs may fail
        assert all("matches no port" in e for e in exc.errors), exc.errors
