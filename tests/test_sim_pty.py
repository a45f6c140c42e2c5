"""``fleet sim`` end to end: a real subprocess, real ptys, PLAIN pyserial on the host side.

Each test uses its own modem index of a shared simulator, so the tests do not depend on order.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.credentials import (
    Expectation,
    attributes_subject,
    check_keygen,
    default_subject,
    parse_attest_token,
    parse_cmng_list,
    parse_cmng_read,
    parse_keygen,
)
from fleet.sim.identity import luhn_valid
from tests.simproc import SimProcess, command, open_port, run_sim

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


def certificate_pem(common_name: str = "fleet test CA") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


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
        token_lines = command(port, "AT%ATTESTTOKEN")
    assert len(me["imei"]) == 15 and luhn_valid(me["imei"])
    assert me["model"] == "nrf9160" and me["firmware"] == "mfw_nrf9160_1.3.5"
    assert token_lines[-1] == "OK"
    token = parse_attest_token(token_lines[0])
    assert token.device_uuid == uuid.UUID(me["device_uuid"])
    assert token.firmware_uuid == fw_uuid.bytes
    assert token.cose.verify(identity_key(sim, 0))
    imeis = {m["imei"] for m in sim.state()["modems"]}
    assert len(imeis) == 8


def test_nrf9151_strings_and_attest_token(sim9151: SimProcess) -> None:
    me = sim9151.modem_state(0)
    with open_port(sim9151.ports[0]) as port:
        assert command(port, "AT+CGMM") == ["nRF9151-LACA", "OK"]
        assert command(port, "AT+CGMR") == ["mfw_nrf91x1_2.0.2", "OK"]
        token = parse_attest_token(command(port, "AT%ATTESTTOKEN")[0])
        answer = parse_keygen(command(port, "AT%KEYGEN=7,2,0")[0])
    assert token.device_uuid == uuid.UUID(me["device_uuid"])
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
        port.write(b"AT\r\nAT+CGMM\x00")  # CR, LF and NUL all end a command
        from tests.simproc import read_until_final
        assert read_until_final(port) == ["OK"]
        assert read_until_final(port) == ["nRF9160-SICA", "OK"]
    commands = sim.commands(2)
    assert "AT%FOO" in commands and "" in commands  # the over-long line is logged, empty


KEYGEN_FORMS: list[tuple[str, int, int, Any, str | None]] = [
    # command, sec_tag, payload id, subject (None: no CSR), key usage
    ("AT%KEYGEN=16842753,2,0", 16842753, 9, "default", "111010000"),
    ('AT%KEYGEN=11,2,0,"O=Nordic Semiconductor,L=Trondheim,C=no","101010000"', 11, 9,
     attributes_subject("O=Nordic Semiconductor,L=Trondheim,C=no"), "101010000"),
    ('AT%KEYGEN=12,2,0,,"100000000"', 12, 9, "default", "100000000"),
    ('AT%KEYGEN=13,2,0,"CN=device-13,OU=line1,serialNumber=42"', 13, 9,
     attributes_subject("CN=device-13,OU=line1,serialNumber=42"), "111010000"),
    ("AT%KEYGEN=14,2,1", 14, 8, None, None),
    ('AT%KEYGEN=15,2,1,"CN=ignored","100000001"', 15, 8, None, None),  # ignored without CSR
    ("AT%KEYGEN=33,8", 33, 8, None, None),
    ("AT%KEYGEN=34,8,1", 34, 8, None, None),
    ("AT%KEYGEN=2147483647,8", 2147483647, 8, None, None),
]


def test_every_keygen_form_passes_inspect_and_checks(sim: SimProcess, tmp_path: Path) -> None:
    me = sim.modem_state(3)
    device_uuid = uuid.UUID(me["device_uuid"])
    identity = identity_key(sim, 3)
    pem_path = tmp_path / "identity.pem"
    pem_path.write_text(me["identity_public_key_pem"])
    answers = {}
    with open_port(sim.ports[3]) as port:
        for text, sec_tag, payload_id, subject, usage in KEYGEN_FORMS:
            lines = command(port, text)
            assert lines[-1] == "OK" and len(lines) == 2, (text, lines)
            assert lines[0].startswith('%KEYGEN: "')
            answer = parse_keygen(lines[0])
            expect = Expectation(
                sec_tag=sec_tag, payload_id=payload_id, device_uuid=device_uuid,
                subject=default_subject(device_uuid) if subject == "default" else subject,
                key_usage=usage)
            checks = check_keygen(answer, expect, identity)
            assert all(c.ok for c in checks), (text, [c for c in checks if not c.ok])
            assert answer.kind == ("csr" if subject else "public_key")
            if subject:
                assert answer.csr_null_parameter
            answers[sec_tag] = (lines[0], answer)
    stored = {(c["sec_tag"], c["type"]): c for c in sim.modem_state(3)["credentials"]}
    for sec_tag, (line, answer) in answers.items():
        key_type = 8 if sec_tag in (33, 34, 2147483647) else 2
        assert stored[(sec_tag, key_type)]["public_key_pem"] == answer.public_key_pem
        result = subprocess.run(
            [sys.executable, "-m", "fleet", "inspect", "--json", "--identity-key",
             str(pem_path), line], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, (line, result.stdout, result.stderr)
        doc = json.loads(result.stdout)
        assert {c["name"]: c["ok"] for c in doc["checks"]}["cose_signature"] is True


def test_keygen_errors_and_idempotency(sim: SimProcess) -> None:
    with open_port(sim.ports[4]) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]
        for bad in ("AT%KEYGEN=0,2,0", "AT%KEYGEN=4294967296,2,0", "AT%KEYGEN=9,3,0",
                    "AT%KEYGEN=9,2", "AT%KEYGEN=9,2,2", "AT%KEYGEN=9,8,0", "AT%KEYGEN=9",
                    'AT%KEYGEN=9,2,0,"XX=1"', 'AT%KEYGEN=9,2,0,"CN="',
                    'AT%KEYGEN=9,2,0,"C=NOR"', 'AT%KEYGEN=9,2,0,,"10101"',
                    'AT%KEYGEN=9,2,0,,"100000001"', 'AT%KEYGEN=9,2,0,,"10101000x"',
                    "AT%KEYGEN=9,2,0,,101010000", 'AT%KEYGEN="9",2,0'):
            assert command(port, bad) == ["ERROR"], bad
        assert command(port, "AT%KEYGEN=2147483648,2,0") == ["+CME ERROR: 514"]
        assert command(port, "AT%KEYGEN=4294967295,8") == ["+CME ERROR: 514"]
        assert command(port, "AT%CMNG=1,9") == ["OK"]  # none of that stored anything

        first = command(port, "AT%KEYGEN=9,2,0")
        listed = command(port, "AT%CMNG=1,9,2")
        assert command(port, "AT%KEYGEN=9,2,1") == ["+CME ERROR: 519"]
        assert command(port, "AT%KEYGEN=9,2,0") == ["+CME ERROR: 519"]
        assert command(port, "AT%CMNG=1,9,2") == listed  # nothing changed
        assert first[-1] == "OK"

        endorse = parse_keygen(command(port, "AT%KEYGEN=40,8")[0])
        again = parse_keygen(command(port, "AT%KEYGEN=40,8,1")[0])
        assert again.public_key_pem == endorse.public_key_pem
        assert again.payload.nonce != endorse.payload.nonce

        assert command(port, "AT+CFUN=21") == ["OK"]
        assert command(port, "AT%KEYGEN=41,2,0") == ["+CME ERROR: 518"]
        assert command(port, "AT%KEYGEN=40,8") == ["+CME ERROR: 518"]
        assert command(port, "AT+CFUN=4") == ["OK"]
    assert {(c["sec_tag"], c["type"]) for c in sim.modem_state(4)["credentials"]} == {
        (9, 2), (40, 8)}


def test_cmng_write_list_read_delete(sim: SimProcess) -> None:
    ca = certificate_pem()
    client = certificate_pem("client")
    with open_port(sim.ports[5]) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]
        assert command(port, f'AT%CMNG=0,100,0,"{ca}"') == ["OK"]
        assert command(port, f'AT%CMNG=0,100,1,"{client}"') == ["OK"]
        assert command(port, 'AT%CMNG=0,100,3,"0011AABB"') == ["OK"]
        assert command(port, 'AT%CMNG=0,100,4,"identity"') == ["OK"]
        crlf = ca.replace("\n", "\r\n")
        assert command(port, f'AT%CMNG=0,101,0,"{crlf}"') == ["OK"]  # mfw 1.3.5 stores it
        assert command(port, "AT%KEYGEN=99,2,0")[-1] == "OK"

        listing = command(port, "AT%CMNG=1")
        assert listing[-1] == "OK"
        entries = parse_cmng_list(listing[:-1])
        pairs = [(e.sec_tag, e.type) for e in entries]
        assert pairs == sorted(pairs)
        assert pairs[:6] == [(99, 2), (100, 0), (100, 1), (100, 3), (100, 4), (101, 0)]
        reserved = [p for p in pairs if p[0] >= 4294967292]
        assert len(reserved) >= 2 and {10, 11} <= {t for _, t in reserved}
        sha = {(e.sec_tag, e.type): e.sha256 for e in entries}
        assert sha[(100, 0)] == hashlib.sha256(ca.encode()).hexdigest().upper()
        assert sha[(101, 0)] == hashlib.sha256(crlf.encode()).hexdigest().upper()
        assert sha[(100, 3)] == hashlib.sha256(b"0011AABB").hexdigest().upper()
        assert all(e.sha256 is not None for e in entries)

        assert command(port, "AT%CMNG=1,100") == [
            f'%CMNG: 100,{t},"{sha[(100, t)]}"' for t in (0, 1, 3, 4)] + ["OK"]
        assert command(port, "AT%CMNG=1,100,1") == [f'%CMNG: 100,1,"{sha[(100, 1)]}"', "OK"]
        assert command(port, "AT%CMNG=1,100,7") == ["OK"]
        assert command(port, "AT%CMNG=1,99") == command(port, "AT%CMNG=1,99")  # stable SHA

        read = command(port, "AT%CMNG=2,100,0")
        entry, content = parse_cmng_read(read[:-1])
        assert read[-1] == "OK" and content == ca and entry.sha256 == sha[(100, 0)]
        assert parse_cmng_read(command(port, "AT%CMNG=2,100,1")[:-1])[1] == client
        assert command(port, "AT%CMNG=2,99,2") == ["+CME ERROR: 514"]
        assert command(port, "AT%CMNG=2,100,3") == ["+CME ERROR: 514"]
        assert command(port, "AT%CMNG=2,102,0") == ["+CME ERROR: 513"]
        assert command(port, "AT%CMNG=2,4294967292,10") == ["+CME ERROR: 514"]

        assert command(port, 'AT%CMNG=0,2147483648,0,"x"') == ["+CME ERROR: 514"]
        assert command(port, 'AT%CMNG=0,5,8,"x"') == ["+CME ERROR: 514"]
        assert command(port, 'AT%CMNG=0,5,6,"x"') == ["+CME ERROR: 514"]
        assert command(port, 'AT%CMNG=0,5,12,"x"') == ["ERROR"]
        assert command(port, "AT%CMNG=0,5,0") == ["ERROR"]
        assert command(port, "AT%CMNG=4,5,0") == ["ERROR"]
        assert command(port, "AT%CMNG=3,4294967292,10") == ["+CME ERROR: 514"]

        assert command(port, "AT+CFUN=1") == ["OK"]
        assert command(port, 'AT%CMNG=0,100,3,"00"') == ["+CME ERROR: 518"]
        assert command(port, "AT%CMNG=3,100,3") == ["+CME ERROR: 518"]
        assert command(port, "AT%CMNG=1,100,3")[-1] == "OK"  # list works while active
        assert command(port, "AT%CMNG=2,100,0")[-1] == "OK"  # read too
        assert command(port, "AT+CFUN=4") == ["OK"]

        assert command(port, 'AT%CMNG=0,100,3,"CAFE"') == ["OK"]  # overwrite
        new_sha = hashlib.sha256(b"CAFE").hexdigest().upper()
        assert command(port, "AT%CMNG=1,100,3") == [f'%CMNG: 100,3,"{new_sha}"', "OK"]
        assert command(port, "AT%CMNG=3,100,3") == ["OK"]
        assert command(port, "AT%CMNG=3,100,3") == ["+CME ERROR: 513"]
        assert command(port, "AT%CMNG=1,100,3") == ["OK"]
        assert command(port, "AT%CMNG=3,99,2") == ["OK"]  # a generated key can be deleted
        assert command(port, "AT%KEYGEN=99,2,1")[-1] == "OK"  # and made again
    stored = {(c["sec_tag"], c["type"]): c for c in sim.modem_state(5)["credentials"]}
    assert stored[(100, 0)]["content"] == ca
    assert stored[(101, 0)]["content"] == crlf


def test_crlf_credential_refused_on_mfw_2(sim9151: SimProcess) -> None:
    ca = certificate_pem()
    with open_port(sim9151.ports[1]) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]
        crlf = ca.replace("\n", "\r\n")
        assert command(port, f'AT%CMNG=0,7,0,"{crlf}"') == ["+CME ERROR: 527"]
        assert command(port, f'AT%CMNG=0,7,0,"{ca}"') == ["OK"]


def test_store_full(tmp_path: Path) -> None:
    with run_sim(tmp_path, 1, "--capacity", "2") as sim, open_port(sim.ports[0]) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]
        assert command(port, "AT%KEYGEN=1,2,0")[-1] == "OK"
        assert command(port, "AT%KEYGEN=2,8")[-1] == "OK"
        assert command(port, "AT%KEYGEN=3,2,0") == ["+CME ERROR: 515"]
        assert command(port, "AT%KEYGEN=3,8") == ["+CME ERROR: 515"]
        assert command(port, 'AT%CMNG=0,3,3,"00"') == ["+CME ERROR: 515"]
        assert command(port, "AT%KEYGEN=2,8")[-1] == "OK"  # the existing key still answers
        assert command(port, "AT%KEYGEN=1,2,0") == ["+CME ERROR: 519"]
        assert command(port, "AT%CMNG=3,1,2") == ["OK"]
        assert command(port, 'AT%CMNG=0,3,3,"00"') == ["OK"]
        assert len(sim.modem_state(0)["credentials"]) == 2


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
    (["--fault", "disconnect:1.5"], "between 0 and 1"),
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
