"""Station keys: creation modes, no overwrite, loading with clear errors; create_atomic and
create_new."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fleet import atomic
from fleet.atomic import create_atomic, create_new, make_private_dir, write_atomic
from fleet.errors import CertificateError, ManifestError
from fleet.manifest.store import write_manifest
from fleet.station_key import (
    algorithm,
    ensure_throwaway_key,
    init_station_key,
    keyid,
    load_public_key,
    load_signing_key,
    public_key_path,
    public_key_pem,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_private(path: Path, key: object, password: bytes | None = None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)


def test_init_creates_p256_key_0600_and_public_0644(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    old = os.umask(0)  # the modes come from the create call, not from a friendly umask
    try:
        files = init_station_key(out)
    finally:
        os.umask(old)
    assert files.private_path == out / "station.pem"
    assert files.public_path == out / "station.pub.pem"
    assert _mode(files.private_path) == 0o600
    assert _mode(files.public_path) == 0o644
    assert _mode(out) == 0o700
    key = load_signing_key(files.private_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert files.alg == algorithm(key) == "ES256"
    public = load_public_key(files.public_path)
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert files.keyid == keyid(key) == keyid(public) == hashlib.sha256(der).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == ["station.pem", "station.pub.pem"]


def test_init_ed25519_and_name(tmp_path: Path) -> None:
    files = init_station_key(tmp_path, name="line1", ed25519_key=True)
    assert files.private_path.name == "line1.pem"
    assert files.public_path.name == "line1.pub.pem"
    assert files.alg == "Ed25519"
    assert isinstance(load_signing_key(files.private_path), ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize("existing", ["station.pem", "station.pub.pem"])
def test_init_refuses_to_overwrite_either_file(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious\n")
    with pytest.raises(ManifestError, match="refusing to overwrite"):
        init_station_key(tmp_path)
    assert (tmp_path / existing).read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b"])
def test_init_refuses_odd_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ManifestError, match="invalid key name"):
        init_station_key(tmp_path, name=name)


def test_missing_key_points_at_station_key_init(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "station.pem"
    with pytest.raises(ManifestError) as info:
        load_signing_key(path)
    message = str(info.value)
    assert str(path) in message
    assert f"fleet station-key init --out {path.parent}" in message
    assert "throwaway_signing_key: true" in message


def test_missing_key_with_other_name_says_name(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="--name line7"):
        load_signing_key(tmp_path / "line7.pem")


def test_group_readable_key_loads_with_a_warning(tmp_path: Path) -> None:
    files = init_station_key(tmp_path)
    with structlog.testing.capture_logs() as logs:
        load_signing_key(files.private_path)
    assert logs == []
    files.private_path.chmod(0o640)
    with structlog.testing.capture_logs() as logs:
        load_signing_key(files.private_path)
    assert len(logs) == 1
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["mode"] == "0640"
    assert "readable by group or others" in logs[0]["event"]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (ec.generate_private_key(ec.SECP384R1()), "secp384r1 is not supported"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA key"),
    ],
)
def test_other_key_types_refused(tmp_path: Path, key: object, reason: str) -> None:
    path = tmp_path / "k.pem"
    _write_private(path, key)
    with pytest.raises(ManifestError, match=reason):
        load_signing_key(path)


def test_encrypted_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    _write_private(path, ec.generate_private_key(ec.SECP256R1()), password=b"secret")
    with pytest.raises(ManifestError, match="is encrypted"):
        load_signing_key(path)


def test_public_key_or_junk_as_signing_key(tmp_path: Path) -> None:
    files = init_station_key(tmp_path)
    with pytest.raises(ManifestError, match="holds a public key"):
        load_signing_key(files.public_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    with pytest.raises(ManifestError, match="not a PEM private key"):
        load_signing_key(junk)


def test_private_key_as_trusted_key_refused(tmp_path: Path) -> None:
    files = init_station_key(tmp_path)
    with pytest.raises(ManifestError, match="is a private key"):
        load_public_key(files.private_path)
    with pytest.raises(ManifestError, match="cannot read"):
        load_public_key(tmp_path / "absent.pem")


def test_throwaway_key_created_once(tmp_path: Path) -> None:
    path = tmp_path / "demo-keys" / "station.pem"
    key, created = ensure_throwaway_key(path)
    assert created
    assert _mode(path) == 0o600
    assert public_key_path(path).read_text() == public_key_pem(key)
    again, created_again = ensure_throwaway_key(path)
    assert not created_again
    assert keyid(again) == keyid(key)


def test_public_key_path() -> None:
    assert public_key_path("keys/station.pem") == Path("keys/station.pub.pem")
    assert public_key_path("keys/station.key") == Path("keys/station.key.pub.pem")


def test_create_atomic_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    create_atomic(path, b"first", mode=0o600)
    with pytest.raises(FileExistsError):
        create_atomic(path, b"second")
    assert path.read_bytes() == b"first"
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_create_atomic_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    path = tmp_path / "a.json"
    create_atomic(path, b"first", mode=0o600)
    assert path.read_bytes() == b"first"
    assert _mode(path) == 0o600
    with pytest.raises(FileExistsError):
        create_atomic(path, b"second")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_create_new_says_which_file_is_there_in_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    create_new(path, b"first", mode=0o600, error=CertificateError)
    with pytest.raises(CertificateError, match=r"ca\.key already exists: refusing to overwrite it"):
        create_new(path, b"second", mode=0o600, error=CertificateError)
    assert path.read_bytes() == b"first"


def test_a_file_where_the_directory_should_be_is_not_taken_for_the_target(tmp_path: Path) -> None:
    (tmp_path / "keys").write_bytes(b"not a directory")
    target = tmp_path / "keys" / "station.pem"
    with pytest.raises(NotADirectoryError):
        create_atomic(target, b"key")
    with pytest.raises(NotADirectoryError):
        write_atomic(target, b"key")
    with pytest.raises(ManifestError, match=r"cannot write .*station\.pem: Not a directory"):
        create_new(target, b"key", mode=0o600, error=ManifestError)
    # a manifest write tries the next name only when the name is taken, not here
    with pytest.raises(ManifestError, match="Not a directory") as caught:
        write_manifest(tmp_path / "keys" / "run.json", {"signed": {}, "signatures": []})
    assert "names are taken" not in str(caught.value)
    assert (tmp_path / "keys").read_bytes() == b"not a directory"


def test_make_private_dir_makes_0700_and_says_when_a_file_is_in_the_way(tmp_path: Path) -> None:
    directory = tmp_path / "ca" / "dev"
    make_private_dir(directory, error=CertificateError)
    assert directory.is_dir() and _mode(directory) == 0o700
    make_private_dir(directory, error=CertificateError)  # there already: used as it is
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(CertificateError, match=r"file exists and is not a directory"):
        make_private_dir(tmp_path / "file", error=CertificateError)
    with pytest.raises(ManifestError, match=r"cannot create directory .*/keys: Not a directory"):
        make_private_dir(tmp_path / "file" / "keys", error=ManifestError)
