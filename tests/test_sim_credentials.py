"""``fleet sim`` credentials end to end: every %KEYGEN form and error, %CMNG, the store capacity.

A real subprocess and real ptys, PLAIN pyserial on the host side; each test uses its own modem.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.credentials import (
    Expectation,
    attributes_subject,
    check_keygen,
    default_subject,
    parse_cmng_list,
    parse_cmng_read,
    parse_keygen,
)
from tests.simproc import SimProcess, command, open_port, run_sim

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("cred9160"), 4) as process:
        yield process


@pytest.fixture(scope="module")
def sim9151(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("cred9151"), 1, "--model", "nrf9151") as process:
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
    me = sim.modem_state(1)
    device_uuid = uuid.UUID(me["device_uuid"])
    identity = identity_key(sim, 1)
    pem_path = tmp_path / "identity.pem"
    pem_path.write_text(me["identity_public_key_pem"])
    answers = {}
    with open_port(sim.ports[1]) as port:
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
    stored = {(c["sec_tag"], c["type"]): c for c in sim.modem_state(1)["credentials"]}
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
    with open_port(sim.ports[2]) as port:
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
    assert {(c["sec_tag"], c["type"]) for c in sim.modem_state(2)["credentials"]} == {
        (9, 2), (40, 8)}


def test_cmng_write_list_read_delete(sim: SimProcess) -> None:
    ca = certificate_pem()
    client = certificate_pem("client")
    with open_port(sim.ports[3]) as port:
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
    stored = {(c["sec_tag"], c["type"]): c for c in sim.modem_state(3)["credentials"]}
    assert stored[(100, 0)]["content"] == ca
    assert stored[(101, 0)]["content"] == crlf


def test_crlf_credential_stored_on_mfw_2_too(sim9151: SimProcess) -> None:
    ca = certificate_pem()
    with open_port(sim9151.ports[0]) as port:
        assert command(port, "AT+CMEE=1") == ["OK"]
        crlf = ca.replace("\n", "\r\n")
        assert command(port, f'AT%CMNG=0,7,0,"{crlf}"') == ["OK"]
        sha = hashlib.sha256(crlf.encode()).hexdigest().upper()
        assert command(port, "AT%CMNG=1,7,0") == [f'%CMNG: 7,0,"{sha}"', "OK"]


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
