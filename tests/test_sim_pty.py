"""``fleet sim`` end to end: a real subprocess, real ptys, PLAIN pyserial on the host side.

Each test uses its own modem index of a shared simulator, so the tests do not depend on order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.credentials import check_keygen, parse_attest_token, parse_keygen
from fleet.nrf91 import luhn_valid
from tests.simproc import SimProcess, command, open_port, read_until_final, run_sim

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("sim9160"), 8) as process:
        yield process


@pytest.fixture(scope="module")
def sim9151(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("sim9151"), 2, "--model", "nrf9151") as process:
        yield process


def identity_key(sim: SimProcess, index: int) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(
        sim.modem_state(index)["identity_public_key_pem"].encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_ready_line_and_links(sim: SimProcess) -> None:
    assert sim.ready_line == (f"fleet sim: 8 modems ready: {sim.ports[0]} .. {sim.ports[7]}")
    for link in sim.ports:
        assert link.is_symlink() and os.readlink(link).startswith("/dev/pts/")
    state = sim.state()
    assert [m["index"] for m in state["modems"]] == list(range(8))
    for modem in state["modems"]:
        assert set(modem) >= {"index", "imei", "device_uuid", "model", "firmware",
                              "function_mode", "identity_public_key_pem", "credentials"}


def test_identification_commands(sim: SimProcess) -> None:
    me = sim.modem_state(0)
    with open_port(sim.ports[0]) as port:
        assert command(port, "AT") == ["OK"]  # no echo: the first line is the final one
        assert command(port, "AT+CGSN=1") == [f'+CGSN: "{me["imei"]}"', "OK"]
        assert command(port, "AT+CGSN") == [me["imei"], "OK"]
        assert command(port, "AT+CGMM") == ["nRF9160-SICA", "OK"]
        assert command(port, "AT+CGMR") == ["mfw_nrf9160_1.3.5", "OK"]
        xmodem = command(port, "AT%XMODEMUUID")
        assert xmodem[1] == "OK" and xmodem[0].startswith("%XMODEMUUID: ")
        fw_uuid = uuid.UUID(xmodem[0].split(": ", 1)[1])
        assert fw_uuid != uuid.UUID(me["device_uuid"])
        assert command(port, "AT%ATTESTTOKEN") == ["ERROR"]  # nRF91x1 with mfw >= 2.0.0 only
    assert len(me["imei"]) == 15 and luhn_valid(me["imei"])
    assert me["model"] == "nrf9160" and me["firmware"] == "mfw_nrf9160_1.3.5"
    imeis = {m["imei"] for m in sim.state()["modems"]}
    assert len(imeis) == 8


def test_nrf9151_strings_and_attest_token(sim9151: SimProcess) -> None:
    me = sim9151.modem_state(0)
    with open_port(sim9151.ports[0]) as port:
        assert command(port, "AT+CGMM") == ["nRF9151-LACA", "OK"]
        assert command(port, "AT+CGMR") == ["mfw_nrf91x1_2.0.2", "OK"]
        token = parse_attest_token(command(port, "AT%ATTESTTOKEN")[0])
        fw_uuid = uuid.UUID(command(port, "AT%XMODEMUUID")[0].split(": ", 1)[1])
        answer = parse_keygen(command(port, "AT%KEYGEN=7,2,0")[0])
    assert token.device_uuid == uuid.UUID(me["device_uuid"]) and token.device_type == 6
    assert token.firmware_uuid == fw_uuid.bytes
    assert token.cose.verify(identity_key(sim9151, 0))
    assert answer.csr_null_parameter  # the NULL-parameter CSR on mfw 2.0.2 too
    assert all(c.ok for c in check_keygen(answer, identity_key=identity_key(sim9151, 0)))


def test_cfun_modes_and_state_written_before_the_answer(sim: SimProcess) -> None:
    with open_port(sim.ports[1]) as port:
        assert command(port, "AT+CFUN?") == ["+CFUN: 0", "OK"]
        for mode in (1, 2, 4, 20, 21, 30, 31, 40, 41, 44, 0):
            assert command(port, f"AT+CFUN={mode}") == ["OK"]
            assert command(port, "AT+CFUN?") == [f"+CFUN: {mode}", "OK"]
            # the answer is sent only after the state file holds the change
            assert sim.modem_state(1)["function_mode"] == mode
        for bad in ("AT+CFUN=3", "AT+CFUN=5", "AT+CFUN=", "AT+CFUN=1,1", 'AT+CFUN="1"'):
            assert command(port, bad) == ["ERROR"], bad
        assert command(port, "AT+CFUN=?")[-1] == "OK"


def test_cmee_switches_between_bare_error_and_codes(sim: SimProcess) -> None:
    with open_port(sim.ports[2]) as port:
        assert command(port, "AT+CMEE?") == ["+CMEE: 0", "OK"]
        assert command(port, "AT+CFUN=1") == ["OK"]
        assert command(port, "AT%KEYGEN=5,2,0") == ["ERROR"]  # 518, but CMEE is 0
        assert command(port, "AT+CMEE=1") == ["OK"]
        assert command(port, "AT+CMEE?") == ["+CMEE: 1", "OK"]
        assert command(port, "AT%KEYGEN=5,2,0") == ["+CME ERROR: 518"]
        assert command(port, "AT%CMNG=0,5,0,\"x\"") == ["+CME ERROR: 518"]
        assert command(port, "AT%CMNG=3,5,0") == ["+CME ERROR: 518"]
        assert command(port, "AT+CMEE=2") == ["ERROR"]
        assert command(port, "AT+CMEE=0") == ["OK"]
        assert command(port, "AT%KEYGEN=5,2,0") == ["ERROR"]
        assert command(port, "AT+CFUN=0") == ["OK"]


def test_unknown_malformed_and_overlong_commands(sim: SimProcess) -> None:
    with open_port(sim.ports[2]) as port:
        for bad in ("AT%FOO", "ATI", "AT+COPS?", "hello", "AT+CFUN=abc", "AT%CMNG=1,x",
                    'AT%CMNG=1,"x"', "AT%CMNG", "AT%KEYGEN?", "AT+CGMM=1"):
            assert command(port, bad) == ["ERROR"], bad
        assert command(port, "AT" + "A" * 5000) == ["ERROR"]
        assert command(port, "AT") == ["OK"]  # still usable after the over-long line
        # A CR build (the default): CR ends a command; the LF of a host's CR LF stays in front
        # of the next command and a NUL is dropped, as lib/at_host does.
        port.write(b"AT\r\nAT+CG\x00MM\r")
        assert read_until_final(port) == ["OK"]
        assert read_until_final(port) == ["nRF9160-SICA", "OK"]
    commands = sim.commands(2)
    assert "AT%FOO" in commands and "" in commands  # the over-long line is logged, empty


def test_restart_with_the_same_state_keeps_every_key(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2, "--seed", "7") as sim, open_port(sim.ports[1]) as port:
        assert command(port, "AT+CFUN=4") == ["OK"]
        client = parse_keygen(command(port, "AT%KEYGEN=16842753,2,0")[0])
        endorse = parse_keygen(command(port, "AT%KEYGEN=33,8")[0])
        assert command(port, 'AT%CMNG=0,16842753,1,"cert"') == ["OK"]
        listing = command(port, "AT%CMNG=1")
        imei = command(port, "AT+CGSN")[0]
        before = sim.state()
    # restart: a different seed does not matter, the state file wins
    with run_sim(tmp_path, 3, "--seed", "8") as sim, open_port(sim.ports[1]) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]
        assert command(port, "AT%CMNG=1") == listing
        assert command(port, "AT+CGSN") == [imei, "OK"]
        assert command(port, "AT+CFUN?") == ["+CFUN: 4", "OK"]
        again = parse_keygen(command(port, "AT%KEYGEN=33,8")[0])
        assert again.public_key_pem == endorse.public_key_pem
        assert all(c.ok for c in check_keygen(again, identity_key=identity_key(sim, 1)))
        assert command(port, "AT%KEYGEN=16842753,2,0") == ["+CME ERROR: 519"]
        after = sim.state()
    assert after["modems"][:2] == before["modems"]
    assert len(after["modems"]) == 3  # the missing modem was created
    stored = {(c["sec_tag"], c["type"]): c for c in after["modems"][1]["credentials"]}
    assert stored[(16842753, 2)]["public_key_pem"] == client.public_key_pem
    # fewer modems than the file holds: the extra ones are kept in the file, not served
    with run_sim(tmp_path, 1) as sim:
        assert len(sim.ports) == 1 and not (tmp_path / "ports" / "modem1").exists()
        assert len(sim.state()["modems"]) == 3


def _free_port_range(count: int) -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            holders = []
            for offset in range(count):
                sock = socket.socket()
                holders.append(sock)
                sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for sock in holders:
                sock.close()
        return base
    raise AssertionError("no free port range on 127.0.0.1")


def _recv_until_final(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while not data.endswith((b"OK\r\n", b"ERROR\r\n")):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_tcp_listen(tmp_path: Path) -> None:
    base = _free_port_range(2)
    with run_sim(tmp_path, 2, "--listen", f"127.0.0.1:{base}") as sim:
        assert sim.ready_line.endswith(f"; tcp 127.0.0.1:{base}..{base + 1}")
        imei = sim.modem_state(1)["imei"]
        with socket.create_connection(("127.0.0.1", base + 1), timeout=10) as first:
            first.sendall(b"AT+CGSN=1\r")
            assert _recv_until_final(first) == f'+CGSN: "{imei}"\r\nOK\r\n'.encode()
            with socket.create_connection(("127.0.0.1", base + 1), timeout=10) as second:
                second.settimeout(10)
                assert second.recv(100) == b""  # refused: modem 1 already has a connection
            first.sendall(b"AT+CGMM\r")
            assert _recv_until_final(first) == b"nRF9160-SICA\r\nOK\r\n"
        deadline = time.monotonic() + 10
        while True:  # once the first connection is gone, a new one is served
            with socket.create_connection(("127.0.0.1", base + 1), timeout=10) as third:
                third.sendall(b"AT\r")
                if _recv_until_final(third) == b"OK\r\n":
                    break
            assert time.monotonic() < deadline
        with socket.create_connection(("127.0.0.1", base), timeout=10) as zero:
            zero.sendall(b"AT+CGSN\r")
            assert _recv_until_final(zero) == f'{sim.modem_state(0)["imei"]}\r\nOK\r\n'.encode()


def test_sigint_stops_cleanly_and_removes_the_links(tmp_path: Path) -> None:
    with run_sim(tmp_path, 2) as sim:
        with open_port(sim.ports[0]) as port:
            assert command(port, "AT+CFUN=4") == ["OK"]
        sim.proc.send_signal(signal.SIGINT)
        assert sim.proc.wait(20) == 0
        assert not sim.ports[0].exists() and not sim.ports[0].is_symlink()
        assert sim.modem_state(0)["function_mode"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--fault", "explode:0.5"], "unknown fault"),
    (["--fault", "disconnect:1.5"], "from 0 to 1"),
    (["--fault", "disconnect:0.5@9"], "index 9 does not exist"),
    (["--listen", "nowhere"], "HOST:PORT"),
    (["--count", "0"], "count"),
    (["--function-mode", "3"], "invalid choice"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    base = ["--count", "2"] if "--count" not in args else []
    result = subprocess.run(
        [sys.executable, "-m", "fleet", "sim", "--dir", str(tmp_path / "p"), *base, *args],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_corrupt_state_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"modems": [{"index": 0}]}')
    result = subprocess.run(
        [sys.executable, "-m", "fleet", "sim", "--count", "1", "--dir", str(tmp_path / "p"),
         "--state", str(tmp_path / "bad.json")],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "bad.json" in result.stderr and "missing" in result.stderr


def test_a_file_where_a_link_belongs_is_not_replaced(tmp_path: Path) -> None:
    ports = tmp_path / "p"
    ports.mkdir()
    (ports / "modem1").write_text("precious")
    result = subprocess.run(
        [sys.executable, "-m", "fleet", "sim", "--count", "2", "--dir", str(ports)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "not a symlink" in result.stderr
    assert (ports / "modem1").read_text() == "precious"
    assert not os.path.lexists(ports / "modem0")  # the links made before it are removed


def test_serial_port_is_plain_pyserial(sim: SimProcess) -> None:
    """The ports work with pyserial's default class and with its poll() class alike."""
    with serial.Serial(str(sim.ports[6]), 115200, timeout=1) as port:
        port.write(b"AT\r")
        assert port.read_until(b"OK\r\n") == b"OK\r\n"
    with open_port(sim.ports[6], poll=True) as port:
        assert command(port, "AT") == ["OK"]
