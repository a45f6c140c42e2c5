"""The sans-IO modem model, called directly: no pty, no event loop, no clock."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.at import CmeErrorLine, Error, Ok
from fleet.credentials import Expectation, check_keygen, default_subject, parse_keygen
from fleet.nrf91 import PROFILES, luhn_digit, luhn_valid
from fleet.sim import MODELS, Modem, Work, parse_fault_spec
from fleet.sim.faults import STORM_URCS, FaultDice, FaultName, garble, urc_storm
from fleet.sim.identity import derive_identity_key, derive_imei
from fleet.sim.state import StateRenderer, modem_to_dict, parse_state


class FixedEntropy:
    """Deterministic nonces and keys, so answers can be compared byte for byte."""

    def __init__(self) -> None:
        self.counter = 0

    def nonce(self) -> bytes:
        self.counter += 1
        return self.counter.to_bytes(16, "big")

    def new_key(self) -> ec.EllipticCurvePrivateKey:
        self.counter += 1
        return ec.derive_private_key(1000 + self.counter, ec.SECP256R1())


def make(index: int = 0, *, model: str = "nrf9160", mode: int = 0, capacity: int = 32) -> Modem:
    return Modem.create(seed=1, index=index, model=MODELS[model], function_mode=mode,
                        capacity=capacity)


def test_model_modules_do_no_io() -> None:
    code = ("import sys, fleet.sim.model, fleet.sim.state, fleet.sim.faults, fleet.sim.config; "
            "print(sorted(m for m in ('anyio', 'serial', 'asyncio', 'fleet.sim.inprocess') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_identity_is_deterministic_and_luhn_valid() -> None:
    assert luhn_digit("35265610036787") == "2" and luhn_valid("352656100367872")
    assert not luhn_valid("352656100367873")
    imeis = {derive_imei(5, i) for i in range(1000)}
    assert len(imeis) == 1000 and all(luhn_valid(i) and len(i) == 15 for i in imeis)
    a, b = make(3), make(3)
    assert (a.imei, a.device_uuid, a.identity_public_key_pem) == (
        b.imei, b.device_uuid, b.identity_public_key_pem)
    assert a.device_uuid.version == 4
    assert derive_identity_key(1, 3).private_numbers() == a.identity_key.private_numbers()
    assert derive_imei(1, 3) != derive_imei(2, 3)
    assert make(4).firmware_uuid == a.firmware_uuid  # per firmware build, not per device


def test_simple_commands() -> None:
    modem = make()
    assert modem.handle("AT").final == Ok()
    assert modem.handle("AT+CGSN=1").lines == (f'+CGSN: "{modem.imei}"',)
    assert modem.handle("AT+CGSN").lines == (modem.imei,)
    assert modem.handle("at+cgmm").lines == ("nRF9160-SICA",)  # names are case-insensitive
    assert make(model="nrf9151").handle("AT+CGMR").lines == ("mfw_nrf91x1_2.0.2",)
    assert modem.handle("AT%XMODEMUUID").lines == (f"%XMODEMUUID: {modem.firmware_uuid}",)
    for bad in ("AT%NOPE", "AT+CGMM?", "xyz", "AT+CGSN=4", "AT+CMEE=1,1", ""):
        assert modem.handle(bad) == modem.handle("AT%NOPE") and modem.handle(bad).final == Error()


def test_cfun_reply_work_and_changed_flags() -> None:
    modem = make()
    reply = modem.handle("AT+CFUN=4")
    assert (reply.final, reply.work, reply.changed, modem.revision) == (
        Ok(), Work.CFUN_CHANGE, True, 1)
    same = modem.handle("AT+CFUN=4")
    assert (same.work, same.changed, modem.revision) == (Work.QUICK, False, 1)
    assert modem.handle("AT+CFUN?").lines == ("+CFUN: 4",)
    modem.reboot()
    assert modem.function_mode == 0 and modem.cmee == 0


def test_keygen_answer_is_reproducible_with_fixed_entropy() -> None:
    first, second = make(), make()
    a = parse_keygen(first.handle("AT%KEYGEN=11,2,0", entropy=FixedEntropy()).lines[0])
    b = parse_keygen(second.handle("AT%KEYGEN=11,2,0", entropy=FixedEntropy()).lines[0])
    # same key and nonce (the ECDSA signatures themselves are randomised)
    assert a.public_key_pem == b.public_key_pem and a.payload.nonce == b.payload.nonce
    assert a.payload.nonce == (2).to_bytes(16, "big")
    reply = make().handle("AT%KEYGEN=11,2,1", entropy=FixedEntropy())
    assert (reply.work, reply.changed, reply.key_made) == (Work.KEYGEN, True, True)
    assert parse_keygen(reply.lines[0]).public_key_pem == a.public_key_pem


def test_keygen_expectations_met() -> None:
    modem = make()
    answer = parse_keygen(modem.handle("AT%KEYGEN=16842753,2,0").lines[0])
    expect = Expectation(sec_tag=16842753, payload_id=9, key_usage="111010000",
                         subject=default_subject(modem.device_uuid),
                         device_uuid=modem.device_uuid)
    assert all(c.ok for c in check_keygen(answer, expect, modem.identity_key.public_key()))
    stored = modem.store.get(16842753, 2)
    assert stored is not None and stored.public_key_pem == answer.public_key_pem


def test_keygen_fails_is_asked_only_when_generation_is_reached() -> None:
    asked: list[int] = []

    def fails(name: FaultName) -> bool:
        asked.append(1)
        return name is FaultName.KEYGEN_FAIL

    modem = make(mode=1)
    modem.handle("AT+CMEE=1")
    assert modem.handle("AT%KEYGEN=5,2,0", faults=fails).final == CmeErrorLine(code=518)
    assert modem.handle("AT%KEYGEN=0,2,0", faults=fails).final == Error()
    assert asked == []
    modem.handle("AT+CFUN=4")
    reply = modem.handle("AT%KEYGEN=5,2,0", faults=fails)
    assert reply.final == CmeErrorLine(code=523) and reply.fault is FaultName.KEYGEN_FAIL \
        and not reply.changed
    assert asked == [1] and len(modem.store) == 0


def test_endorsement_key_answer_repeats_the_public_key() -> None:
    modem = make()
    first = modem.handle("AT%KEYGEN=33,8")
    again = modem.handle("AT%KEYGEN=33,8,1")
    assert first.key_made and not again.key_made and not again.changed
    assert again.work is Work.KEYGEN
    assert parse_keygen(first.lines[0]).public_key_pem == parse_keygen(
        again.lines[0]).public_key_pem


def test_capacity_and_reserved_entries() -> None:
    modem = make(capacity=1)
    modem.handle("AT+CMEE=1")
    assert modem.handle("AT%KEYGEN=1,8").final == Ok()
    assert modem.handle("AT%KEYGEN=2,8").final == CmeErrorLine(code=515)
    listing = modem.handle("AT%CMNG=1").lines
    assert listing[0].startswith('%CMNG: 1,8,"')
    assert [line.split(",")[0] for line in listing[1:]] == [
        "%CMNG: 4294967292", "%CMNG: 4294967293", "%CMNG: 4294967294"]
    assert modem.handle("AT%CMNG=1,1").lines == listing[:1]


def test_client_certificate_hook_is_called() -> None:
    class Strict(Modem):
        seen: list[tuple[int, bytes]] = []  # noqa: RUF012

        def check_client_certificate(self, sec_tag: int, content: bytes) -> int | None:  # type: ignore[override]
            self.seen.append((sec_tag, content))
            return 527

    base = make()
    modem = Strict(index=0, imei=base.imei, device_uuid=base.device_uuid, model=base.model,
                   identity_key=base.identity_key, store=base.store)
    modem.handle("AT+CMEE=1")
    assert modem.handle('AT%CMNG=0,7,1,"cert"').final == CmeErrorLine(code=527)
    assert modem.handle('AT%CMNG=0,7,0,"ca"').final == Ok()
    assert Strict.seen == [(7, b"cert")]


def test_state_round_trip_and_incremental_render() -> None:
    modems = [make(0), make(1)]
    modems[0].handle("AT%KEYGEN=16842753,2,0")
    modems[0].handle('AT%CMNG=0,16842753,1,"line1\nline2\r\n"')
    modems[1].handle("AT+CFUN=44")
    renderer = StateRenderer()
    data = renderer.render(modems)
    loaded = parse_state(data, capacity=32)
    for modem in modems:
        assert modem_to_dict(loaded[modem.index]) == modem_to_dict(modem)
    doc = json.loads(data)
    assert doc["modems"][0]["credentials"][0]["content"] == "line1\nline2\r\n"
    modems[1].handle("AT+CFUN=0")
    assert json.loads(renderer.render(modems))["modems"][1]["function_mode"] == 0
    with pytest.raises(ValueError, match="modem 0: missing 'imei'"):
        parse_state(json.dumps({"modems": [{k: v for k, v in doc["modems"][0].items()
                                            if k != "imei"}]}).encode(), capacity=1)
    with pytest.raises(ValueError, match="JSON"):
        parse_state(b"{", capacity=1)


COMMANDS = st.sampled_from([
    "AT", "AT+CFUN=0", "AT+CFUN=1", "AT+CFUN=4", "AT+CFUN?", "AT+CMEE=0", "AT+CMEE=1",
    "AT%KEYGEN=1,2,0", "AT%KEYGEN=1,2,1", "AT%KEYGEN=2,8", "AT%KEYGEN=3,2,0,,\"101010000\"",
    "AT%CMNG=1", "AT%CMNG=1,1", "AT%CMNG=3,1,2", "AT%CMNG=3,2,8", 'AT%CMNG=0,4,0,"pem"',
    "AT%CMNG=2,4,0", "AT%CMNG=3,4,0", "AT%KEYGEN=2147483648,8", "AT%BOGUS",
])


@settings(max_examples=60, deadline=None)
@given(st.lists(COMMANDS, max_size=25), st.integers(min_value=0, max_value=3))
def test_any_command_sequence_keeps_the_invariants(commands: list[str], capacity: int) -> None:
    modem = make(capacity=capacity)
    for text in commands:
        before = modem.revision
        reply = modem.handle(text)
        assert isinstance(reply.final, Ok | Error | CmeErrorLine)
        if modem.cmee == 0 and text != "AT+CMEE=0":
            assert not isinstance(reply.final, CmeErrorLine)
        assert len(modem.store) <= capacity
        assert reply.changed == (modem.revision != before)
        if isinstance(reply.final, CmeErrorLine) and reply.final.code in (518, 514, 515, 519):
            assert not reply.changed
        if reply.key_made:
            assert reply.lines[0].startswith('%KEYGEN: "')
    loaded = parse_state(StateRenderer().render([modem]), capacity=capacity)[0]
    assert modem_to_dict(loaded) == modem_to_dict(modem)


def test_fault_specs() -> None:
    spec = parse_fault_spec("disconnect:0.3@2,5")
    assert (spec.name, spec.probability, spec.targets) == (
        FaultName.DISCONNECT, 0.3, frozenset({2, 5}))
    assert str(spec) == "disconnect:0.3@2,5"
    assert parse_fault_spec("urc-storm:1").targets is None
    for bad, message in [("nope:0.1", "unknown fault"), ("garble", "NAME:PROB"),
                         ("garble:x", "not a number"), ("garble:2", "from 0 to 1"),
                         ("garble:0.5@", "targets"), ("garble:0.5@a,b", "targets"),
                         ("garble:-0.1", "from 0 to 1")]:
        with pytest.raises(ValueError, match=message):
            parse_fault_spec(bad)


def test_fault_dice_are_seeded_targeted_and_independent() -> None:
    specs = [parse_fault_spec("garble:0.5"), parse_fault_spec("slow:1@1")]
    draws = [FaultDice(specs, 0, seed=9).roll(FaultName.GARBLE) for _ in range(1)]
    one = FaultDice(specs, 0, seed=9)
    two = FaultDice(specs, 0, seed=9)
    assert [one.roll(FaultName.GARBLE) for _ in range(50)] == [
        two.roll(FaultName.GARBLE) for _ in range(50)]
    assert draws
    assert not FaultDice(specs, 0, seed=9).roll(FaultName.SLOW)
    assert FaultDice(specs, 1, seed=9).roll(FaultName.SLOW)
    assert not FaultDice([], 0, seed=9).roll(FaultName.GARBLE)


def test_a_fault_with_a_most_times_fires_that_often_per_modem() -> None:
    spec = parse_fault_spec("list-drop:1:2@0")
    assert (spec.limit, spec.targets, str(spec)) == (2, frozenset({0}), "list-drop:1:2@0")
    dice = FaultDice([spec], 0, seed=3)
    assert [dice.roll(FaultName.LIST_DROP) for _ in range(4)] == [True, True, False, False]
    for bad in ("list-drop:1:0", "list-drop:1:x", "list-drop:1:"):
        with pytest.raises(ValueError, match="MAX"):
            parse_fault_spec(bad)


def test_the_command_faults_shape_the_answer_they_name() -> None:
    modem = make(mode=4)
    always = {FaultName.LIST_NO_SHA}.__contains__
    listing = modem.handle("AT%CMNG=1", faults=always)
    assert listing.fault is FaultName.LIST_NO_SHA and listing.lines
    assert all(line.count(",") == 1 for line in listing.lines)
    dropped = modem.handle("AT%CMNG=1", faults={FaultName.LIST_DROP}.__contains__)
    assert dropped.drop and dropped.fault is FaultName.LIST_DROP and not dropped.lines
    reply = modem.handle("AT%KEYGEN=7,2,0", faults={FaultName.KEYGEN_BAD_UUID}.__contains__)
    assert reply.fault is FaultName.KEYGEN_BAD_UUID and reply.key_made
    answer = parse_keygen(reply.lines[0])
    assert answer.payload.device_uuid.int == modem.device_uuid.int ^ 1


def test_garble_and_storm_shapes() -> None:
    rng = random.Random(1)
    data = b'+CGSN: "352656100367872"\r\nOK\r\n'
    for _ in range(100):
        out = garble(data, rng)
        assert len(out) == len(data) and out != data
        assert [i for i, b in enumerate(out) if b in b"\r\n"] == [
            i for i, b in enumerate(data) if b in b"\r\n"]
    lines = urc_storm(["%KEYGEN: \"x\"", "OK"], rng)
    assert lines.index("OK") > lines.index('%KEYGEN: "x"') >= 2
    assert len(lines) - lines.index("OK") - 1 >= 2
    assert all(line in STORM_URCS for line in lines if line not in ("OK", '%KEYGEN: "x"'))


def test_timing_profiles() -> None:
    fast, real = PROFILES["fast"], PROFILES["realistic"]
    assert all(fast.delay(work, 0.7) == 0 for work in Work) and fast.bytes_per_s is None
    assert real.delay(Work.KEYGEN, 0.3) == 1.5 and real.delay(Work.CFUN_CHANGE, 0.3) == 0.2
    assert real.delay(Work.QUICK, 0.0) == 0.02 and real.delay(Work.QUICK, 0.999) < 0.05
    assert real.bytes_per_s == 11520


def test_attestation_token_verifies() -> None:
    from fleet.credentials import parse_attest_token

    modem = make(model="nrf9151")
    token = parse_attest_token(modem.handle("AT%ATTESTTOKEN").lines[0])
    assert token.device_uuid == modem.device_uuid and token.message_type == 1
    assert token.firmware_uuid == modem.firmware_uuid.bytes and token.nonce is not None
    assert token.cose.verify(modem.identity_key.public_key())
    assert isinstance(uuid.UUID(bytes=token.firmware_uuid), uuid.UUID)
