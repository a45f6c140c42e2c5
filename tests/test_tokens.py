"""Keys that never leave a PKCS#11 token, against a real one (SoftHSM2, a token store of each
test's own): the station key signs the manifest in the token and `fleet verify --pubkey` accepts
it; a CA key in the token issues every certificate; both are made non-extractable; a wrong PIN,
a missing module, token or object and a key of the wrong type are refused before any device is
touched; a token removed during a run leaves the manifest unsigned (exit 1) and the next run
signs it; and the PIN never appears in any output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from fleet.errors import TokenError
from fleet.hsm.uri import PinSource, parse_pkcs11_uri
from fleet.plan import load_plan
from fleet.run import RunOptions, run_plan
from fleet.run_manifest import prepare_manifest
from fleet.station_key import keyid, load_public_key
from tests.runhelpers import fleet, logged_commands, run_json, write_plan
from tests.softhsm import MODULE, PIN, SoftHsm, softhsm

__all__ = ["softhsm"]  # the fixture, used by name

SIM = "simulator: {log: sim.log, state: sim.json}\n"
WRITES = ("AT%KEYGEN", "AT+CFUN=", "AT%CMNG=0", "AT%CMNG=3")


def _commands(tmp_path: Path) -> list[str]:
    return logged_commands(tmp_path / "sim.log")


def _writes(tmp_path: Path) -> list[str]:
    return [c for c in _commands(tmp_path) if c.upper().startswith(WRITES)]


@contextmanager
def _session(hsm: SoftHsm, token: str | None = None) -> Iterator[Any]:
    """A session with the token, through the binding itself (the test's view of the token)."""
    lib = pkcs11.lib(MODULE)
    try:
        with lib.get_token(token_label=token or hsm.token).open(rw=True, user_pin=PIN) as s:
            yield s
    finally:
        pkcs11.unload(MODULE)


def _assert_never_extractable(hsm: SoftHsm, label: str) -> None:
    with _session(hsm) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.ALWAYS_SENSITIVE] is True
        assert key[Attribute.TOKEN] is True and key[Attribute.PRIVATE] is True


def _station_key(hsm: SoftHsm, tmp_path: Path, label: str = "station") -> Path:
    result = fleet("station-key", "init", "--pkcs11", hsm.uri(label), "--out", tmp_path / "keys",
                   timeout=60)
    assert result.returncode == 0, result.stderr
    return tmp_path / "keys" / "station.pub.pem"


def _token_ca(hsm: SoftHsm, tmp_path: Path) -> None:
    """`fleet ca init DIR --pkcs11` of a CA whose key is the token's ``ca``, in ``tmp_path/ca``."""
    result = fleet("ca", "init", tmp_path / "ca", "--pkcs11", hsm.uri("ca"), timeout=60)
    assert result.returncode == 0, result.stderr


def _plan(tmp_path: Path, signing_key: str, *, ports: str = "sim://0-1", keys: str | None = None,
          slot_keys: str = "[tls, endorsement]") -> Path:
    kwargs = {"keys": keys} if keys is not None else {}
    return write_plan(tmp_path, ports=ports, extra=SIM, signing=f"signing_key: '{signing_key}'",
                      slot_keys=slot_keys, **kwargs)


def _ca_keys(tmp_path: Path, ca_key: str) -> str:
    return f"""
keys:
  tls:
    sec_tag: 16842753
    type: client_key
    response: csr
    attributes: {{CN: "{{imei}}", O: "Acme", C: "NO"}}
    key_usage: "101010000"
    ca:
      cert: {tmp_path / 'ca' / 'ca.pem'}
      key: '{ca_key}'
      chain: {tmp_path / 'ca' / 'ca.pem'}
"""


def _verify(manifest: str, pubkey: Path) -> subprocess.CompletedProcess[str]:
    return fleet("verify", manifest, "--pubkey", pubkey, timeout=60)


# --- URIs --------------------------------------------------------------------------------------

def test_a_uri_names_token_object_module_and_pin_source() -> None:
    uri = parse_pkcs11_uri("pkcs11:token=my%20token;object=station;id=%01%ff;serial=42"
                           "?module-path=/opt/hsm/lib.so&pin-source=file:/run/pin")
    assert (uri.token, uri.object, uri.id, uri.serial) == ("my token", "station", b"\x01\xff",
                                                           "42")
    assert uri.module_path == "/opt/hsm/lib.so"
    assert uri.pin_source == PinSource(kind="file", name="/run/pin")
    assert parse_pkcs11_uri("PKCS11:object=a?pin-source=env:X").pin_source == PinSource(
        kind="env", name="X")


@pytest.mark.parametrize(("text", "reason"), [
    ("pkcs11:token=t;object=k?pin-value=1234", "a PIN must not be written in the plan"),
    ("pkcs11:token=t;object=k;slot-id=1", "path attribute 'slot-id' is not supported"),
    ("pkcs11:token=t;object=k;object=j", "'object' is given twice"),
    ("pkcs11:token=t;object=k%2", "'%' must start a two-digit hex escape"),
    ("pkcs11:token=t;object=k?module-path=lib.so", "must be an absolute path"),
    ("pkcs11:token=t;object=k;type=cert", "fleet signs with a private key"),
    ("pkcs11:token=t", "the URI names no key"),
    ("pkcs11:token=t;object=k?pin-source=pin.txt", "use env:NAME, file:/absolute/path"),
    ("pkcs11:token=t;object=k?pin-source=env:1X", "is not an environment variable name"),
    ("pkcs11:token=t;object=a b", "no spaces or control characters"),
])
def test_a_uri_fleet_cannot_use_is_refused_saying_why(text: str, reason: str) -> None:
    with pytest.raises(TokenError) as caught:
        parse_pkcs11_uri(text)
    assert reason in str(caught.value)


def test_a_bad_uri_in_the_plan_is_a_plan_error_at_its_line(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "pkcs11:token=fleet;object=station?pin-value=1234")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=60)
    assert code == 2, err
    assert "plan.yaml:3: signing_key: pin-value: a PIN must not be written in the plan" in err
    assert "1234" not in json.dumps(doc).replace("plan.yaml:3", "")
    assert _commands(tmp_path) == []


def test_a_run_with_file_keys_does_not_load_the_binding(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", extra=SIM)
    code = (f"import sys, anyio\n"
            f"from fleet.plan import load_plan\n"
            f"from fleet.run import RunOptions, run_plan\n"
            f"from fleet.run_manifest import prepare_manifest\n"
            f"plan = load_plan({str(plan)!r})\n"
            f"writer = prepare_manifest(plan)\n"
            f"out = anyio.run(lambda: run_plan(plan, RunOptions(journal={str(tmp_path)!r} + "
            f"'/j.sqlite', handle_signals=False), manifest_writer=writer))\n"
            f"assert out.exit_code == 0, out.manifest_error\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('pkcs11', "
            f"'asn1crypto') or m.startswith('fleet.hsm.t') or m.startswith('fleet.hsm.s')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- creating keys -----------------------------------------------------------------------------

def test_station_key_init_makes_a_non_extractable_key_and_writes_only_the_public_key(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    result = fleet("station-key", "init", "--pkcs11", softhsm.uri("station"), "--out",
                   tmp_path / "keys", timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["station.pub.pem"]
    public = load_public_key(tmp_path / "keys" / "station.pub.pem")
    assert f"keyid        {keyid(public)}" in result.stdout
    assert "PKCS#11 token 'fleet'" in result.stdout and PIN not in result.stdout
    _assert_never_extractable(softhsm, "station")
    again = fleet("station-key", "init", "--pkcs11", softhsm.uri("station"), "--out",
                  tmp_path / "other", timeout=60)
    assert again.returncode == 2
    assert "already holds an object 'station': refusing to make a second one" in again.stderr
    assert not (tmp_path / "other").exists()


def test_ca_init_makes_the_ca_key_in_the_token_and_writes_only_the_certificate(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    result = fleet("ca", "init", tmp_path / "ca", "--pkcs11", softhsm.uri("ca"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.pem"]
    assert f"key: \"{softhsm.uri('ca')}\"" in result.stdout
    _assert_never_extractable(softhsm, "ca")


# --- runs --------------------------------------------------------------------------------------

def test_a_run_signs_its_manifest_in_the_token_and_verify_accepts_it(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    pubkey = _station_key(softhsm, tmp_path)
    plan = _plan(tmp_path, softhsm.uri("station"))
    code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=120)
    assert code == 0, err
    assert [d["outcome"] for d in doc["devices"]] == ["done", "done"]
    manifest = json.loads(Path(doc["manifest"]).read_text())
    assert [s["keyid"] for s in manifest["signatures"]] == [keyid(load_public_key(pubkey))]
    verified = _verify(doc["manifest"], pubkey)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "signed by trusted key" in verified.stdout
    assert PIN not in err and PIN not in json.dumps(doc) and PIN not in json.dumps(manifest)


def test_a_run_with_the_ca_key_in_the_token_issues_every_certificate(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    pubkey = _station_key(softhsm, tmp_path)
    _token_ca(softhsm, tmp_path)
    plan = _plan(tmp_path, softhsm.uri("station"), ports="sim://0-2",
                 keys=_ca_keys(tmp_path, softhsm.uri("ca")), slot_keys="[tls]")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=120)
    assert code == 0, err
    keys = [k for d in doc["devices"] for k in d["keys"]]
    assert len(keys) == 3 and all(k["certificate"]["outcome"] == "issued" for k in keys), keys
    writes = [c for c in _commands(tmp_path) if c.upper().startswith("AT%CMNG=0")]
    assert len(writes) == 6  # a certificate and the chain for each of the three
    verified = _verify(doc["manifest"], pubkey)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "3 certificate(s) re-checked" in verified.stdout
    _assert_never_extractable(softhsm, "ca")
    _assert_never_extractable(softhsm, "station")


def test_plan_check_shows_which_key_signs_and_where_it_lives_without_the_pin(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    pubkey = _station_key(softhsm, tmp_path)
    plan = _plan(tmp_path, softhsm.uri("station"))
    result = fleet("plan", "check", plan, timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("signing:"))
    assert line == (f"signing:   {softhsm.uri('station')}  (loads: ES256 key "
                    f"{keyid(load_public_key(pubkey))[:16]}..., key 'station' in PKCS#11 token "
                    f"'fleet' (module {MODULE}, the default module; PIN from env:FLEET_PIN))")
    assert PIN not in result.stdout + result.stderr
    document = json.loads(fleet("plan", "check", plan, "--json", timeout=60).stdout)
    assert document["signing_key"] == softhsm.uri("station")
    assert "PKCS#11 token 'fleet'" in document["signing_key_state"]


def test_the_pin_may_come_from_a_file(softhsm: SoftHsm, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pubkey = _station_key(softhsm, tmp_path)
    pin = tmp_path / "pin"
    pin.write_text(PIN + "\n")
    monkeypatch.delenv("FLEET_PIN")
    uri = f"pkcs11:token=fleet;object=station?pin-source=file:{pin}"
    code, doc, err = run_json(_plan(tmp_path, uri), tmp_path / "j.sqlite", timeout=120)
    assert code == 0, err
    assert _verify(doc["manifest"], pubkey).returncode == 0


# --- refusals before any device ----------------------------------------------------------------

@pytest.mark.parametrize("where", ["station", "ca"])
def test_a_wrong_pin_is_refused_once_before_any_device(
        softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    _station_key(softhsm, tmp_path)
    _token_ca(softhsm, tmp_path)
    if where == "station":
        plan = _plan(tmp_path, softhsm.uri("station"))
    else:
        plan = _plan(tmp_path, str(tmp_path / "keys" / "file.pem"), ports="sim://0",
                     keys=_ca_keys(tmp_path, softhsm.uri("ca")), slot_keys="[tls]")
        fleet("station-key", "init", "--out", tmp_path / "keys", "--name", "file", timeout=60)
    monkeypatch.setenv("FLEET_PIN", "0000-wrong")
    code, doc, err = run_json(plan, tmp_path / "j.sqlite", timeout=60)
    assert code == 2, err
    reason = ("wrong PIN for PKCS#11 token 'fleet' (from env:FLEET_PIN); not retried, because "
              "a token locks its PIN after a few wrong ones")
    assert reason in err and reason in json.dumps(doc)
    assert "0000-wrong" not in err + json.dumps(doc)
    assert _writes(tmp_path) == [] and _commands(tmp_path) == []
    # One wrong login, not a loop of them: the token still takes the right PIN.
    monkeypatch.setenv("FLEET_PIN", PIN)
    with _session(softhsm) as session:
        assert session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=where)


@pytest.mark.parametrize("where", ["station", "ca"])
def test_a_missing_object_is_refused_before_any_device(
        softhsm: SoftHsm, tmp_path: Path, where: str) -> None:
    _station_key(softhsm, tmp_path)
    _token_ca(softhsm, tmp_path)
    if where == "station":
        plan = _plan(tmp_path, softhsm.uri("nope"))
    else:
        plan = _plan(tmp_path, softhsm.uri("station"), ports="sim://0",
                     keys=_ca_keys(tmp_path, softhsm.uri("nope")), slot_keys="[tls]")
    code, _, err = run_json(plan, tmp_path / "j.sqlite", timeout=60)
    assert code == 2, err
    assert "PKCS#11 token 'fleet' holds no private key 'nope'" in err
    assert _commands(tmp_path) == []


@pytest.mark.parametrize(("uri", "reason"), [
    ("pkcs11:token=fleet;object=station?pin-source=env:FLEET_PIN&module-path=/nonexistent.so",
     "PKCS#11 module /nonexistent.so (module-path in the URI) does not exist"),
    ("pkcs11:token=elsewhere;object=station?pin-source=env:FLEET_PIN",
     "no PKCS#11 token 'elsewhere' matches the URI (tokens present: 'fleet')"),
    ("pkcs11:token=fleet;object=station?pin-source=env:NO_SUCH_PIN_VARIABLE",
     "environment variable NO_SUCH_PIN_VARIABLE is not set"),
    ("pkcs11:token=fleet;object=p384?pin-source=env:FLEET_PIN",
     "is a secp384r1 key; it must be ECDSA P-256"),
    ("pkcs11:token=fleet;object=pubonly?pin-source=env:FLEET_PIN",
     "holds no private key 'pubonly' (only a public key by that name)"),
])
def test_a_station_key_that_cannot_be_used_is_refused_before_any_device(
        softhsm: SoftHsm, tmp_path: Path, uri: str, reason: str) -> None:
    _station_key(softhsm, tmp_path)
    with _session(softhsm) as session:
        p384 = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1")},
            local=True)
        p384.generate_keypair(store=True, label="p384")
        _, private = p384.generate_keypair(store=True, label="pubonly")
        private.destroy()
    code, _, err = run_json(_plan(tmp_path, uri), tmp_path / "j.sqlite", timeout=60)
    assert code == 2, err
    assert reason in err, err
    assert "Traceback" not in err
    assert _commands(tmp_path) == []


def test_the_module_may_come_from_the_environment(softhsm: SoftHsm, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _station_key(softhsm, tmp_path)
    monkeypatch.setenv("FLEET_PKCS11_MODULE", "/nonexistent/libtoken.so")
    code, _, err = run_json(_plan(tmp_path, softhsm.uri("station")), tmp_path / "j.sqlite",
                            timeout=60)
    assert code == 2
    assert "PKCS#11 module /nonexistent/libtoken.so ($FLEET_PKCS11_MODULE) does not exist" in err


# --- a token that goes away --------------------------------------------------------------------

def _run_unplugging_once_a_device_is_done(softhsm: SoftHsm, plan: Any, tmp_path: Path,
                                          concurrency: int | None = None
                                          ) -> tuple[Any, list[Path]]:
    """Run ``plan`` in this process (the manifest writer prepared first, as `fleet run`
    does), unplugging the token as soon as the first device has finished; the outcome and
    where the token's files went."""
    writer = prepare_manifest(plan)
    unplugged: list[Path] = []

    def on_progress(status: Any) -> None:
        if status.outcome and not unplugged:
            unplugged.append(softhsm.remove())

    options = RunOptions(journal=tmp_path / "j.sqlite", concurrency=concurrency,
                         handle_signals=False)
    outcome = anyio.run(lambda: run_plan(plan, options, on_progress=on_progress,
                                         manifest_writer=writer), backend="asyncio")
    return outcome, unplugged


def test_a_token_removed_during_the_run_leaves_the_manifest_to_the_next_run(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    """The key is opened before the devices; the token is unplugged as soon as the first
    device has finished; the devices' work is journaled, the manifest cannot be signed (exit
    1, the reason given) and, with the token back, the next run signs it and sends no write."""
    pubkey = _station_key(softhsm, tmp_path)
    plan = load_plan(_plan(tmp_path, softhsm.uri("station")))
    outcome, unplugged = _run_unplugging_once_a_device_is_done(softhsm, plan, tmp_path)
    assert unplugged
    assert outcome.exit_code == 1
    assert outcome.manifest is None
    assert outcome.manifest_error is not None
    assert ("the station key cannot sign: PKCS#11 token 'fleet' did not sign with 'station'"
            in outcome.manifest_error)
    assert "the token was removed, or stopped answering" in outcome.manifest_error
    assert [d.outcome.value for d in outcome.record.devices] == ["done", "done"]
    assert not list((tmp_path / "out").glob("*.json"))
    softhsm.plug_back(unplugged[0])
    writes = len(_writes(tmp_path))
    code, doc, err = run_json(plan.path, tmp_path / "j.sqlite", timeout=120)
    assert code == 0, err
    assert doc["manifest"] and _verify(doc["manifest"], pubkey).returncode == 0
    assert len(_writes(tmp_path)) == writes  # the devices were done: nothing written again
    assert {k["outcome"] for d in doc["devices"] for k in d["keys"]} == {"generated"}


def test_a_ca_token_removed_during_the_run_fails_the_devices_left_and_the_next_run_issues(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    """One slot at a time; the CA's token is unplugged once the first device is done: the
    second device's certificate cannot be signed, so that device fails, saying why (and the
    manifest, signed by a file key, records it); with the token back the next run issues it."""
    init = fleet("station-key", "init", "--out", tmp_path / "keys", timeout=60)
    assert init.returncode == 0, init.stderr
    _token_ca(softhsm, tmp_path)
    plan = load_plan(_plan(tmp_path, str(tmp_path / "keys" / "station.pem"),
                           keys=_ca_keys(tmp_path, softhsm.uri("ca")), slot_keys="[tls]"))
    outcome, unplugged = _run_unplugging_once_a_device_is_done(softhsm, plan, tmp_path,
                                                               concurrency=1)
    assert outcome.exit_code == 1
    first, second = outcome.record.devices
    assert first.outcome.value == "done"
    assert second.outcome.value == "failed"
    assert second.error is not None and "the CA key cannot sign: PKCS#11 token 'fleet' did " \
        "not sign with 'ca'" in second.error
    assert outcome.manifest is not None  # the file key signed what happened
    softhsm.plug_back(unplugged[0])
    code, doc, err = run_json(plan.path, tmp_path / "j.sqlite", timeout=120)
    assert code == 0, err
    assert [d["outcome"] for d in doc["devices"]] == ["done", "done"]
    assert doc["devices"][1]["keys"][0]["certificate"]["outcome"] == "issued"
    assert _verify(doc["manifest"], tmp_path / "keys" / "station.pub.pem").returncode == 0


def test_a_ca_key_in_the_token_that_is_not_the_certificates_is_a_plan_error(
        softhsm: SoftHsm, tmp_path: Path) -> None:
    _station_key(softhsm, tmp_path)
    _token_ca(softhsm, tmp_path)
    plan = _plan(tmp_path, softhsm.uri("station"), ports="sim://0",
                 keys=_ca_keys(tmp_path, softhsm.uri("station")), slot_keys="[tls]")
    code, _, err = run_json(plan, tmp_path / "j.sqlite", timeout=60)
    assert code == 2, err
    assert ("keys.tls.ca.key: CA key pkcs11:token=fleet;object=station?pin-source=env:FLEET_PIN: "
            "the key 'station' in PKCS#11 token 'fleet' is not the certificate's key (a "
            "signature by it does not verify)") in err
    assert _commands(tmp_path) == []
