"""`fleet ca init` and `fleet export nrfcloud` (on manifests built here, signed, verified)."""

from __future__ import annotations

import csv
import io
import json
import stat
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
from fleet.manifest import build_signed, sign, verify
from fleet.records import DeviceRecord
from fleet.station_key import generate_signing_key, public_key_pem
from tests.certhelpers import NOW, make_ca
from tests.manifest_fixtures import device_record, run_record
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
    other_pem = _certified(device_record(1), ca).keys[0].extra["certificate"]["pem"]
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
