"""%KEYGEN answer parsing and checking, %CMNG and %ATTESTTOKEN, against the real vector and
answers built the way the modem builds them."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from fleet.credentials import (
    Expectation,
    add_sigalg_null,
    attributes_subject,
    b64url_encode,
    build_csr,
    build_keygen_answer,
    check_keygen,
    decode_sec_tag,
    default_subject,
    encode_sec_tag,
    parse_attest_token,
    parse_cmng_list,
    parse_cmng_list_line,
    parse_cmng_read,
    parse_keygen,
    public_key_der,
    sign_cose_sign1,
    strip_sigalg_null,
    verify_keygen,
)
from fleet.errors import CredentialError
from fleet.pemtext import pem_der, pem_text

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "keygen-csr-seed.json"


def _vector() -> dict[str, object]:
    result: dict[str, object] = json.loads((DATA / "keygen-csr-seed.json").read_text())
    return result


def test_vector_copy_matches_shared() -> None:
    """tests/data holds a copy of ../shared/vectors/keygen-csr-seed.json (a clone must not depend
    on a file outside it); when the shared file is beside the checkout they must agree."""
    if not SHARED.is_file():
        pytest.skip("../shared is not beside this checkout")
    assert _vector() == json.loads(SHARED.read_text())


def test_vector_fields_reproduced() -> None:
    vector = _vector()
    expected = vector["expected"]
    assert isinstance(expected, dict)
    answer = parse_keygen(str(vector["response_line"]))
    assert answer.kind == "csr"
    assert answer.body_sha256.hex() == expected["csr_der_sha256"]
    assert answer.subject == expected["csr_subject"]
    doc = answer.to_dict()
    assert doc["public_key"]["uncompressed_hex"] == expected["csr_public_key_uncompressed_hex"]
    assert doc["csr"]["key_usage_der_hex"] == expected["csr_key_usage_der_hex"]
    assert doc["csr"]["key_usage_bits"] == expected["csr_key_usage_bits"]
    assert doc["csr"]["signature_algorithm_null_parameter"] is True
    assert answer.csr_signature_valid() is expected["csr_self_signature_valid"]
    assert doc["cose"]["tag"] == expected["cose_tag"]
    assert doc["cose"]["protected_header"] == expected["cose_protected_header"]
    assert doc["cose"]["unprotected_header"] == {"4": "21"}
    assert doc["cose"]["payload"] == expected["cose_payload"]
    assert doc["cose"]["signature_len"] == expected["cose_signature_len"]
    assert all(check.ok for check in check_keygen(answer))


def test_vector_bare_value_and_quoted_value_and_wrapped() -> None:
    vector = _vector()
    value = str(vector["keygen_value"])
    for text in (value, f'"{value}"', f'%KEYGEN: "{value}"',
                 "\n".join(value[i : i + 80] for i in range(0, len(value), 80))):
        assert parse_keygen(text).payload.sec_tag == 11


def test_vector_expectations() -> None:
    answer = parse_keygen(str(_vector()["keygen_value"]))
    good = Expectation(sec_tag=11, payload_id=9, key_usage="101010000",
                       subject=attributes_subject("O=Nordic Semiconductor,L=Trondheim,C=no"),
                       device_uuid=uuid.UUID("50503041-3633-43b0-80c3-011a3496dac0"))
    verify_keygen(answer, good)
    with pytest.raises(CredentialError) as info:
        verify_keygen(answer, Expectation(sec_tag=12, key_usage="111010000"))
    assert any(f.startswith("sec_tag") for f in info.value.failures)
    assert any(f.startswith("key_usage") for f in info.value.failures)


def _flip(value: str, index: int) -> str:
    char = value[index]
    return value[:index] + ("B" if char != "B" else "C") + value[index + 1 :]


@pytest.mark.parametrize("index", [30, 100, 200, 330])
def test_vector_one_changed_character_in_csr_fails(index: int) -> None:
    value = str(_vector()["keygen_value"])
    bad = _flip(value, index)
    try:
        answer = parse_keygen(bad)
    except CredentialError:
        return  # undecodable: also a failure, with a reason
    failed = [c.name for c in check_keygen(answer) if not c.ok]
    assert "digest" in failed


def test_digest_mismatch_named() -> None:
    value = str(_vector()["keygen_value"])
    body, cose = value.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 1  # last byte of the CSR signature: still decodes, digest and signature fail
    answer = parse_keygen(b64url_encode(bytes(raw)) + "." + cose)
    failed = {c.name for c in check_keygen(answer) if not c.ok}
    assert failed == {"digest", "csr_signature"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "two base64url parts"),
        ("abc", "two base64url parts"),
        ("a.b.c", "two base64url parts"),
        ("MIIB.0oRD=", "base64url character"),
        ("MIIB+.0oRD", "base64url character"),
        ("MIIBH.0oRD", "impossible"),
        ("AAAA.AAAA", "COSE"),
    ],
)
def test_undecodable_answers_say_why(text: str, reason: str) -> None:
    with pytest.raises(CredentialError, match=reason):
        parse_keygen(text)


@given(st.text(max_size=300))
def test_parse_never_raises_foreign_errors(text: str) -> None:
    with contextlib.suppress(CredentialError):
        parse_keygen(text)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_parse_binary_parts_never_raise_foreign_errors(body: bytes, cose: bytes) -> None:
    with contextlib.suppress(CredentialError):
        parse_keygen(b64url_encode(body) + "." + b64url_encode(cose))


# --- answers built the way the modem builds them -------------------------------------------------

IDENTITY = ec.generate_private_key(ec.SECP256R1())
DEVICE = uuid.UUID("11112222-3333-4444-8555-666677778888")


def _answer(sec_tag: int, *, csr: bool = True, attributes: str | None = None,
            key_usage: str | None = None, identity: ec.EllipticCurvePrivateKey = IDENTITY) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    body = (build_csr(key, device_uuid=DEVICE, attributes=attributes, key_usage=key_usage)
            if csr else public_key_der(key))
    return build_keygen_answer(body, payload_id=9 if csr else 8, device_uuid=DEVICE,
                               sec_tag=sec_tag, identity_key=identity, nonce=os.urandom(16))


def test_built_csr_answer_verifies_with_identity_key() -> None:
    answer = parse_keygen(_answer(16842753, attributes="CN=352656100367872,O=Acme,C=NO",
                                  key_usage="101010000"))
    assert answer.csr_null_parameter
    verify_keygen(
        answer,
        Expectation(sec_tag=16842753, payload_id=9, device_uuid=DEVICE, key_usage="101010000",
                    subject=attributes_subject("CN=352656100367872,O=Acme,C=NO")),
        identity_key=IDENTITY.public_key(),
    )
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    failed = {c.name for c in check_keygen(answer, identity_key=other) if not c.ok}
    assert failed == {"cose_signature"}


def test_built_defaults_are_cn_uuid_and_111010000() -> None:
    answer = parse_keygen(_answer(5))
    assert answer.subject_pairs == default_subject(DEVICE)
    assert answer.key_usage == "111010000"


def test_public_key_answer() -> None:
    answer = parse_keygen(_answer(33, csr=False))
    assert answer.kind == "public_key"
    assert len(answer.body) == 91
    assert answer.payload.payload_id == 8
    verify_keygen(answer, Expectation(sec_tag=33, payload_id=8), IDENTITY.public_key())
    assert answer.public_key_pem is not None
    assert answer.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("tag", [0, 1, 11, 23, 24, 255, 65535, 16842753, 2**31 - 1, 2**31,
                                 2**31 + 7, 2**32 - 1])
def test_sec_tag_encoding_round_trip(tag: int) -> None:
    assert decode_sec_tag(encode_sec_tag(tag)) == tag
    assert parse_keygen(_answer(tag)).payload.sec_tag == tag


def test_negative_cbor_sec_tags_wrap_like_int32() -> None:
    assert encode_sec_tag(2**31) == cbor2.dumps(-(2**31))
    assert decode_sec_tag(cbor2.dumps(-1)) == 0xFFFFFFFF
    assert decode_sec_tag(cbor2.dumps(-(2**31))) == 2**31
    assert decode_sec_tag(bytes.fromhex("1a01010001")) == 16842753
    with pytest.raises(CredentialError):
        decode_sec_tag(cbor2.dumps("11"))
    with pytest.raises(CredentialError):
        decode_sec_tag(b"\x0b\x00")  # trailing bytes
    with pytest.raises(CredentialError):
        decode_sec_tag(cbor2.dumps(-(2**31) - 1))


def test_payload_id_must_match_body() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    value = build_keygen_answer(public_key_der(key), payload_id=9, device_uuid=DEVICE, sec_tag=1,
                                identity_key=IDENTITY, nonce=os.urandom(16))
    with pytest.raises(CredentialError, match="CSR"):
        parse_keygen(value)
    with pytest.raises(CredentialError, match="payload id"):
        parse_keygen(build_keygen_answer(public_key_der(key), payload_id=3, device_uuid=DEVICE,
                                         sec_tag=1, identity_key=IDENTITY, nonce=os.urandom(16)))


def test_payload_shape_errors() -> None:
    body = public_key_der(ec.generate_private_key(ec.SECP256R1()))
    bad_payload = cbor2.dumps([8, b"short", encode_sec_tag(1), b"\x00" * 32, b"\x00" * 16])
    value = b64url_encode(body) + "." + b64url_encode(sign_cose_sign1(bad_payload, IDENTITY))
    with pytest.raises(CredentialError, match="device UUID"):
        parse_keygen(value)
    not_cose = cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""]))
    with pytest.raises(CredentialError, match="tag 18"):
        parse_keygen(b64url_encode(body) + "." + b64url_encode(not_cose))


def test_null_parameter_der_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    plain = build_csr(key, device_uuid=DEVICE, null_parameter=False)
    quirky = add_sigalg_null(plain)
    assert quirky != plain
    assert strip_sigalg_null(quirky) == plain
    assert strip_sigalg_null(plain) is None
    assert add_sigalg_null(quirky) == quirky
    assert x509.load_der_x509_csr(plain).is_signature_valid



def test_vector_csr_pem_loads_with_cryptography_and_raw_pem_keeps_the_modem_bytes() -> None:
    answer = parse_keygen(str(_vector()["keygen_value"]))
    assert answer.csr_pem is not None and answer.raw_csr_pem is not None
    with pytest.raises(ValueError):
        x509.load_pem_x509_csr(answer.raw_csr_pem.encode())  # the NULL parameter
    csr = x509.load_pem_x509_csr(answer.csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.public_key() == answer.public_key
    assert answer.csr is not None
    assert csr.tbs_certrequest_bytes == answer.csr.tbs_certrequest_bytes
    assert answer.to_dict()["csr"]["pem"] == answer.csr_pem
    assert answer.to_dict()["csr"]["raw_pem"] == answer.raw_csr_pem
    raw = base64.b64decode("".join(answer.raw_csr_pem.splitlines()[1:-1]))
    assert raw == answer.body
    assert strip_sigalg_null(raw) == answer.csr_der


def test_csr_without_null_parameter_has_one_pem() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = build_csr(key, device_uuid=DEVICE, null_parameter=False)
    answer = parse_keygen(build_keygen_answer(body, payload_id=9, device_uuid=DEVICE, sec_tag=7,
                                              identity_key=key, nonce=os.urandom(16)))
    assert answer.csr_der == body
    assert answer.csr_pem == answer.raw_csr_pem
    assert answer.to_dict()["csr"]["pem"] == answer.to_dict()["csr"]["raw_pem"]


# --- %CMNG ------------------------------------------------------------------------------------

SHA = "A" * 64


def test_cmng_list_lines() -> None:
    entries = parse_cmng_list([
        f'%CMNG: 16842753,2,"{SHA.lower()}"',
        "%CMNG: 33,8",
        f'%CMNG: 4294967292,0,"{SHA}"',
    ])
    assert [(e.sec_tag, e.type, e.sha256) for e in entries] == [
        (16842753, 2, SHA), (33, 8, None), (4294967292, 0, SHA)
    ]


@pytest.mark.parametrize("line", ["%CMNG: 1", "%CMNG: a,2", '%CMNG: 1,2,"XYZ"', "+CFUN: 1",
                                  "%CMNG: 99999999999,2"])
def test_cmng_bad_lines(line: str) -> None:
    with pytest.raises(CredentialError):
        parse_cmng_list_line(line)


def test_cmng_read_multiline() -> None:
    lines = [f'%CMNG: 12,0,"{SHA}","-----BEGIN CERTIFICATE-----', "MIIB",
             '-----END CERTIFICATE-----"']
    entry, content = parse_cmng_read(lines)
    assert (entry.sec_tag, entry.type) == (12, 0)
    assert content == "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


# --- %ATTESTTOKEN -------------------------------------------------------------------------------

def test_attest_token() -> None:
    body = cbor2.dumps([1, DEVICE.bytes, 2, b"\x01" * 16, b"\x02" * 16])
    cose = sign_cose_sign1(b"\x00" * 32, IDENTITY)
    token = parse_attest_token(f'%ATTESTTOKEN: "{b64url_encode(body)}.{b64url_encode(cose)}"')
    assert token.device_uuid == DEVICE
    assert token.firmware_uuid == b"\x01" * 16
    with pytest.raises(CredentialError):
        parse_attest_token('%ATTESTTOKEN: "AAAA"')


@given(der=st.binary(min_size=1, max_size=300))
def test_pem_text_is_read_back_by_pem_der_and_only_under_its_label(der: bytes) -> None:
    text = pem_text("PUBLIC KEY", der)
    assert pem_der(text, "PUBLIC KEY") == der
    assert pem_der("\n  " + text + "\n", "PUBLIC KEY") == der
    assert pem_der(text, "CERTIFICATE REQUEST") is None
    assert all(len(line) <= 64 for line in text.splitlines())


def test_pem_text_is_the_pem_cryptography_writes_and_pem_der_refuses_what_is_not_pem() -> None:
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    written = key.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert pem_text("PUBLIC KEY", der) == written
    body = written.splitlines()[1]
    for text in (None, 42, "", written.replace(body, body[:-1] + "!"),
                 "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"):
        assert pem_der(text, "PUBLIC KEY") is None, text
