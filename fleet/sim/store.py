"""A simulated modem's credential store: ``(sec_tag, type) -> Credential``, with a capacity.

Two kinds of entries live here:

- written with ``%CMNG=0``: the exact bytes as received (``content``); the SHA-256 the list shows
  is over those bytes, so a PEM with CRLF line endings lists a different SHA than the same PEM
  with LF (as on the real modem);
- generated with ``%KEYGEN``: the private key (PEM, kept so a restarted simulator still has it) and
  its public key; the SHA listed is SHA-256 of the private key's PKCS#8 DER (stable).

The reserved Nordic entries (sec_tags >= 4294967292) are not stored here: they are fixed per modem
and do not count against the capacity (see :func:`reserved_entries`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.nrf91 import MAX_MODEM_SEC_TAG, CredentialType

__all__ = [
    "RESERVED_TYPES",
    "Credential",
    "CredentialStore",
    "StoreFull",
    "reserved_entries",
]

#: The reserved entries a modem lists: ``(sec_tag, type)``.
RESERVED_TYPES: tuple[tuple[int, CredentialType], ...] = (
    (MAX_MODEM_SEC_TAG - 3, CredentialType.NORDIC_IDENTITY_ROOT_CA),
    (MAX_MODEM_SEC_TAG - 2, CredentialType.NORDIC_PUBLIC_KEY),
    (MAX_MODEM_SEC_TAG - 1, CredentialType.DEVICE_IDENTITY_PUBLIC_KEY))


class StoreFull(Exception):
    """The store has no room for another credential (the modem answers 515)."""


def _pem_private(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _pem_public(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """One stored credential. ``content`` is set for written ones, ``private_key_pem`` for
    generated keys; ``public_key_pem`` whenever a public key is known."""

    sec_tag: int
    type: int
    sha256: str
    content: bytes | None = None
    private_key_pem: str | None = None
    public_key_pem: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.sec_tag <= MAX_MODEM_SEC_TAG:
            raise ValueError(f"sec_tag {self.sec_tag} out of range")
        if not 0 <= self.type <= 255:
            raise ValueError(f"credential type {self.type} out of range")
        if len(self.sha256) != 64 or self.sha256 != self.sha256.upper():
            raise ValueError(f"sha256 must be 64 upper-case hex digits, not {self.sha256!r}")
        if (self.content is None) == (self.private_key_pem is None):
            raise ValueError("a credential is either written (content) or generated (key)")

    @classmethod
    def generated_key(cls, sec_tag: int, type_: int,
                      key: ec.EllipticCurvePrivateKey) -> Credential:
        """A key made by ``%KEYGEN``."""
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return cls(sec_tag=sec_tag, type=type_, sha256=hashlib.sha256(der).hexdigest().upper(),
                   private_key_pem=_pem_private(key), public_key_pem=_pem_public(key.public_key()))

    @classmethod
    def written(cls, sec_tag: int, type_: int, content: bytes) -> Credential:
        """A credential written with ``%CMNG=0``: kept byte for byte."""
        return cls(sec_tag=sec_tag, type=type_, sha256=hashlib.sha256(content).hexdigest().upper(),
                   content=content, public_key_pem=_public_key_of(type_, content))

    def public_key(self) -> ec.EllipticCurvePublicKey | None:
        """The public key, when one is known and it is an EC key."""
        if self.public_key_pem is None:
            return None
        key = serialization.load_pem_public_key(self.public_key_pem.encode("ascii"))
        return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def _public_key_of(type_: int, content: bytes) -> str | None:
    """Best effort: the public key PEM of a written certificate, private key or public key."""
    try:
        if type_ in (CredentialType.ROOT_CA_CERT, CredentialType.CLIENT_CERT):
            return _pem_public_any(x509.load_pem_x509_certificate(content).public_key())
        if type_ == CredentialType.CLIENT_PRIVATE_KEY:
            private = serialization.load_pem_private_key(content, password=None)
            return _pem_public_any(private.public_key())
        if type_ == CredentialType.PUBLIC_KEY:
            return _pem_public_any(serialization.load_pem_public_key(content))
    except (ValueError, TypeError):
        return None
    return None


def _pem_public_any(key: object) -> str | None:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return None
    try:
        pem: bytes = public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return None
    return pem.decode("ascii")


class CredentialStore:
    """The user credentials of one modem, at most ``capacity`` of them."""

    def __init__(self, capacity: int, credentials: tuple[Credential, ...] = ()) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self._items: dict[tuple[int, int], Credential] = {}
        for credential in credentials:
            self._items[(credential.sec_tag, credential.type)] = credential

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Credential]:
        return iter(self.entries())

    def get(self, sec_tag: int, type_: int) -> Credential | None:
        return self._items.get((sec_tag, type_))

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def put(self, credential: Credential) -> None:
        """Store ``credential``, replacing one with the same tag and type. Raises
        :class:`StoreFull` when it is new and there is no room."""
        key = (credential.sec_tag, credential.type)
        if key not in self._items and self.full:
            raise StoreFull(f"credential store full ({self.capacity} entries)")
        self._items[key] = credential

    def delete(self, sec_tag: int, type_: int) -> bool:
        """Remove a credential; False when there was none."""
        return self._items.pop((sec_tag, type_), None) is not None

    def entries(self, sec_tag: int | None = None, type_: int | None = None) -> list[Credential]:
        """The credentials, sorted by (sec_tag, type), optionally filtered."""
        return [self._items[key] for key in sorted(self._items)
                if (sec_tag is None or key[0] == sec_tag) and (type_ is None or key[1] == type_)]


def reserved_entries(device_seed: bytes) -> list[tuple[int, int, str]]:
    """The reserved Nordic entries of one modem as ``(sec_tag, type, SHA)``; the SHA is a
    stable stand-in derived from ``device_seed`` (the real content is not known)."""
    return [(tag, int(type_), hashlib.sha256(device_seed + f"/{tag}/{int(type_)}".encode())
             .hexdigest().upper()) for tag, type_ in RESERVED_TYPES]
