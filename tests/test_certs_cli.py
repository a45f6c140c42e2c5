"""`fleet ca init` and `fleet export nrfcloud` (on manifests built here, signed, verified)."""

from __future__ import annotations

import copy
import csv
import io
import json
import stat
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from fleet.certs import LocalCa, canonical_pem, summarize
from fleet.certs.nrfcloud import onboarding_rows, split_list, write_onboarding_csv
from fleet.credentials import parse_keygen
from fleet.errors import ExportError
from fleet.manifest import answer_fields, build_signed, sign, verify
from fleet.records import DeviceRecord
from fleet.station_key import generate_signing_key, public_key_pem
from tests.certhelpers import NOW, make_ca
from tests.manifest_fixtures import TLS_TAG, device_record, keygen_answer, run_record
from tests.runhelpers import fleet


def test_ca_init_creates_a_ca_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "dev-ca"
    result = fleet("ca", "init", target, "--cn", "Bench CA", "--days", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key_path, cert_path = target / "ca.key", target / "ca.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=Bench CA" and cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert constraints.critical and constraints.value == x509.BasicConstraints(ca=True,
                                                                                path_length=0)
    usage = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign  # type: ignore[attr-defined]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    assert "cert: dev-ca/ca.pem" in result.stdout and "chain: dev-ca/ca.pem" in result.stdout

    key_before = key_path.read_bytes()
    again = fleet("ca", "init", target)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert key_path.read_bytes() == key_before
    cert_path.unlink()  # even one file left is enough to refuse
    assert fleet("ca", "init", target).returncode == 2
    assert not cert_path.exists() and key_path.read_bytes() == key_before
    assert fleet("ca", "init", tmp_path / "x", "--days", "0").returncode == 2


# --- export -----------------------------------------------------------------------------------


def _certified(device: DeviceRecord, ca: LocalCa, *, outcome: str = "issued") -> DeviceRecord:
    keys = []
    for key in device.keys:
        if key.csr_pem is not None and key.keygen_answer is not None:
            csr = parse_keygen(key.keygen_answer).csr
            assert csr is not None
            info = summarize(ca.sign(csr, now=NOW))
            key = replace(key, extra={"certificate": {
                "outcome": outcome, "error": None, "pem": info.pem, "sha256": info.sha256,
                "cmng_sha256": info.sha256, "serial": info.serial, "issuer": info.issuer,
                "not_after": info.not_after}})
        keys.append(key)
    return replace(device, keys=tuple(keys))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    cert_path, key_path, cert, key = make_ca(tmp_path_factory.mktemp("ca"))
    return LocalCa(cert_path=cert_path, key_path=key_path, certificate=cert, private_key=key)


def _manifest(directory: Path, devices: tuple[DeviceRecord, ...], name: str = "m.json",
              ended_at: str = "2025-01-01T10:02:03Z") -> tuple[Path, Path]:
    key = generate_signing_key()
    document = sign(build_signed(run_record(devices, ended_at=ended_at),
                                 station_public_key_pem=public_key_pem(key)), key)
    path = directory / name
    path.write_text(json.dumps(document))
    pub = directory / f"{name}.pub.pem"
    pub.write_text(public_key_pem(key))
    return path, pub


def test_export_layout_is_nrfcloud_utils(tmp_path: Path, ca: LocalCa) -> None:
    devices = (_certified(device_record(1), ca), _certified(device_record(2), ca),
               device_record(3))  # device 3 has no certificate
    path, pub = _manifest(tmp_path, devices)
    result = fleet("export", "nrfcloud", path, "--pubkey", pub, "--subtype", "tracker",
                   "--tags", "a|b", "--fw-types", "APP;MODEM;BOOT")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "\r" not in text
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 2 and all(len(row) == 5 for row in rows)
    assert rows[0][0] != "device id"  # no header row: nRF Cloud takes every row as a device
    for row, device in zip(rows, devices, strict=False):
        certificate = next(k for k in device.keys if k.name == "tls").extra["certificate"]
        assert row == [device.imei, "tracker", "a|b", "APP|MODEM|BOOT", certificate["pem"]]
    # Exactly what nrfcloud-utils' csv.writer writes: QUOTE_MINIMAL, LF, PEM quoted.
    first_pem = rows[0][4]
    assert text.startswith(f'{rows[0][0]},tracker,a|b,APP|MODEM|BOOT,"{first_pem}"\n')
    assert f"device {devices[2].imei}: skipped: no certificate" in result.stderr

    by_uuid = fleet("export", "nrfcloud", path, "--pubkey", pub, "--device-id", "uuid")
    assert [r[0] for r in csv.reader(io.StringIO(by_uuid.stdout))] == [
        devices[0].device_uuid, devices[1].device_uuid]


@pytest.mark.forged_manifests("bad.json")
def test_export_refuses_a_manifest_that_does_not_verify(tmp_path: Path, ca: LocalCa) -> None:
    path, pub = _manifest(tmp_path, (_certified(device_record(1), ca),))
    document = json.loads(path.read_text())
    key = document["signed"]["devices"][0]["keys"][0]
    other = _certified(device_record(1), ca).keys[0].extra["certificate"]
    key["certificate"] = other  # a valid certificate, but for another key: signature broken
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    result = fleet("export", "nrfcloud", path, bad, "--pubkey", pub)
    assert result.returncode == 1 and result.stdout == ""
    assert "does NOT verify" in result.stderr and "bad.json does not verify" in result.stderr
    other_key = tmp_path / "other.pub.pem"
    other_key.write_text(public_key_pem(generate_signing_key()))
    untrusted = fleet("export", "nrfcloud", path, "--pubkey", other_key)
    assert untrusted.returncode == 1 and untrusted.stdout == ""
    assert fleet("export", "nrfcloud", tmp_path / "missing.json").returncode == 2
    assert fleet("export", "nrfcloud", path, "--fw-types", "APP|KERNEL").returncode == 2
    unchecked = fleet("export", "nrfcloud", path)
    assert unchecked.returncode == 0 and "WARNING" in unchecked.stderr


def test_export_of_a_key_no_manifest_has_is_a_usage_error(tmp_path: Path, ca: LocalCa) -> None:
    path, pub = _manifest(tmp_path, (_certified(device_record(1), ca),))
    assert fleet("export", "nrfcloud", path, "--pubkey", pub, "--key", "tls").returncode == 0
    names = sorted(k.name for k in device_record(1).keys)
    result = fleet("export", "nrfcloud", path, "--pubkey", pub, "--key", "nosuch")
    assert result.returncode == 2 and result.stdout == ""
    assert (f"fleet export nrfcloud: --key 'nosuch': no device in the manifest(s) has a key of "
            f"that name (their keys: {', '.join(names)}); nothing exported") in result.stderr


def test_verify_checks_the_certificate(ca: LocalCa) -> None:
    device = _certified(device_record(1), ca)
    key = generate_signing_key()

    def report(mutate: Any) -> list[str]:
        tls = device.keys[0]
        changed = replace(tls, extra=mutate(dict(tls.extra["certificate"])))
        run = run_record((replace(device, keys=(changed, *device.keys[1:])),))
        signed = build_signed(run, station_public_key_pem=public_key_pem(key))
        return [c.line() for c in verify(sign(signed, key), trusted=None).failures]

    assert report(lambda c: {"certificate": c}) == []
    other = _certified(device_record(1), ca).keys[0]
    tls = device.keys[0]
    swapped = replace(tls, public_key_pem=other.public_key_pem)  # not what the answer yields
    signed = build_signed(run_record((replace(device, keys=(swapped, *device.keys[1:])),)),
                          station_public_key_pem=public_key_pem(key))
    failures = [c.line() for c in verify(sign(signed, key), trusted=None).failures]
    assert any("public_key_pem: not what the keygen_answer yields" in f for f in failures)
    assert any("not the key's public_key_pem" in f for f in failures)
    other_pem = other.extra["certificate"]["pem"]
    assert any("not the key's" in f for f in report(
        lambda c: {"certificate": {**c, "pem": other_pem}}))
    assert any("not the SHA-256" in f for f in report(
        lambda c: {"certificate": {**c, "sha256": "0" * 64}}))
    assert any("no pem" in f for f in report(
        lambda c: {"certificate": {**c, "pem": None}}))
    assert any("serial" in f for f in report(
        lambda c: {"certificate": {**c, "serial": "1"}}))
    assert report(lambda c: {"certificate": {**c, "outcome": "failed", "pem": None}}) == []
    assert any("ca_chain" in f for f in report(
        lambda c: {"certificate": c, "ca_chain": {"outcome": "sideways"}}))


def test_onboarding_rows_rules(ca: LocalCa) -> None:
    one = _certified(device_record(1), ca)
    newer = _certified(device_record(1), ca)  # the same device, certified again later
    failed = _certified(device_record(2), ca, outcome="failed")

    def doc(devices: tuple[DeviceRecord, ...], ended: str) -> dict[str, Any]:
        key = generate_signing_key()
        return sign(build_signed(run_record(devices, ended_at=ended),
                                 station_public_key_pem=public_key_pem(key)), key)

    rows, warnings = onboarding_rows(
        [("new", doc((newer,), "2025-02-01T00:00:00Z")),
         ("old", doc((one, failed), "2025-01-01T00:00:00Z"))],
        device_id="nrf-imei", subtype="", tags="", firmware_types="APP|MODEM")
    assert [r.device_id for r in rows] == [f"nrf-{one.imei}"]
    assert rows[0].certificate_pem == newer.keys[0].extra["certificate"]["pem"]
    assert any("another certificate" in w for w in warnings)
    assert any(f"device {failed.imei}: skipped: no certificate (tls: failed)" in w
               for w in warnings)
    two = replace(one, keys=(one.keys[0], replace(one.keys[0], name="tls2")))
    rows, warnings = onboarding_rows([("m", doc((two,), "2025-01-01T00:00:00Z"))],
                                     device_id="cn", subtype="", tags="",
                                     firmware_types="")
    assert rows == [] and "choose one with --key" in warnings[0]
    rows, _ = onboarding_rows([("m", doc((two,), "2025-01-01T00:00:00Z"))], device_id="cn",
                              subtype="", tags="", firmware_types="", key_name="tls2")
    assert len(rows) == 1
    out = io.StringIO()
    write_onboarding_csv(rows, out)
    assert out.getvalue().count("\n") == canonical_pem(
        [x509.load_pem_x509_certificate(rows[0].certificate_pem.encode())]).count("\n") + 1
    assert split_list("a; b|c", "--tags") == "a|b|c" and split_list("", "--tags") == ""
    with pytest.raises(ValueError, match="not one of"):
        split_list("APP|FOO", "--fw-types", allowed=("APP",))
    with pytest.raises(ValueError, match="control"):
        split_list('a"b', "--tags")


def _with_cn(device: DeviceRecord, cn: str) -> DeviceRecord:
    """``device`` whose tls key was generated with the subject ``CN=<cn>``."""
    assert device.device_uuid is not None
    answer = keygen_answer(uuid.UUID(device.device_uuid), TLS_TAG, attributes=f"CN={cn}")
    tls = replace(device.keys[0], **answer_fields(parse_keygen(answer)))
    return replace(device, keys=(tls, *device.keys[1:]))


def test_export_refuses_devices_that_share_a_device_id(tmp_path: Path, ca: LocalCa) -> None:
    devices = tuple(_certified(_with_cn(device_record(n), "Acme"), ca) for n in range(1, 5))
    path, pub = _manifest(tmp_path, devices)
    result = fleet("export", "nrfcloud", path, "--pubkey", pub)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "device id 'Acme' (cn) would be shared by 4 different devices" in result.stderr
    for device in devices:
        assert f"{path}: device {device.imei}" in result.stderr
    assert "earlier manifest" not in result.stderr
    assert "nothing exported" in result.stderr and "Traceback" not in result.stderr
    # The IMEI makes the ids unique: the same manifests export one row per device.
    by_imei = fleet("export", "nrfcloud", path, "--pubkey", pub, "--device-id", "imei")
    assert by_imei.returncode == 0, by_imei.stderr
    assert len(list(csv.reader(io.StringIO(by_imei.stdout)))) == 4


def test_export_refuses_one_id_for_devices_of_two_manifests(tmp_path: Path, ca: LocalCa) -> None:
    first, pub1 = _manifest(tmp_path, (_certified(_with_cn(device_record(1), "Acme"), ca),),
                            name="a.json", ended_at="2025-01-01T10:00:00Z")
    second, pub2 = _manifest(tmp_path, (_certified(_with_cn(device_record(2), "Acme"), ca),),
                             name="b.json", ended_at="2025-02-01T10:00:00Z")
    result = fleet("export", "nrfcloud", first, second, "--pubkey", pub1, "--pubkey", pub2)
    assert result.returncode == 1 and result.stdout == ""
    assert (f"{first}: device {device_record(1).imei}; {second}: device "
            f"{device_record(2).imei}") in result.stderr


def test_same_device_in_several_manifests_keeps_the_latest_run(tmp_path: Path,
                                                                ca: LocalCa) -> None:
    device = device_record(1)
    old, new = _certified(device, ca), _certified(device, ca)
    later, pub1 = _manifest(tmp_path, (new,), name="later.json", ended_at="2025-03-01T00:00:00Z")
    earlier, pub2 = _manifest(tmp_path, (old,), name="earlier.json",
                              ended_at="2025-01-01T00:00:00Z")
    result = fleet("export", "nrfcloud", later, earlier, "--pubkey", pub1, "--pubkey", pub2)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert [row[4] for row in rows] == [new.keys[0].extra["certificate"]["pem"]]
    assert f"{later}: device {device.imei}: exported with the certificate of this manifest" \
        in result.stderr
    assert str(earlier) in result.stderr


@pytest.mark.parametrize("cn", ["=1+1", "+1", "-1", "@SUM(1)"])
def test_export_refuses_a_formula_in_the_device_id(tmp_path: Path, ca: LocalCa, cn: str) -> None:
    bad = _certified(_with_cn(device_record(1), cn), ca)
    path, pub = _manifest(tmp_path, (bad, _certified(device_record(2), ca)))
    result = fleet("export", "nrfcloud", path, "--pubkey", pub)
    assert result.returncode == 1 and result.stdout == ""
    assert (f"{path}: device {bad.imei}: device id (cn) {cn!r} starts with {cn[0]!r}: a "
            "spreadsheet would run it as a formula (CSV injection)") in result.stderr


@pytest.mark.parametrize(("option", "value"), [
    ("--subtype", "=cmd"), ("--subtype", "@x"), ("--subtype", "\tx"), ("--subtype", "a\rb"),
    ("--subtype", "-x"), ("--tags", "+x"), ("--tags", "ok|=x"), ("--tags", "-x;y"),
    ("--subtype", ' =HYPERLINK("x")'), ("--subtype", "\uff1d1+1"), ("--subtype", "a\u202eb"),
    ("--subtype", "a\u2028b")])
def test_export_refuses_a_formula_option(tmp_path: Path, ca: LocalCa, option: str,
                                         value: str) -> None:
    path, pub = _manifest(tmp_path, (_certified(device_record(1), ca),))
    result = fleet("export", "nrfcloud", path, "--pubkey", pub, f"{option}={value}")
    assert result.returncode == 2 and result.stdout == ""
    assert f"fleet export nrfcloud: {option}: " in result.stderr
    assert "formula" in result.stderr or "control" in result.stderr
    assert "Traceback" not in result.stderr


def _doc(devices: tuple[DeviceRecord, ...], ended: str = "2025-01-01T00:00:00Z"
         ) -> dict[str, Any]:
    key = generate_signing_key()
    return sign(build_signed(run_record(devices, ended_at=ended),
                             station_public_key_pem=public_key_pem(key)), key)


def _refusal(manifests: list[tuple[str, Any]], **options: Any) -> list[str]:
    arguments: dict[str, Any] = {"device_id": "cn", "subtype": "", "tags": "",
                                 "firmware_types": "APP|MODEM", **options}
    with pytest.raises(ExportError) as info:
        onboarding_rows(manifests, **arguments)
    return info.value.problems


def test_onboarding_rows_refuses_odd_content_with_reasons(ca: LocalCa) -> None:
    good = _doc((_certified(device_record(1), ca),))
    assert onboarding_rows([("m", good)], device_id="cn", subtype="", tags="",
                           firmware_types="APP")[0]
    odd: list[Any] = [None, [], {"signed": []}, {"signed": {"devices": {}}},
                      {"signed": {"devices": [], "run": {"ended_at": "yesterday"}}},
                      {"signed": {"devices": [], "run": {"ended_at": "2025-01-01T00:00:00"}}},
                      {"signed": {"devices": [], "run": []}}]
    for document in odd:
        problems = _refusal([("odd.json", document)])
        assert problems and problems[0].startswith("odd.json: "), document
    shaped = copy.deepcopy(good)
    shaped["signed"]["devices"].append("a device")
    shaped["signed"]["devices"].append({"imei": 5, "keys": []})
    problems = _refusal([("m", shaped)])
    assert problems == ["m: devices[1]: not an object",
                        "m: devices[2]: keys, imei or device_uuid of an unexpected type"]
    pem = copy.deepcopy(good)
    cert = pem["signed"]["devices"][0]["keys"][0]["certificate"]
    cert["pem"] = "\t" + cert["pem"]
    assert "does not start with -----BEGIN CERTIFICATE-----" in _refusal([("m", pem)])[0]
    assert "subtype '=x' starts with '='" in _refusal([("m", good)], subtype="=x")[0]


def test_onboarding_rows_refuses_one_imei_with_two_device_uuids(ca: LocalCa) -> None:
    one = _certified(device_record(1), ca)
    other = replace(_certified(device_record(2), ca), imei=one.imei)
    problems = _refusal([("a", _doc((one,))), ("b", _doc((other,)))])
    assert any(f"IMEI {one.imei} is recorded with different device UUIDs" in p
               for p in problems), problems
    stolen = replace(_certified(device_record(3), ca), device_uuid=one.device_uuid)
    problems = _refusal([("a", _doc((one,))), ("b", _doc((stolen,)))], device_id="imei")
    assert any(f"device UUID {one.device_uuid} is recorded for more than one device" in p
               for p in problems), problems


def test_a_device_with_a_certificate_but_no_device_id_is_refused(ca: LocalCa) -> None:
    device = replace(_certified(device_record(1), ca), device_uuid=None)
    problems = _refusal([("m", _doc((device,)))], device_id="uuid")
    assert problems == [f"m: device {device.imei}: has a certificate but no uuid to make its "
                        "device id (choose another --device-id)"]


@pytest.mark.parametrize("depth", [600, 100_000])
def test_export_reports_a_deeply_nested_manifest(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"signed": {"x": ' + "[" * depth + "]" * depth + '}, "signatures": []}')
    result = fleet("export", "nrfcloud", path)
    assert result.returncode == 1 and result.stdout == ""
    assert "nested too deeply: more than 64 levels" in result.stderr
    assert f"{path} does not verify: nothing exported" in result.stderr
    assert "Traceback" not in result.stderr
