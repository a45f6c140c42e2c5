"""Sign the canonical bytes of ``signed``; check one signature.

How this works (python-tuf style): the bytes that are signed are ``rfc8785.dumps(signed)`` (the
RFC 8785 JSON Canonicalization Scheme, from the maintained ``rfc8785`` package), never the bytes
of the file, so the file may be pretty-printed and a verifier recomputes the same bytes from the
parsed document. A signature is ``{"keyid", "alg", "sig"}``: ``keyid`` is the hex SHA-256 of the
signer's DER SubjectPublicKeyInfo, ``alg`` is ``"ES256"`` (ECDSA P-256 over SHA-256, signature
DER-encoded as ``Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }``, which is what
``cryptography`` produces and accepts) or ``"Ed25519"`` (the 64-byte RFC 8032 signature), and
``sig`` is standard base64 (RFC 4648 section 4, with padding) of the signature bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleet.errors import ManifestError
from fleet.manifest.build import MAX_JSON_INT, plain_json
from fleet.station_key import (
    ALG_ED25519,
    ALG_ES256,
    PublicKey,
    Signer,
    algorithm,
    keyid,
    public_key_from_pem,
)

__all__ = [
    "ALGORITHMS",
    "add_signature",
    "canonical_bytes",
    "decode_sig",
    "sign",
    "signature",
    "signature_valid",
]

ALGORITHMS = (ALG_ES256, ALG_ED25519)


def _stdlib_ready(value: Any) -> bool:
    """Whether ``value`` is made of exactly ``dict`` (ASCII ``str`` keys), ``list``, ``str``,
    ``bool``, ``None`` and ``int`` within the exact JSON range: the data whose RFC 8785 bytes the
    stdlib encoder gives (see :func:`_stdlib_canonical`), as :func:`json.loads` makes it."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if id(item) in seen:  # shared or circular: left to the checks of plain_json
                return False
            seen.add(id(item))
        if kind is dict:
            for key, child in item.items():
                if type(key) is not str or not key.isascii():
                    return False
                stack.append(child)
        elif kind is list:
            stack.extend(item)
        elif kind is int:
            if not -MAX_JSON_INT <= item <= MAX_JSON_INT:
                return False
        elif kind is not str and kind is not bool and item is not None:
            return False
    return True


def _stdlib_canonical(value: Any) -> bytes | None:
    r"""RFC 8785 bytes of ``value`` by the C-accelerated ``json`` module, or None where its output
    could differ. For plain JSON data without floats whose keys are ASCII
    (:func:`_stdlib_ready`), the stdlib's compact, sorted, non-ASCII-preserving form IS the RFC
    8785 form: integers print alike, strings escape the same characters the same way (``"``,
    ``\``, ``\b \f \n \r \t`` and ``\u00xx`` for the other controls, lower-case hex), and
    sorting by code point is RFC 8785's UTF-16 order for ASCII keys. Anything else, or a lone
    surrogate (not UTF-8), is left to ``rfc8785``. The property test holds the two to the same
    bytes."""
    if not _stdlib_ready(value):
        return None
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return None


def canonical_bytes(signed: Mapping[str, Any]) -> bytes:
    """``rfc8785.dumps(signed)``, after checking ``signed`` is plain JSON data without floats."""
    try:
        fast = _stdlib_canonical(signed)
        if fast is not None:
            return fast
        plain = plain_json(signed, "signed")  # names what is not plain JSON data
        data: bytes = rfc8785.dumps(plain)
    except RecursionError as exc:
        raise ManifestError("signed is nested too deeply") from exc
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\ud800") is not UTF-8 text
        raise ManifestError("signed holds a string that is not Unicode text (a lone "
                            "surrogate)") from exc
    except rfc8785.CanonicalizationError as exc:
        raise ManifestError(f"signed cannot be canonicalized: {exc}") from exc
    return data


def _raw_sign(key: Signer, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))  # DER Ecdsa-Sig-Value
    return key.sign_data(data)  # a key in a token: signed there, DER as well


def signature(signed: Mapping[str, Any], key: Signer) -> dict[str, str]:
    """One signature object over the canonical bytes of ``signed``."""
    return {
        "keyid": keyid(key),
        "alg": algorithm(key),
        "sig": base64.b64encode(_raw_sign(key, canonical_bytes(signed))).decode("ascii"),
    }


def sign(signed: Mapping[str, Any], key: Signer) -> dict[str, Any]:
    """``{"signed": signed, "signatures": [one signature by key]}``.

    ``signed["station_public_key"]``, when present, must be ``key``'s public key: a manifest
    names the key that signs it (trust still comes from the verifier's ``--pubkey``).
    """
    embedded = signed.get("station_public_key")
    if embedded is not None:
        try:
            embedded_id = keyid(public_key_from_pem(str(embedded), "signed.station_public_key"))
        except ManifestError as exc:
            raise ManifestError(f"cannot sign: {exc}") from exc
        if embedded_id != keyid(key):
            raise ManifestError(
                f"signed.station_public_key is key {embedded_id}, not the signing key "
                f"{keyid(key)}"
            )
    return {"signed": signed, "signatures": [signature(signed, key)]}


def add_signature(document: Mapping[str, Any], key: Signer) -> dict[str, Any]:
    """A copy of a signed ``document`` with one more signature (a counter-signature by ``key``).
    Refuses a second signature by the same key."""
    signatures = list(document.get("signatures") or [])
    kid = keyid(key)
    if any(isinstance(s, Mapping) and s.get("keyid") == kid for s in signatures):
        raise ManifestError(f"the manifest is already signed by key {kid}")
    return {"signed": document["signed"],
            "signatures": [*signatures, signature(document["signed"], key)]}


def decode_sig(text: str) -> bytes:
    """The signature bytes of a ``sig`` field (strict standard base64); ``ManifestError``."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ManifestError(f"sig is not standard base64 ({exc})") from exc


def signature_valid(key: PublicKey, alg: str, sig: bytes, data: bytes) -> bool:
    """True when ``sig`` is a valid ``alg`` signature of ``data`` by ``key`` (``alg`` must be
    the key's own algorithm)."""
    try:
        if alg != algorithm(key):
            return False
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        else:
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ManifestError, ValueError):
        return False
    return True

