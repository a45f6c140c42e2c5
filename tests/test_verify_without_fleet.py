"""The "Verifying a manifest without fleet" snippet of docs/manifest.md verifies a real manifest,
and fails a tampered one, using only cryptography, rfc8785 and the standard library."""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.credentials import b64url_encode
from fleet.manifest import add_signature, build_signed, sign, write_manifest
from fleet.records import RunRecord
from fleet.station_key import (
    generate_signing_key,
    init_station_key,
    load_signing_key,
    public_key_pem,
)
from tests.manifest_fixtures import device_record, run_record

PAGE = Path(__file__).resolve().parents[1] / "docs" / "manifest.md"
HEADING = "## Verifying a manifest without fleet"


def snippet() -> str:
    text = PAGE.read_text()
    assert HEADING in text
    match = re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.S)
    assert match, f"no ```python block after {HEADING!r}"
    return match.group(1)


def test_snippet_uses_only_cryptography_rfc8785_and_stdlib() -> None:
    modules = set()
    for node in ast.walk(ast.parse(snippet())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None
            modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names)
    assert third_party == {"cryptography", "rfc8785"}


def run_snippet(tmp_path: Path, manifest: Path, pubkey: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "verify_manifest.py"
    script.write_text(snippet())
    return subprocess.run([sys.executable, str(script), str(manifest), str(pubkey)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(params=["p256", "ed25519"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    files = init_station_key(tmp_path / "keys", ed25519_key=request.param == "ed25519")
    return files.private_path, files.public_path


def _write(tmp_path: Path, private: Path, run: RunRecord, name: str = "m.json") -> Path:
    key = load_signing_key(private)
    signed = build_signed(run, station_public_key_pem=public_key_pem(key))
    return write_manifest(tmp_path / "out" / name, sign(signed, key))


def test_snippet_verifies_a_real_manifest(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = _write(tmp_path, keys[0], run_record())
    result = run_snippet(tmp_path, path, keys[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK\n"


@pytest.mark.forged_manifests("tampered.json")
def test_snippet_fails_a_tampered_manifest(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = _write(tmp_path, keys[0], run_record())
    doc = json.loads(path.read_text())
    doc["signed"]["devices"][0]["keys"][0]["sec_tag"] += 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc, indent=2))
    result = run_snippet(tmp_path, tampered, keys[1])
    assert result.returncode != 0
    assert "the signature does not verify" in result.stderr


def test_snippet_fails_another_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = _write(tmp_path, keys[0], run_record())
    other = init_station_key(tmp_path / "other")
    result = run_snippet(tmp_path, path, other.public_path)
    assert result.returncode != 0
    assert "no signature by key" in result.stderr


@pytest.mark.forged_manifests
def test_snippet_fails_an_altered_answer_signed_validly(tmp_path: Path,
                                                        keys: tuple[Path, Path]) -> None:
    device = device_record(1)
    answer = device.keys[0].keygen_answer
    assert answer is not None
    body, cose = answer.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 1
    bad_key = replace(device.keys[0], keygen_answer=b64url_encode(bytes(raw)) + "." + cose)
    run = run_record((replace(device, keys=(bad_key, device.keys[1])),))
    path = _write(tmp_path, keys[0], run)
    result = run_snippet(tmp_path, path, keys[1])
    assert result.returncode != 0
    assert f"device {device.imei} key tls: answer does not match" in result.stderr


def test_snippet_accepts_a_counter_signed_manifest(tmp_path: Path,
                                                   keys: tuple[Path, Path]) -> None:
    path = _write(tmp_path, keys[0], run_record())
    doc = add_signature(json.loads(path.read_text()), generate_signing_key(ed25519_key=True))
    both = tmp_path / "both.json"
    both.write_text(json.dumps(doc))
    assert run_snippet(tmp_path, both, keys[1]).returncode == 0
