"""`fleet verify` and `fleet station-key init` through the real command line (python -m fleet)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.manifest import build_signed, sign, write_manifest
from fleet.records import RunRecord
from fleet.station_key import keyid, load_signing_key, public_key_pem
from tests.manifest_fixtures import device_record, run_record


def fleet(*args: str | Path, cwd: Path | None = None,
          umask: int | None = None) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)], capture_output=True, text=True,
        timeout=60, check=False, cwd=cwd, preexec_fn=set_umask,
    )


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A station directory holding keys/ made by `fleet station-key init`."""
    root = tmp_path_factory.mktemp("station")
    result = fleet("station-key", "init", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def _manifest(root: Path, name: str, run: RunRecord | None = None) -> Path:
    key = load_signing_key(root / "keys" / "station.pem")
    signed = build_signed(run or run_record(), station_public_key_pem=public_key_pem(key))
    return write_manifest(root / "out" / name, sign(signed, key))


# --- station-key init ----------------------------------------------------------------------------

def test_station_key_init_creates_0600_key(tmp_path: Path) -> None:
    result = fleet("station-key", "init", "--out", tmp_path / "k", umask=0)
    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "k" / "station.pem", tmp_path / "k" / "station.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert f"keyid        {keyid(load_signing_key(private))}" in result.stdout
    assert str(private) in result.stdout and str(public) in result.stdout
    assert "ES256" in result.stdout


def test_station_key_init_default_dir_and_ed25519(tmp_path: Path) -> None:
    result = fleet("station-key", "init", "--ed25519", "--name", "line2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Ed25519" in result.stdout
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["line2.pem",
                                                                       "line2.pub.pem"]


def test_station_key_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert fleet("station-key", "init", "--out", tmp_path).returncode == 0
    before = (tmp_path / "station.pem").read_bytes()
    result = fleet("station-key", "init", "--out", tmp_path)
    assert result.returncode == 2
    assert "already exists: refusing to overwrite" in result.stderr
    assert (tmp_path / "station.pem").read_bytes() == before


def test_station_key_needs_an_action() -> None:
    assert fleet("station-key").returncode == 2


# --- verify --------------------------------------------------------------------------------------

def test_verify_good_manifest_with_pubkey(station: Path) -> None:
    path = _manifest(station, "good.json")
    result = fleet("verify", path, "--pubkey", station / "keys" / "station.pub.pem")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path}: OK: 2 device(s), 4 %KEYGEN answer(s) re-checked, signed by trusted key" \
        in result.stdout
    assert "WARNING" not in result.stderr
    assert "PARTIAL" not in result.stdout


def test_verify_without_pubkey_warns_and_passes(station: Path) -> None:
    path = _manifest(station, "nopub.json")
    result = fleet("verify", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" in result.stderr
    assert "not checked against a trusted key" in result.stderr
    assert "NOT TRUSTED" in result.stdout


@pytest.mark.forged_manifests("tampered.json")
def test_verify_tampered_manifest_names_device_and_key(station: Path, tmp_path: Path) -> None:
    path = _manifest(station, "tampered-src.json")
    doc = json.loads(path.read_text())
    key = doc["signed"]["devices"][1]["keys"][0]
    key["sec_tag"] = 17
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    result = fleet("verify", bad, "--pubkey", station / "keys" / "station.pub.pem")
    assert result.returncode == 1
    imei = doc["signed"]["devices"][1]["imei"]
    assert f"{bad}: signature 1: ES256 signature by key" in result.stdout
    assert f"{bad}: device {imei} key tls: sec_tag: the answer is for sec_tag 16842753, " \
        "the key says 17" in result.stdout
    assert f"{bad}: FAILED" in result.stdout


def test_verify_other_trusted_key_fails(station: Path, tmp_path: Path) -> None:
    path = _manifest(station, "other.json")
    assert fleet("station-key", "init", "--out", tmp_path).returncode == 0
    result = fleet("verify", path, "--pubkey", tmp_path / "station.pub.pem")
    assert result.returncode == 1
    assert "not signed by any trusted key" in result.stdout


def test_verify_partial_manifest_says_partial(station: Path) -> None:
    path = _manifest(station, "partial.json", run_record(complete=False))
    result = fleet("verify", path, "--pubkey", station / "keys" / "station.pub.pem")
    assert result.returncode == 0, result.stdout
    assert "PARTIAL" in result.stdout


@pytest.mark.forged_manifests("json-bad.json")
def test_verify_json_several_manifests(station: Path, tmp_path: Path) -> None:
    good = _manifest(station, "json-good.json")
    device = device_record(1)
    bad = _manifest(station, "json-bad.json", run_record((replace(
        device, keys=(replace(device.keys[0], keygen_answer=None),)),)))
    result = fleet("verify", "--json", good, bad, "--pubkey",
                   station / "keys" / "station.pub.pem")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    first, second = doc["manifests"]
    assert first["path"] == str(good) and first["ok"] is True and first["partial"] is False
    assert second["ok"] is False
    assert second["failures"] == [
        f"device {device.imei} key tls: outcome 'generated' but no keygen_answer recorded"]


@pytest.mark.parametrize("content", [None, "not json {", ""])
def test_verify_usage_errors_exit_2(station: Path, tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    good = _manifest(station, "usage-good.json")
    result = fleet("verify", good, path)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert f"{good}: OK" in result.stdout


@pytest.mark.parametrize(("data", "message"), [
    (b"\xef\xbb\xbf{}", "not JSON (it starts with a UTF-8 byte order mark: save the file "
                          "without one)"),
    ("{}".encode("utf-16"), "not UTF-8 text (invalid start byte at byte 0; JSON is UTF-8)"),
    (b'{"a": ' + b"1" * 5000 + b"}", "not JSON (an integer is too long: more than 4300 digits)"),
], ids=["byte-order-mark", "utf-16", "long-integer"])
def test_verify_text_that_is_no_json_manifest_exits_2(tmp_path: Path, data: bytes,
                                                      message: str) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(data)
    result = fleet("verify", path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"{path}: {message}\n"
    result = fleet("verify", "--json", path)
    assert result.returncode == 2
    assert json.loads(result.stdout)["manifests"] == [
        {"path": str(path), "ok": False, "usage_error": message}]


def test_verify_private_key_as_pubkey_exit_2(station: Path) -> None:
    path = _manifest(station, "privkey.json")
    result = fleet("verify", path, "--pubkey", station / "keys" / "station.pem")
    assert result.returncode == 2
    assert "is a private key" in result.stderr


def test_verify_needs_a_manifest() -> None:
    assert fleet("verify").returncode == 2


@pytest.mark.parametrize("depth", [600, 100_000])
def test_verify_reports_a_deeply_nested_manifest(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"signed": {"x": ' + "[" * depth + "]" * depth + '}, "signatures": []}')
    for args in ((), ("--json",)):
        result = fleet("verify", path, *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        text = (json.loads(result.stdout)["manifests"][0]["failures"][0] if args
                else result.stdout)
        assert "nested too deeply: more than 64 levels" in text
