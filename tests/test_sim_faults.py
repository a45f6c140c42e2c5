"""Every ``--fault`` shown happening, over real ptys with plain pyserial.

One simulator serves one faulty modem per fault (``NAME:1.0@I``, so each fault fires on every
chance it gets) and a healthy control modem; reboot needs keys from a previous run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from fleet.credentials import parse_keygen
from fleet.sim.faults import SLOW_EXTRA_S, STORM_URCS
from tests.simproc import SimProcess, command, open_port, read_until_final, run_sim

pytestmark = pytest.mark.timeout(120)

SILENT, DISCONNECT, GARBLE, STORM, KEYGEN_FAIL, LOST, SLOW, HEALTHY = range(8)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    faults = ["silent:1@0", "disconnect:1.0@1", "garble:1.0@2", "urc-storm:1.0@3",
              "keygen-fail:1.0@4", "lost-answer:1.0@5", "slow:1.0@6"]
    args = [arg for fault in faults for arg in ("--fault", fault)]
    with run_sim(tmp_path_factory.mktemp("faults"), 8, "--function-mode", "4", *args) as process:
        yield process


def read_for(port: serial.Serial, seconds: float) -> bytes:
    """Everything that arrives within ``seconds``."""
    deadline = time.monotonic() + seconds
    data = b""
    while time.monotonic() < deadline:
        data += port.read(4096)
    return data


def expect_drop(port: serial.Serial, seconds: float = 5.0) -> bytes:
    """Read until the port fails (the simulator closed the pty); returns what came first."""
    deadline = time.monotonic() + seconds
    data = b""
    while time.monotonic() < deadline:
        try:
            data += port.read(4096)
        except serial.SerialException:
            return data
    raise AssertionError(f"the port did not drop within {seconds}s (got {data!r})")


def wait_relinked(link: Path, old: str, seconds: float = 5.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        target = os.readlink(link)
        if target != old:
            return target
        time.sleep(0.01)
    raise AssertionError(f"{link} still points at {old}")


def test_silent_never_answers(sim: SimProcess) -> None:
    with open_port(sim.ports[SILENT]) as port:
        port.write(b"AT\rAT+CGMM\r")
        assert read_for(port, 1.0) == b""
    assert sim.commands(SILENT) == ["AT", "AT+CGMM"]
    assert [f["fault"] for f in sim.faults(SILENT)] == ["silent", "silent"]


def test_disconnect_drops_the_port_before_the_command_runs(sim: SimProcess) -> None:
    link = sim.ports[DISCONNECT]
    old = os.readlink(link)
    with open_port(link) as port:
        port.write(b"AT+CFUN=0\r")
        assert expect_drop(port) == b""
    new = wait_relinked(link, old)
    assert new.startswith("/dev/pts/")
    assert sim.modem_state(DISCONNECT)["function_mode"] == 4  # CFUN=0 never ran
    with open_port(link) as port:  # the same link now reaches a fresh pty
        port.write(b"AT\r")
        expect_drop(port)
    faults = sim.faults(DISCONNECT)
    assert [(f["fault"], f["command"]) for f in faults] == [("disconnect", "AT+CFUN=0"),
                                                            ("disconnect", "AT")]


def test_garble_corrupts_answer_bytes(sim: SimProcess) -> None:
    imei = sim.modem_state(GARBLE)["imei"]
    expected = f'+CGSN: "{imei}"\r\nOK\r\n'.encode()
    with open_port(sim.ports[GARBLE]) as port:
        port.write(b"AT+CGSN=1\r")
        got = read_for(port, 0.5)
    assert len(got) == len(expected) and got != expected
    assert [i for i, b in enumerate(got) if b in b"\r\n"] == [
        i for i, b in enumerate(expected) if b in b"\r\n"]
    assert 1 <= sum(a != b for a, b in zip(got, expected, strict=True)) <= 3
    assert sim.faults(GARBLE)[-1]["fault"] == "garble"


def test_urc_storm_surrounds_the_answer(sim: SimProcess) -> None:
    with open_port(sim.ports[STORM]) as port:
        lines = command(port, "AT%KEYGEN=20,2,0")
        after = read_for(port, 0.3).decode().split("\r\n")
    answer = [line for line in lines if line.startswith("%KEYGEN:")]
    urcs = [line for line in lines if line in STORM_URCS]
    assert len(answer) == 1 and lines[-1] == "OK"
    assert len(urcs) + 2 == len(lines) and lines.index(answer[0]) >= 2  # URCs before it
    assert len([line for line in after if line in STORM_URCS]) >= 2  # and after the final
    assert parse_keygen(answer[0]).payload.sec_tag == 20
    assert sim.faults(STORM)[-1]["fault"] == "urc-storm"


def test_keygen_fail_answers_523_and_stores_nothing(sim: SimProcess) -> None:
    with open_port(sim.ports[KEYGEN_FAIL]) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]  # other commands are not affected
        assert command(port, "AT%KEYGEN=21,2,0") == ["+CME ERROR: 523"]
        assert command(port, "AT%KEYGEN=22,8") == ["+CME ERROR: 523"]
        assert command(port, "AT%CMNG=1,21") == ["OK"]
        assert command(port, "AT+CFUN=1") == ["OK"]
        assert command(port, "AT%KEYGEN=21,2,0") == ["+CME ERROR: 518"]  # checks come first
    assert sim.modem_state(KEYGEN_FAIL)["credentials"] == []
    assert [f["fault"] for f in sim.faults(KEYGEN_FAIL)] == ["keygen-fail", "keygen-fail"]


def test_lost_answer_stores_the_key_and_drops_the_port(sim: SimProcess) -> None:
    link = sim.ports[LOST]
    old = os.readlink(link)
    with open_port(link) as port:
        port.write(b"AT%KEYGEN=23,2,0\r")
        assert b"KEYGEN" not in expect_drop(port)
    # the key is on disk before the port drops
    assert [(c["sec_tag"], c["type"]) for c in sim.modem_state(LOST)["credentials"]] == [(23, 2)]
    wait_relinked(link, old)
    with open_port(link) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]
        assert command(port, "AT%CMNG=1,23")[0].startswith("%CMNG: 23,2,")
        assert command(port, "AT%KEYGEN=23,2,0") == ["+CME ERROR: 519"]  # no key made: answered
    assert [f["fault"] for f in sim.faults(LOST)] == ["lost-answer"]


def test_slow_delays_the_answer_by_seconds(sim: SimProcess) -> None:
    with open_port(sim.ports[SLOW]) as port:
        start = time.monotonic()
        port.write(b"AT\r")
        assert read_for(port, 1.0) == b""  # a host with a 1 s timeout gives up here
        assert read_until_final(port, timeout=SLOW_EXTRA_S + 5) == ["OK"]
        assert time.monotonic() - start >= SLOW_EXTRA_S - 0.1
    assert sim.faults(SLOW)[-1]["fault"] == "slow"


def test_healthy_modem_has_no_faults(sim: SimProcess) -> None:
    with open_port(sim.ports[HEALTHY]) as port:
        for _ in range(5):
            assert command(port, "AT") == ["OK"]
        assert command(port, "AT%KEYGEN=24,2,0")[-1] == "OK"
    assert sim.faults(HEALTHY) == []


def test_reboot_resets_the_function_mode_and_keeps_the_keys(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--function-mode", "4") as sim, open_port(sim.ports[1]) as port:
        endorse = parse_keygen(command(port, "AT%KEYGEN=30,8")[0])
    with run_sim(tmp_path, 2, "--fault", "reboot:1.0@1") as sim:
        assert sim.modem_state(1)["function_mode"] == 4
        with open_port(sim.ports[1]) as port:
            port.write(b"AT+CFUN?\r")
            assert read_for(port, 0.5) == b""  # not answered
        assert sim.modem_state(1)["function_mode"] == 0
        assert [c["sec_tag"] for c in sim.modem_state(1)["credentials"]] == [30]
        assert [f["fault"] for f in sim.faults(1)] == ["reboot"]
        with open_port(sim.ports[0]) as port:  # modem 0 is not targeted
            assert command(port, "AT+CFUN?") == ["+CFUN: 4", "OK"]
    # keys kept: after the reboot run, the endorsement key answers with the same public key
    with run_sim(tmp_path, 2) as sim, open_port(sim.ports[1]) as port:
        assert command(port, "AT+CFUN?") == ["+CFUN: 0", "OK"]
        again = parse_keygen(command(port, "AT%KEYGEN=30,8")[0])
    assert again.public_key_pem == endorse.public_key_pem



def _swapped_at_a_listing(link: Path, *, after: str) -> None:
    """Send ``after`` (it must answer OK), then a listing of everything, at which a swap fault
    drops the port; return once the new pty is linked in."""
    with open_port(link) as port:
        assert command(port, after)[-1] == "OK"
        old = os.readlink(link)
        port.write(b"AT%CMNG=1\r")
        assert b"%CMNG" not in expect_drop(port)
    wait_relinked(link, old)


def test_swap_drops_the_port_and_another_board_with_the_same_imei_answers(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--function-mode", "4", "--model", "nrf9151",
                 "--fault", "swap:1:1@1") as sim:
        link = sim.ports[1]
        before = sim.modem_state(1)
        _swapped_at_a_listing(link, after="AT%KEYGEN=40,2,0")
        after = sim.modem_state(1)
        assert after["imei"] == before["imei"] and after["model"] == before["model"]
        assert after["device_uuid"] != before["device_uuid"]
        assert after["identity_public_key_pem"] != before["identity_public_key_pem"]
        assert after["credentials"] == []  # the key made on the first board is not on this one
        with open_port(link) as port:
            assert command(port, "AT+CGSN=1") == [f'+CGSN: "{before["imei"]}"', "OK"]
            assert command(port, "AT%ATTESTTOKEN")[-1] == "OK"
            assert not [line for line in command(port, "AT%CMNG=1") if "40,2" in line]
        assert [f["fault"] for f in sim.faults(1)] == ["swap"]
        assert sim.modem_state(0)["credentials"] == [] and sim.faults(0) == []


def test_swap_unattested_puts_an_nrf9160_with_the_same_imei_there(tmp_path: Path) -> None:
    with run_sim(tmp_path, 1, "--model", "nrf9151", "--fault", "swap-unattested:1:1") as sim:
        link = sim.ports[0]
        before = sim.modem_state(0)
        _swapped_at_a_listing(link, after="AT%ATTESTTOKEN")
        after = sim.modem_state(0)
        assert after["imei"] == before["imei"] and after["device_uuid"] != before["device_uuid"]
        assert (after["model"], after["firmware"]) == ("nrf9160", "mfw_nrf9160_1.3.5")
        with open_port(link) as port:
            assert command(port, "AT+CGSN=1") == [f'+CGSN: "{before["imei"]}"', "OK"]
            assert command(port, "AT+CGMM") == ["nRF9160-SICA", "OK"]
            assert command(port, "AT%ATTESTTOKEN") == ["ERROR"]
        assert [f["fault"] for f in sim.faults(0)] == ["swap-unattested"]
    # The state file keeps the board now there, as it is.
    with run_sim(tmp_path, 1, "--model", "nrf9151") as sim:
        assert sim.modem_state(0) == after
        with open_port(sim.ports[0]) as port:
            assert command(port, "AT+CGMM") == ["nRF9160-SICA", "OK"]
            assert command(port, "AT%ATTESTTOKEN") == ["ERROR"]
