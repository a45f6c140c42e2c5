"""The manifest: build from run records, sign the canonical bytes, verify by recomputing, write
without overwriting."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fleet.credentials import b64url_encode, parse_keygen
from fleet.errors import ManifestError
from fleet.manifest import (
    FORMAT,
    NOT_TRUSTED_WARNING,
    VerifyReport,
    add_signature,
    build_signed,
    canonical_bytes,
    load_document,
    nesting_problem,
    sign,
    verify,
    verify_contents,
    verify_file,
    write_manifest,
)
from fleet.records import DeviceOutcome, KeyOutcome
from fleet.station_key import SigningKey, generate_signing_key, keyid, public_key_pem
from tests.manifest_fixtures import (
    ENDORSEMENT_TAG,
    TLS_TAG,
    device_record,
    key_record,
    run_record,
)

STATION = generate_signing_key()
OTHER = generate_signing_key()


def _document(run: Any = None, key: SigningKey = STATION) -> dict[str, Any]:
    signed = build_signed(run or run_record(), station_public_key_pem=public_key_pem(key))
    return sign(signed, key)


DOC = _document()


def _failed(report: VerifyReport) -> set[str]:
    return {check.name for check in report.failures}


def _reasons(report: VerifyReport) -> str:
    return "\n".join(check.line() for check in report.failures)


# --- build ---------------------------------------------------------------------------------------

def test_signed_has_every_field() -> None:
    signed = DOC["signed"]
    assert list(signed) == ["format", "tool", "station", "station_public_key", "plan", "run",
                            "summary", "devices"]
    assert signed["format"] == FORMAT == "fleet-manifest/1"
    assert signed["tool"] == {"name": "fleet", "version": "0.1.0"}
    assert signed["station"] == "line1-a"
    assert signed["station_public_key"] == public_key_pem(STATION)
    assert signed["plan"] == {"path": "plans/demo.yaml", "sha256": "ab" * 32}
    assert signed["run"] == {"id": "01J9Z8RUNID", "started_at": "2025-01-01T10:00:00Z",
                             "ended_at": "2025-01-01T10:02:03Z", "complete": True}
    assert signed["summary"]["devices"] == 2
    assert signed["summary"]["done"] == 2
    assert signed["summary"]["keys"]["generated"] == 4
    device = signed["devices"][0]
    assert list(device) == ["slot", "port", "imei", "device_uuid", "model", "firmware",
                            "interface", "terminator", "outcome", "error", "keys"]
    tls, endorsement = device["keys"]
    assert list(tls) == ["name", "sec_tag", "type", "response", "outcome", "keygen_answer",
                         "csr_pem", "public_key_pem", "cose_payload", "error", "attempts"]
    assert tls["sec_tag"] == TLS_TAG
    assert tls["outcome"] == "generated"
    assert tls["csr_pem"].startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert tls["cose_payload"]["digest_hex"]
    assert endorsement["csr_pem"] is None
    assert endorsement["cose_payload"]["sec_tag"] == ENDORSEMENT_TAG


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_no_floats_and_json_round_trip() -> None:
    assert not any(isinstance(v, float) for v in _walk(DOC))
    assert json.loads(json.dumps(DOC)) == DOC


def test_devices_sorted_by_slot_then_imei() -> None:
    devices = (device_record(3, slot="slot10"), device_record(1, slot="slot2"),
               device_record(5, slot="slot2"), device_record(4, slot="slot1"))
    signed = build_signed(run_record(devices), station_public_key_pem=public_key_pem(STATION))
    order = [(d["slot"], d["imei"]) for d in signed["devices"]]
    assert [slot for slot, _ in order] == ["slot1", "slot2", "slot2", "slot10"]
    assert order[1][1] < order[2][1]


def test_extra_fields_merged_and_cannot_replace_standard_ones() -> None:
    device = device_record(1)
    tls = replace(device.keys[0], extra={"certificate_pem": "-----BEGIN CERTIFICATE-----\n"})
    signed = build_signed(run_record((replace(device, keys=(tls,)),)),
                          station_public_key_pem=public_key_pem(STATION))
    assert signed["devices"][0]["keys"][0]["certificate_pem"].startswith("-----BEGIN")
    assert verify(sign(signed, STATION), trusted=[STATION.public_key()]).ok
    bad = replace(device.keys[0], extra={"sec_tag": 5})
    with pytest.raises(ManifestError, match="would replace a standard field"):
        build_signed(run_record((replace(device, keys=(bad,)),)),
                     station_public_key_pem=public_key_pem(STATION))


def test_floats_refused_when_building() -> None:
    device = device_record(1)
    bad = replace(device.keys[0], extra={"duration_s": 1.5})
    with pytest.raises(ManifestError, match="floating-point"):
        build_signed(run_record((replace(device, keys=(bad,)),)),
                     station_public_key_pem=public_key_pem(STATION))


def test_times_must_be_utc() -> None:
    signed = build_signed(run_record(started_at="2025-01-01T10:00:00+00:00"),
                          station_public_key_pem=public_key_pem(STATION))
    assert signed["run"]["started_at"] == "2025-01-01T10:00:00Z"
    with pytest.raises(ManifestError, match="not in UTC"):
        build_signed(run_record(started_at="2025-01-01T10:00:00+02:00"),
                     station_public_key_pem=public_key_pem(STATION))


def test_derived_fields_filled_from_the_answer() -> None:
    device = device_record(1)
    bare = replace(device.keys[0], csr_pem=None, public_key_pem=None, cose_payload=None)
    signed = build_signed(run_record((replace(device, keys=(bare,)),)),
                          station_public_key_pem=public_key_pem(STATION))
    key = signed["devices"][0]["keys"][0]
    assert key["csr_pem"] == device.keys[0].csr_pem
    assert key["cose_payload"] == device.keys[0].cose_payload


# --- sign ----------------------------------------------------------------------------------------

def test_signature_is_over_rfc8785_bytes_of_signed() -> None:
    (entry,) = DOC["signatures"]
    assert entry["keyid"] == keyid(STATION)
    assert entry["alg"] == "ES256"
    der = base64.b64decode(entry["sig"], validate=True)
    decode_dss_signature(der)  # DER Ecdsa-Sig-Value
    data = rfc8785.dumps(DOC["signed"])
    assert data == canonical_bytes(DOC["signed"])
    public = STATION.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))


def test_sign_refuses_a_key_other_than_the_embedded_one() -> None:
    with pytest.raises(ManifestError, match="not the signing key"):
        sign(DOC["signed"], OTHER)


# --- verify --------------------------------------------------------------------------------------

def test_round_trip_es256() -> None:
    report = verify(json.dumps(DOC, indent=2).encode(), trusted=[STATION.public_key()])
    assert report.ok, _reasons(report)
    assert report.warnings == ()
    assert report.complete is True
    assert report.signers == report.trusted_signers == (keyid(STATION),)
    assert report.devices == 2
    assert report.answers == 4
    names = {check.name for check in report.checks}
    assert {"shape", "signature", "station_key", "trust", "digest", "csr_signature", "sec_tag",
            "payload_id", "device_uuid", "csr_pem", "public_key_pem", "cose_payload",
            "summary"} <= names


def test_verify_file_gives_the_report_of_verify_and_the_document_it_parsed() -> None:
    data = json.dumps(DOC, indent=2).encode()
    report, document = verify_file(data, trusted=[STATION.public_key()])
    assert report == verify(data, trusted=[STATION.public_key()])
    assert report.ok, _reasons(report)
    assert document == DOC


@pytest.mark.parametrize("data", [b"{", b"[1]", b"\xff", b'{"a": ' * 70 + b"1" + b"}" * 70])
def test_verify_file_of_what_is_no_manifest_gives_no_document(data: bytes) -> None:
    report, document = verify_file(data, trusted=None)
    assert document is None
    assert _failed(report) == {"json"}
    assert report == verify(data, trusted=None)


def test_round_trip_ed25519() -> None:
    key = generate_signing_key(ed25519_key=True)
    doc = _document(key=key)
    assert doc["signatures"][0]["alg"] == "Ed25519"
    assert len(base64.b64decode(doc["signatures"][0]["sig"])) == 64
    public = key.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    report = verify(doc, trusted=[public])
    assert report.ok, _reasons(report)


def test_without_trusted_keys_passes_with_a_warning() -> None:
    report = verify(DOC, trusted=None)
    assert report.ok
    assert report.warnings == (NOT_TRUSTED_WARNING,)
    assert "not checked against a trusted key" in NOT_TRUSTED_WARNING


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("A" if value[-1:] != "A" else "B")
    return "x"  # None


LEAVES = list(_leaves(DOC["signed"]))


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: ".".join(map(str, p)))
def test_changing_any_single_value_in_signed_fails(path: tuple[Any, ...]) -> None:
    doc = copy.deepcopy(DOC)
    parent = doc["signed"]
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = _changed(parent[path[-1]])
    for trusted in ([STATION.public_key()], None):
        report = verify(json.dumps(doc).encode(), trusted=trusted)
        assert not report.ok
        assert "signature" in _failed(report) or "shape" in _failed(report), _reasons(report)


def test_every_leaf_is_covered() -> None:
    assert len(LEAVES) > 60  # 2 devices x 2 keys x ~15 fields, and the header


def test_removing_or_adding_a_field_fails() -> None:
    doc = copy.deepcopy(DOC)
    del doc["signed"]["devices"][1]["keys"][0]["error"]
    assert "signature" in _failed(verify(doc, trusted=[STATION.public_key()]))
    doc = copy.deepcopy(DOC)
    doc["signed"]["devices"][0]["note"] = "hi"
    assert "signature" in _failed(verify(doc, trusted=[STATION.public_key()]))
    doc = copy.deepcopy(DOC)
    doc["signed"]["devices"].reverse()
    assert "signature" in _failed(verify(doc, trusted=[STATION.public_key()]))


def test_another_key_fails() -> None:
    doc = _document(key=OTHER)  # a forger embeds his own key and signs: consistent, untrusted
    report = verify(doc, trusted=[STATION.public_key()])
    assert _failed(report) == {"trust"}
    assert "not signed by any trusted key" in _reasons(report)


def test_signature_by_another_key_than_the_embedded_one_fails() -> None:
    signed = DOC["signed"]
    doc = {"signed": signed, "signatures": [add_signature(DOC, OTHER)["signatures"][1]]}
    report = verify(doc, trusted=None)
    assert "station_key" in _failed(report)
    assert any("neither the embedded station key nor a trusted key" in w
               for w in report.warnings)
    report = verify(doc, trusted=[OTHER.public_key()])
    assert _failed(report) == {"station_key"}


def test_keyid_that_does_not_name_the_signer_fails() -> None:
    doc = copy.deepcopy(DOC)
    doc["signatures"][0]["keyid"] = keyid(OTHER)
    report = verify(doc, trusted=[OTHER.public_key()])
    assert "keyid" in _failed(report)
    assert f"key {keyid(STATION)} did" in _reasons(report)


def test_two_signatures_one_trusted() -> None:
    auditor = generate_signing_key(ed25519_key=True)
    doc = add_signature(DOC, auditor)
    assert [s["alg"] for s in doc["signatures"]] == ["ES256", "Ed25519"]
    report = verify(doc, trusted=[auditor.public_key()])
    assert report.ok, _reasons(report)
    assert report.trusted_signers == (keyid(auditor),)
    assert set(report.signers) == {keyid(STATION), keyid(auditor)}
    report = verify(doc, trusted=[STATION.public_key()])  # the auditor's key is unknown: noted
    assert report.ok, _reasons(report)
    assert any("not checked" in w for w in report.warnings)
    assert not verify(doc, trusted=[OTHER.public_key()]).ok
    with pytest.raises(ManifestError, match="already signed"):
        add_signature(doc, auditor)


def test_one_bad_signature_among_two_fails() -> None:
    auditor = generate_signing_key()
    doc = add_signature(DOC, auditor)
    raw = bytearray(base64.b64decode(doc["signatures"][1]["sig"]))
    raw[-1] ^= 1
    doc["signatures"][1]["sig"] = base64.b64encode(bytes(raw)).decode()
    report = verify(doc, trusted=[auditor.public_key(), STATION.public_key()])
    assert _failed(report) == {"signature"}
    assert "signature 2" in _reasons(report)


def _altered_answer_run(**key_changes: Any) -> Any:
    device = device_record(1)
    return run_record((replace(device, keys=(replace(device.keys[0], **key_changes),
                                             device.keys[1])),))


def test_altered_answer_signed_validly_fails_the_answer_recheck() -> None:
    device = device_record(1)
    answer = device.keys[0].keygen_answer
    assert answer is not None
    body, cose = answer.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 1  # inside the CSR's signature: still decodes
    tampered = b64url_encode(bytes(raw)) + "." + cose
    doc = _document(_altered_answer_run(keygen_answer=tampered))
    report = verify(doc, trusted=[STATION.public_key()])
    failed = _failed(report)
    assert {"digest", "csr_signature", "csr_pem"} <= failed
    assert "signature" not in failed and "trust" not in failed
    assert f"device {device.imei} key tls: digest:" in _reasons(report)


def test_answer_of_another_sec_tag_or_device_fails() -> None:
    report = verify(_document(_altered_answer_run(sec_tag=17)), trusted=None)
    assert _failed(report) == {"sec_tag"}
    assert "the answer is for sec_tag 16842753, the key says 17" in _reasons(report)
    other_uuid = uuid.UUID(int=99)
    stranger = key_record("tls", other_uuid, imei_="352656100360018")
    report = verify(_document(_altered_answer_run(**{
        f: getattr(stranger, f) for f in ("keygen_answer", "csr_pem", "public_key_pem",
                                          "cose_payload")})), trusted=None)
    assert _failed(report) == {"device_uuid"}
    assert "different device UUIDs" in _reasons(report)


def test_response_and_derived_fields_must_match_the_answer() -> None:
    report = verify(_document(_altered_answer_run(response="public_key")), trusted=None)
    assert "payload_id" in _failed(report)
    report = verify(_document(_altered_answer_run(csr_pem="-----BEGIN CERTIFICATE REQUEST-----")),
                    trusted=None)
    assert _failed(report) == {"csr_pem"}



def _csr_pem_run(pem: Any) -> Any:
    """A run whose first device's tls key records ``pem(answer)`` as its csr_pem."""
    device = device_record(1)
    tls = device.keys[0]
    assert tls.keygen_answer is not None
    pem_text = pem(parse_keygen(tls.keygen_answer))
    return run_record((replace(device, keys=(replace(tls, csr_pem=pem_text), device.keys[1])),))


def test_csr_pem_is_the_loadable_csr_and_the_modem_bytes_also_verify() -> None:
    key = DOC["signed"]["devices"][0]["keys"][0]
    answer = parse_keygen(key["keygen_answer"])
    assert answer.csr_null_parameter
    assert key["csr_pem"] == answer.csr_pem != answer.raw_csr_pem
    csr = x509.load_pem_x509_csr(key["csr_pem"].encode())
    assert csr.is_signature_valid and csr.public_key() == answer.public_key
    raw = _document(_csr_pem_run(lambda a: a.raw_csr_pem))
    assert verify(raw, trusted=[STATION.public_key()]).ok


def test_csr_pem_of_another_body_or_reformatted_fails() -> None:
    other = parse_keygen(DOC["signed"]["devices"][1]["keys"][0]["keygen_answer"])

    def unwrapped(answer: Any) -> str:
        body = "".join(answer.csr_pem.splitlines()[1:-1])
        return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"

    for pem in (lambda a: other.csr_pem, lambda a: other.raw_csr_pem,
                lambda a: a.csr_pem.replace("\n", "\r\n"), unwrapped):
        report = verify(_document(_csr_pem_run(pem)), trusted=None)
        assert _failed(report) == {"csr_pem"}, _reasons(report)

def test_answer_outcome_without_an_answer_fails() -> None:
    report = verify(_document(_altered_answer_run(keygen_answer=None)), trusted=None)
    assert _failed(report) == {"answer"}
    assert "outcome 'generated' but no keygen_answer" in _reasons(report)
    ok = _altered_answer_run(keygen_answer=None, csr_pem=None, public_key_pem=None,
                             cose_payload=None, outcome=KeyOutcome.PRE_EXISTING)
    assert verify(_document(ok), trusted=None).ok


def test_undecodable_answer_fails() -> None:
    report = verify(_document(_altered_answer_run(keygen_answer="AAAA.AAAA")), trusted=None)
    assert "answer" in _failed(report)
    assert "does not decode" in _reasons(report)


def test_answer_without_device_uuid_fails() -> None:
    device = device_record(1)
    doc = _document(run_record((replace(device, device_uuid=None),)))
    assert "device_uuid" in _failed(verify(doc, trusted=None))


def test_partial_manifest_verifies_and_says_so() -> None:
    device = device_record(1)
    stopped = replace(device_record(2), outcome=DeviceOutcome.INTERRUPTED, keys=(
        replace(device_record(2).keys[0], outcome=KeyOutcome.NOT_ATTEMPTED, keygen_answer=None,
                csr_pem=None, public_key_pem=None, cose_payload=None),))
    doc = _document(run_record((device, stopped), complete=False))
    assert doc["signed"]["run"]["complete"] is False
    assert doc["signed"]["summary"]["interrupted"] == 1
    report = verify(doc, trusted=[STATION.public_key()])
    assert report.ok, _reasons(report)
    assert report.complete is False


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"signed": {}, "signed": {}, "signatures": []}', "duplicate object key"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_unparsable_documents(text: bytes, reason: str) -> None:
    report = verify(text, trusted=None)
    assert not report.ok
    assert reason in _reasons(report)


def test_document_shape_failures_are_named() -> None:
    doc = copy.deepcopy(DOC)
    doc["comment"] = "unsigned"
    assert "unexpected top-level field" in _reasons(verify(doc, trusted=None))
    doc = copy.deepcopy(DOC)
    doc["signatures"] = []
    assert "the manifest is not signed" in _reasons(verify(doc, trusted=None))
    doc = copy.deepcopy(DOC)
    doc["signed"]["format"] = "fleet-manifest/2"
    assert "is not 'fleet-manifest/1'" in _reasons(verify(doc, trusted=None))
    doc = copy.deepcopy(DOC)
    doc["signed"]["devices"][0]["keys"][0]["sec_tag"] = 1.5
    reasons = _reasons(verify(doc, trusted=None))
    assert "sec_tag: expected integer, got number" in reasons
    assert "floating-point" in reasons
    doc = copy.deepcopy(DOC)
    doc["signatures"][0]["alg"] = "RS256"
    doc["signatures"][0]["sig"] = "!!"
    reasons = _reasons(verify(doc, trusted=None))
    assert "alg 'RS256' is not one of ES256, Ed25519" in reasons
    assert "not standard base64" in reasons


def test_the_line_a_device_was_reached_through_is_checked_when_it_is_there() -> None:
    signed = copy.deepcopy(DOC["signed"])
    signed["devices"][0]["interface"] = "telnet"
    signed["devices"][0]["terminator"] = "crcr"
    reasons = _reasons(verify(sign(signed, STATION), trusted=None))
    assert "interface: 'telnet' is not one of at, shell" in reasons
    assert "terminator: 'crcr' is not one of cr, lf, crlf, nul" in reasons
    for device in signed["devices"]:  # a manifest written before they were recorded
        del device["interface"], device["terminator"]
    assert verify(sign(signed, STATION), trusted=None).ok


def test_summary_must_match_devices() -> None:
    signed = copy.deepcopy(DOC["signed"])
    signed["summary"]["done"] = 1
    report = verify(sign(signed, STATION), trusted=None)
    assert _failed(report) == {"summary"}


def test_a_summary_without_the_counts_of_later_outcomes_verifies() -> None:
    """Manifests written before the not-started and interrupted outcomes have no count for
    them; none is zero. A count that is there must still be right."""
    signed = copy.deepcopy(DOC["signed"])
    del signed["summary"]["not-started"]
    del signed["summary"]["keys"]["interrupted"]
    assert verify(sign(signed, STATION), trusted=None).ok
    signed["summary"]["keys"]["interrupted"] = 1
    assert _failed(verify(sign(signed, STATION), trusted=None)) == {"summary"}

# --- write ---------------------------------------------------------------------------------------

def test_write_manifest_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "out" / "line1-a-2025-01-01.json"
    first = write_manifest(path, DOC)
    second_doc = _document(run_record(run_id="second"))
    second = write_manifest(path, second_doc)
    third = write_manifest(path, DOC)
    assert first == path
    assert second == path.with_name("line1-a-2025-01-01-2.json")
    assert third == path.with_name("line1-a-2025-01-01-3.json")
    assert json.loads(first.read_text()) == DOC
    assert json.loads(second.read_text()) == second_doc
    assert sorted(p.name for p in path.parent.iterdir()) == [  # no temp files left
        "line1-a-2025-01-01-2.json", "line1-a-2025-01-01-3.json", "line1-a-2025-01-01.json"]


def test_written_file_is_pretty_and_verifies(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.json", DOC)
    text = path.read_text()
    assert text.startswith('{\n  "signed": {\n')
    assert text.endswith("}\n")
    assert verify(path.read_bytes(), trusted=[STATION.public_key()]).ok


def test_write_refuses_a_non_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError):
        write_manifest(tmp_path / "m.json", {"signed": {}})
    assert list(tmp_path.iterdir()) == []


# --- robustness ----------------------------------------------------------------------------------

def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nodes(item, (*path, index))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(_nodes(DOC))[1:]), JSON)
def test_replacing_any_node_never_raises_and_always_fails(path: tuple[Any, ...],
                                                          value: Any) -> None:
    doc = copy.deepcopy(DOC)
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    assume(json.dumps(parent[path[-1]]) != json.dumps(value))
    parent[path[-1]] = value
    report = verify(doc, trusted=[STATION.public_key()])
    assert not report.ok


@given(JSON)
def test_any_json_document_is_reported_not_raised(value: Any) -> None:
    assert not verify(json.dumps(value).encode(), trusted=None).ok
    if isinstance(value, dict):
        assert not verify(value, trusted=[STATION.public_key()]).ok


def test_deeply_nested_document_is_reported() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert "nested too deeply" in _reasons(verify(deep.encode(), trusted=None))


@pytest.mark.parametrize("depth", [70, 600, 950, 100_000])
def test_nesting_beyond_the_limit_is_refused_by_depth_not_by_recursion(depth: int) -> None:
    text = '{"signed": {"x": ' + "[" * depth + "]" * depth + '}, "signatures": []}'
    with pytest.raises(ManifestError, match="nested too deeply: more than 64 levels"):
        load_document(text)
    report = verify(text.encode(), trusted=None)
    assert len(report.failures) == 1
    assert report.failures[0].line().startswith(
        "nested too deeply: more than 64 levels of objects and arrays")
    nested: Any = []
    for _ in range(depth):
        nested = [nested]
    assert "nested too deeply" in _reasons(verify({"signed": {"x": nested}, "signatures": []},
                                                  trusted=None))


def test_nesting_up_to_the_limit_is_read() -> None:
    text = '{"signed": {"x": ' + "[" * 62 + "]" * 62 + '}, "signatures": []}'
    assert nesting_problem(load_document(text)) is None
    assert "more than 63 levels" in (nesting_problem(load_document(text), limit=63) or "")


# --- contents (what `fleet run` checks before it signs) ------------------------------------------


def test_contents_of_a_good_record_pass_and_count_what_was_checked() -> None:
    report = verify_contents(DOC["signed"])
    assert report.ok, _reasons(report)
    assert (report.devices, report.answers) == (2, 4)
    assert not report.signers  # no signature is looked at


def test_contents_fail_where_verify_fails_for_what_signed_says() -> None:
    signed = copy.deepcopy(DOC["signed"])
    signed["devices"][0]["keys"][0]["sec_tag"] += 1  # not the sec_tag of its answer
    report = verify_contents(signed)
    assert _failed(report) == {"sec_tag"}, _reasons(report)
    resigned = verify(sign(signed, STATION), trusted=[STATION.public_key()])
    assert {c.line() for c in resigned.failures} == {c.line() for c in report.failures}


def test_contents_of_a_malformed_signed_fail_on_its_shape() -> None:
    signed = copy.deepcopy(DOC["signed"])
    del signed["devices"][0]["imei"]
    report = verify_contents(signed)
    assert not report.ok and "shape" in _failed(report), _reasons(report)
