"""The station signing key: create it, load it, and the little facts the manifest needs about it.

How this works: a station key is an unencrypted PKCS#8 PEM private key (ECDSA P-256 by default,
ES256; Ed25519 by option) with its SubjectPublicKeyInfo PEM beside it (``station.pem`` and
``station.pub.pem``). The private file is created with mode 0600 from its first byte
(:func:`fleet.atomic.create_atomic`: ``O_CREAT | O_EXCL``, never a chmod afterwards) and no file
is ever overwritten. A key is named by its *keyid*: the hex SHA-256 of the DER
SubjectPublicKeyInfo of its public key. Any other key type is refused with a clear error, and so
is an encrypted key (a gang-programming station signs unattended).

A station key may instead live in a PKCS#11 token, named by a ``pkcs11:`` URI: then it is an
:class:`ExternalSigner` (:mod:`fleet.hsm.signers`, imported only for such a URI), which signs in
the token and gives only its public key. :func:`open_signing_key` is the one place either kind
is opened; the manifest code signs with a :data:`Signer` and never asks which kind it is.

Every failure is a :class:`fleet.errors.ManifestError` whose message says what to do.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias

import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleet.atomic import create_atomic, create_new, make_private_dir, write_atomic
from fleet.errors import ManifestError, TokenError
from fleet.hsm.uri import Pkcs11Uri
from fleet.regular import read_regular_file

__all__ = [
    "ALG_ED25519",
    "ALG_ES256",
    "ExternalSigner",
    "PublicKey",
    "Signer",
    "SigningKey",
    "StationKeyFiles",
    "algorithm",
    "ensure_throwaway_key",
    "generate_signing_key",
    "init_station_key",
    "init_token_station_key",
    "keyid",
    "load_public_key",
    "load_signing_key",
    "open_signing_key",
    "public_key_from_pem",
    "public_key_path",
    "public_key_pem",
]

SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class ExternalSigner(Protocol):
    """A station key that signs where it lives (a PKCS#11 token) and never leaves it."""

    def public_key(self) -> PublicKey:
        """The public key (ECDSA P-256: an external station key is always ES256)."""
        ...

    def sign_data(self, data: bytes) -> bytes:
        """The ES256 signature of ``data`` (DER ``Ecdsa-Sig-Value``); :class:`ManifestError`
        when the key cannot sign now (the token is gone)."""
        ...

    def describe(self) -> str:
        """Where the key lives, in words (never a PIN)."""
        ...


#: What signs a manifest: a key loaded from a file, or a key in a token.
Signer: TypeAlias = SigningKey | ExternalSigner

ALG_ES256 = "ES256"  #: ECDSA P-256 with SHA-256, DER-encoded signature
ALG_ED25519 = "Ed25519"  #: pure Ed25519 (RFC 8032), 64-byte signature

_SUPPORTED = "ECDSA P-256 (ES256) or Ed25519"
#: A PEM key is a few hundred bytes; a larger file is refused unparsed.
_MAX_KEY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class StationKeyFiles:
    """What :func:`init_station_key` (or :func:`init_token_station_key`) created."""

    private_path: Path | None  #: None: the private key is in a token (``token``)
    public_path: Path
    keyid: str
    alg: str
    token: str | None = None  #: where the private key is, in words, when it is in a token


def generate_signing_key(*, ed25519_key: bool = False) -> SigningKey:
    """A new station key: ECDSA P-256 (default) or Ed25519."""
    if ed25519_key:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _check_public(key: object, what: str) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ManifestError(f"{what}: {_describe(key)} is not supported; use {_SUPPORTED}")


def _check_private(key: object, what: str) -> SigningKey:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ManifestError(f"{what}: {_describe(key)} is not supported; use {_SUPPORTED}")


def _describe(key: object) -> str:
    curve = getattr(key, "curve", None)
    if curve is not None:
        return f"an EC key on {curve.name}"
    size = getattr(key, "key_size", None)
    kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "")
    return f"a {kind} key" + (f" ({size} bits)" if size else "")


def algorithm(key: Signer | PublicKey) -> str:
    """The manifest ``alg`` for a (private or public) key: ``"ES256"`` or ``"Ed25519"``."""
    key = _public(key)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ALG_ED25519
    if isinstance(key.curve, ec.SECP256R1):
        return ALG_ES256
    raise ManifestError(f"{_describe(key)} is not supported; use {_SUPPORTED}")


def _public(key: Signer | PublicKey) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return key
    return key.public_key()


def keyid(key: Signer | PublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of the (public half of the) key."""
    der = _public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_key_pem(key: Signer | PublicKey) -> str:
    """The SubjectPublicKeyInfo PEM of the (public half of the) key, as text."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def public_key_path(private_path: Path | str) -> Path:
    """Where the public key of ``private_path`` goes: ``station.pem`` -> ``station.pub.pem``."""
    private_path = Path(private_path)
    stem = private_path.stem if private_path.suffix == ".pem" else private_path.name
    return private_path.with_name(stem + ".pub.pem")


def _private_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_station_key(
    out_dir: Path | str, *, name: str = "station", ed25519_key: bool = False
) -> StationKeyFiles:
    """Create ``out_dir/<name>.pem`` (mode 0600) and ``out_dir/<name>.pub.pem`` (0644).

    ``out_dir`` is created with mode 0700 when missing. Refuses (``ManifestError``) to overwrite
    either file; nothing is written when either already exists.
    """
    private_path, public_path = _key_files(out_dir, name, private=True)
    make_private_dir(private_path.parent, error=ManifestError)
    key = generate_signing_key(ed25519_key=ed25519_key)
    create_new(private_path, _private_pem(key), mode=0o600, error=ManifestError)
    create_new(public_path, public_key_pem(key).encode("ascii"), mode=0o644, error=ManifestError)
    return StationKeyFiles(private_path=private_path, public_path=public_path,
                           keyid=keyid(key), alg=algorithm(key))


def _key_files(out_dir: Path | str, name: str, *, private: bool) -> tuple[Path, Path]:
    """``(out_dir/<name>.pem, out_dir/<name>.pub.pem)``; ``ManifestError`` when ``name`` is no
    plain stem or a file that would be written (the public one only, unless ``private``)
    exists."""
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ManifestError(f"invalid key name {name!r}: a plain file name stem, like 'station'")
    out_dir = Path(out_dir)
    private_path = out_dir / f"{name}.pem"
    public_path = public_key_path(private_path)
    for path in (private_path, public_path) if private else (public_path,):
        if os.path.lexists(path):
            raise ManifestError(
                f"{path} already exists: refusing to overwrite a station key "
                "(move it away first, or choose another --out or --name)"
            )
    return private_path, public_path


def init_token_station_key(uri: Pkcs11Uri, out_dir: Path | str, *,
                           name: str = "station") -> StationKeyFiles:
    """Create an ECDSA P-256 key pair in the PKCS#11 token ``uri`` names (sensitive, never
    extractable) and write only its public key, ``out_dir/<name>.pub.pem`` (0644). Refuses
    (``ManifestError``) an existing public key file or object in the token, before making
    anything."""
    _, public_path = _key_files(out_dir, name, private=False)
    from fleet.hsm.signers import TokenStationSigner, create_token_key  # the binding: only now

    try:
        signer = TokenStationSigner(create_token_key(uri))
    except TokenError as exc:
        raise ManifestError(f"{uri}: {exc}") from exc
    make_private_dir(public_path.parent, error=ManifestError)
    create_new(public_path, public_key_pem(signer).encode("ascii"), mode=0o644,
               error=ManifestError)
    return StationKeyFiles(private_path=None, public_path=public_path, alg=ALG_ES256,
                           keyid=keyid(signer), token=signer.describe())


def _init_hint(path: Path) -> str:
    directory = path.parent if str(path.parent) else Path(".")
    command = f"fleet station-key init --out {directory}"
    if path.suffix == ".pem" and path.stem != "station":
        command += f" --name {path.stem}"
    elif path.suffix != ".pem":
        command += f" (then point signing_key at {directory / 'station.pem'})"
    return command


def load_signing_key(path: Path | str) -> SigningKey:
    """Load the station's private key (unencrypted PEM, P-256 or Ed25519).

    A missing file is a :class:`ManifestError` that says how to create one. A file that group or
    others may read is loaded, with a warning in the log.
    """
    path = Path(path)
    try:
        data = read_regular_file(path, max_bytes=_MAX_KEY_BYTES)
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise ManifestError(
            f"signing key {path} does not exist: create it with `{_init_hint(path)}` "
            "(or, for a demo plan only, set `throwaway_signing_key: true`)"
        ) from None
    except OSError as exc:
        raise ManifestError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_BYTES:
        raise ManifestError(f"signing key {path} is larger than {_MAX_KEY_BYTES} bytes: it is "
                            "not a PEM key (name the file `fleet station-key init` wrote)")
    if mode & 0o077:
        structlog.get_logger().warning(
            "signing key is readable by group or others",
            path=str(path), mode=f"{mode:04o}", fix=f"chmod 600 {path}",
        )
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise ManifestError(
            f"signing key {path} holds a public key; signing needs the private key "
            f"(the file `fleet station-key init` wrote without .pub)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted, and no password given
        raise ManifestError(
            f"signing key {path} is encrypted: fleet signs unattended and needs an unencrypted "
            f"PKCS#8 PEM key (mode 0600), as `fleet station-key init` makes ({exc})"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ManifestError(f"signing key {path} is not a PEM private key ({exc})") from exc
    return _check_private(key, f"signing key {path}")


def open_signing_key(where: Path | Pkcs11Uri) -> Signer:
    """The station key ``where`` names: a PEM file (:func:`load_signing_key`) or a key in a
    PKCS#11 token, logged in and checked with one signature (``ManifestError`` naming what is
    missing or wrong: module, token, PIN, object, key type)."""
    if isinstance(where, Pkcs11Uri):
        from fleet.hsm.signers import open_station_signer  # the PKCS#11 binding: only now

        return open_station_signer(where)
    return load_signing_key(where)


def load_public_key(path: Path | str) -> PublicKey:
    """Load a trusted public key (SubjectPublicKeyInfo PEM, P-256 or Ed25519)."""
    path = Path(path)
    try:
        data = read_regular_file(path, max_bytes=_MAX_KEY_BYTES)
    except OSError as exc:
        raise ManifestError(f"cannot read public key {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_BYTES:
        raise ManifestError(f"public key {path} is larger than {_MAX_KEY_BYTES} bytes: it is "
                            "not a PEM key")
    if b"PRIVATE KEY-----" in data:
        raise ManifestError(
            f"{path} is a private key: give the public key (the .pub.pem file) and keep the "
            "private key on the station"
        )
    return public_key_from_pem(data, f"public key {path}")


def public_key_from_pem(pem: str | bytes, what: str = "public key") -> PublicKey:
    """Parse a SubjectPublicKeyInfo PEM (P-256 or Ed25519); ``ManifestError`` naming ``what``."""
    try:
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise ManifestError(f"{what} is not a PEM public key ({exc})") from exc
    return _check_public(key, what)


def ensure_throwaway_key(path: Path | str) -> tuple[SigningKey, bool]:
    """The signing key at ``path``, created (P-256, 0600, public key beside it) when missing.

    For demo plans only: returns ``(key, created)``; when ``created`` the caller must log a
    clear warning that the manifest is signed by a throwaway key nobody trusts yet.
    """
    path = Path(path)
    if os.path.lexists(path):
        return load_signing_key(path), False
    make_private_dir(path.parent if str(path.parent) else Path("."), error=ManifestError)
    key = generate_signing_key()
    try:
        create_atomic(path, _private_pem(key), mode=0o600)
    except FileExistsError:  # another run created it a moment ago: use that one
        return load_signing_key(path), False
    except OSError as exc:
        raise ManifestError(f"cannot write throwaway signing key {path}: {exc}") from exc
    # A stale public key of an earlier throwaway would mislead whoever verifies: replace it.
    try:
        write_atomic(public_key_path(path), public_key_pem(key).encode("ascii"), mode=0o644)
    except OSError as exc:
        raise ManifestError(f"cannot write {public_key_path(path)}: {exc}") from exc
    return key, True
