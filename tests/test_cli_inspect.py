"""`fleet inspect` end to end: the real console script on the real vector."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cli import main
from fleet.credentials import build_csr, build_keygen_answer

VECTOR = json.loads((Path(__file__).parent / "data" / "keygen-csr-seed.json").read_text())


def fleet(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_inspect_json_reproduces_every_expected_field() -> None:
    result = fleet("inspect", "--json", VECTOR["keygen_value"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    exp = VECTOR["expected"]
    assert doc["ok"] is True
    assert doc["body_sha256"] == exp["csr_der_sha256"]
    assert doc["csr"]["subject"] == exp["csr_subject"]
    assert doc["public_key"]["uncompressed_hex"] == exp["csr_public_key_uncompressed_hex"]
    assert doc["csr"]["key_usage_der_hex"] == exp["csr_key_usage_der_hex"]
    assert doc["csr"]["key_usage_bits"] == exp["csr_key_usage_bits"]
    assert doc["csr"]["self_signature_valid"] is exp["csr_self_signature_valid"]
    assert doc["cose"]["tag"] == exp["cose_tag"]
    assert doc["cose"]["protected_header"] == exp["cose_protected_header"]
    assert doc["cose"]["payload"] == exp["cose_payload"]
    assert doc["cose"]["signature_len"] == exp["cose_signature_len"]
    assert {c["name"]: c["ok"] for c in doc["checks"]}["digest"] is True



def test_inspect_json_gives_a_loadable_csr_pem_and_the_modem_bytes() -> None:
    doc = json.loads(fleet("inspect", "--json", VECTOR["keygen_value"]).stdout)
    csr = x509.load_pem_x509_csr(doc["csr"]["pem"].encode())
    assert csr.is_signature_valid
    point = csr.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    assert point.hex() == VECTOR["expected"]["csr_public_key_uncompressed_hex"]
    raw = base64.b64decode("".join(doc["csr"]["raw_pem"].splitlines()[1:-1]))
    assert hashlib.sha256(raw).hexdigest() == VECTOR["expected"]["csr_der_sha256"]


def test_inspect_reads_the_whole_line_from_stdin() -> None:
    result = fleet("inspect", "-", stdin=VECTOR["response_line"] + "\n")
    assert result.returncode == 0, result.stderr
    assert "O=Nordic Semiconductor,L=Trondheim,C=no" in result.stdout


def test_one_changed_character_in_csr_exits_nonzero_with_reason() -> None:
    value = VECTOR["keygen_value"]
    index = value.index("QDnFWQl") + 6  # inside the CSR's signature: still decodes
    bad = value[:index] + ("m" if value[index] != "m" else "n") + value[index + 1 :]
    result = fleet("inspect", "--json", bad)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert "digest" in doc["error"]
    human = fleet("inspect", bad)
    assert human.returncode == 1
    assert "[FAIL] digest" in human.stdout


def test_undecodable_exits_nonzero_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "not-an-answer"]) == 1
    assert "two base64url parts" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "reason"), [
    (".COSE", "the body is empty"),
    ("MIIB.", "the signature block is empty"),
    (".", "the body and the signature block are empty"),
    ("MIIB", "got no '.' between them"),
    ("a.b.c", "got 3 parts"),
])
def test_an_answer_not_in_two_parts_says_what_is_wrong(value: str, reason: str) -> None:
    result = fleet("inspect", value)
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL: expected '<body>.<signature block>' (two base64url "
                                    "parts)")
    assert result.stderr.rstrip("\n").endswith(reason)


def test_identity_key_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    identity = ec.generate_private_key(ec.SECP256R1())
    device = uuid.uuid4()
    value = build_keygen_answer(
        build_csr(ec.generate_private_key(ec.SECP256R1()), device_uuid=device),
        payload_id=9, device_uuid=device, sec_tag=7, identity_key=identity, nonce=os.urandom(16))
    pem = tmp_path / "identity.pem"
    pem.write_bytes(identity.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert main(["inspect", "--identity-key", str(pem), value]) == 0
    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert main(["inspect", "--identity-key", str(other), value]) == 1
    assert "[FAIL] cose_signature" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="cannot read identity key"):
        main(["inspect", "--identity-key", str(tmp_path / "missing.pem"), value])
