"""Keys that never leave a PKCS#11 token: find one, log in once, sign with it, create one.

How this works: the binding is python-pkcs11 (``pkcs11``), imported here only, and this module is
imported only when a plan or a command names a ``pkcs11:`` URI, so a run with file keys never
loads it. A URI (:mod:`fleet.hsm.uri`) is resolved to a module (its ``module-path``, else
``$FLEET_PKCS11_MODULE``, else :data:`~fleet.hsm.uri.DEFAULT_MODULE`), one initialized token
among the module's slots, and one private key object. The PIN is read from its source
(``env:NAME`` or a file; ``$FLEET_PKCS11_PIN`` by default), used for exactly one login per token
and process (sessions are kept in :data:`_SESSIONS`, so a station key and a CA key in one token
share it) and never retried: a token locks its PIN after a few wrong ones. Every foreign error is
mapped to :class:`~fleet.errors.TokenError` with the token and object named and never the PIN.

Signing is done by the token: ECDSA over the SHA-256 digest (``CKM_ECDSA``, which every token
that holds EC keys offers; the raw r||s it returns becomes the DER ``Ecdsa-Sig-Value`` of
ES256) or RSA PKCS#1 v1.5 with SHA-256 (``CKM_SHA256_RSA_PKCS``). Before a key is used, one
signature is checked against the public key it must have (the token's public object for a
station key, the CA certificate's for a CA key), so a wrong object, a key without CKA_SIGN or a
token that cannot sign is found before any device is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import pkcs11
import pkcs11.exceptions as p11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from fleet.errors import TokenError
from fleet.hsm.uri import DEFAULT_MODULE, DEFAULT_PIN_ENV, MODULE_ENV, PinSource, Pkcs11Uri
from fleet.regular import read_regular_file

__all__ = ["TokenKey", "close_all", "create_ec_key", "describe", "module_path", "open_key"]

#: EC curves a token key may be on, by their DER ``EC_PARAMS`` (a named-curve OID).
_CURVES: dict[bytes, ec.EllipticCurve] = {
    encode_named_curve_parameters(curve.name): curve
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1())
}
_P256 = encode_named_curve_parameters("secp256r1")
_PROBE = b"fleet: this token key signs"
_MAX_PIN_BYTES = 256


def module_path(uri: Pkcs11Uri) -> tuple[str, str]:
    """``(path, where it came from)`` of the PKCS#11 module for ``uri``."""
    if uri.module_path is not None:
        return uri.module_path, "module-path in the URI"
    env = os.environ.get(MODULE_ENV)
    if env:
        return env, f"${MODULE_ENV}"
    return DEFAULT_MODULE, "the default module"


def describe(uri: Pkcs11Uri) -> str:
    """Where the key lives, in words (no PIN: the URI never holds one)."""
    path, origin = module_path(uri)
    return (f"key {uri.object_name()} in PKCS#11 token {uri.token_name()} "
            f"(module {path}, {origin}; PIN from {_pin_source(uri)})")


def _pin_source(uri: Pkcs11Uri) -> PinSource:
    return uri.pin_source or PinSource(kind="env", name=DEFAULT_PIN_ENV)


def _read_pin(uri: Pkcs11Uri) -> str:
    source = _pin_source(uri)
    if source.kind == "env":
        value = os.environ.get(source.name)
        if value is None:
            raise TokenError(f"the PIN for token {uri.token_name()}: environment variable "
                             f"{source.name} is not set (pin-source {source})")
        return value
    try:
        data = read_regular_file(source.name, max_bytes=_MAX_PIN_BYTES)
    except OSError as exc:
        raise TokenError(f"the PIN for token {uri.token_name()}: cannot read {source.name} "
                         f"({exc.strerror or exc})") from exc
    if len(data) > _MAX_PIN_BYTES:
        raise TokenError(f"the PIN file {source.name} is larger than {_MAX_PIN_BYTES} bytes")
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise TokenError(f"the PIN file {source.name} is not UTF-8 text") from None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip(" \x00")
    return str(value).rstrip(" \x00")


def _matches(token: Any, uri: Pkcs11Uri) -> bool:
    wanted = ((uri.token, token.label), (uri.serial, token.serial),
              (uri.manufacturer, token.manufacturer_id), (uri.model, token.model))
    return all(want is None or _text(have) == want for want, have in wanted)


def _load_module(uri: Pkcs11Uri) -> Any:
    path, origin = module_path(uri)
    if not os.path.isfile(path):
        raise TokenError(f"PKCS#11 module {path} ({origin}) does not exist: install the "
                         f"token's module, or name it with module-path= in the URI or "
                         f"${MODULE_ENV}")
    try:
        lib = pkcs11.lib(path)
    except p11.PKCS11Error as exc:
        raise TokenError(f"PKCS#11 module {path} ({origin}) cannot be loaded: {exc}") from exc
    _MODULES.add(path)
    return lib


def _find_token(lib: Any, uri: Pkcs11Uri) -> Any:
    try:
        tokens = [t for t in lib.get_tokens() if t.flags & TokenFlag.TOKEN_INITIALIZED]
    except p11.PKCS11Error as exc:
        raise TokenError(f"the PKCS#11 module cannot list its tokens ({_name(exc)})") from exc
    found = [t for t in tokens if _matches(t, uri)]
    if not found:
        present = ", ".join(repr(_text(t.label)) for t in tokens) or "none"
        raise TokenError(f"no PKCS#11 token {uri.token_name()} matches the URI (tokens "
                         f"present: {present})")
    if len(found) > 1:
        raise TokenError(f"{len(found)} PKCS#11 tokens match the URI: add serial= to name one")
    return found[0]


def _name(exc: BaseException) -> str:
    text = str(exc)
    return type(exc).__name__ + (f": {text}" if text else "")


@dataclass
class _Session:
    session: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


#: One logged-in session per (module, token serial, read-write): one login per process.
_SESSIONS: dict[tuple[str, str, bool], _Session] = {}
#: The modules this process loaded (and initialized).
_MODULES: set[str] = set()


def _session(uri: Pkcs11Uri, *, rw: bool = False) -> _Session:
    lib = _load_module(uri)
    token = _find_token(lib, uri)
    key = (module_path(uri)[0], _text(token.serial), rw)
    cached = _SESSIONS.get(key)
    if cached is not None:
        return cached
    if (*key[:2], not rw) in _SESSIONS:  # logged in already: the login is the process's
        try:
            session = token.open(rw=rw)
        except p11.PKCS11Error as exc:
            raise TokenError(f"cannot open a session with PKCS#11 token {uri.token_name()} "
                             f"({_name(exc)})") from None
    else:
        session = _log_in(token, uri, rw=rw)
    made = _Session(session=session)
    _SESSIONS[key] = made
    return made


def _log_in(token: Any, uri: Pkcs11Uri, *, rw: bool) -> Any:
    """A session of ``token`` logged in with the PIN ``uri`` names: tried once, never again
    after a wrong PIN."""
    pin = _read_pin(uri)
    try:
        return token.open(rw=rw, user_pin=pin)
    except (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid):
        raise TokenError(f"wrong PIN for PKCS#11 token {uri.token_name()} (from "
                         f"{_pin_source(uri)}); not retried, because a token locks its PIN "
                         "after a few wrong ones") from None
    except p11.PinLocked:
        raise TokenError(f"the user PIN of PKCS#11 token {uri.token_name()} is locked: its "
                         "security officer must unlock it") from None
    except (p11.PinExpired, p11.UserPinNotInitialized) as exc:
        raise TokenError(f"PKCS#11 token {uri.token_name()}: the user PIN cannot be used "
                         f"({_name(exc)})") from None
    except p11.PKCS11Error as exc:
        raise TokenError(f"cannot log in to PKCS#11 token {uri.token_name()} "
                         f"({_name(exc)})") from None


def close_all() -> None:
    """Log out and close every session, and finalize every module this process loaded (a
    module reads its configuration again when it is next used)."""
    for entry in _SESSIONS.values():
        with contextlib.suppress(p11.PKCS11Error):  # a token that is gone has nothing open
            entry.session.close()
    _SESSIONS.clear()
    for path in sorted(_MODULES):
        pkcs11.unload(path)
    _MODULES.clear()


def _template(uri: Pkcs11Uri, kind: ObjectClass) -> dict[Attribute, Any]:
    template: dict[Attribute, Any] = {Attribute.CLASS: kind}
    if uri.object is not None:
        template[Attribute.LABEL] = uri.object
    if uri.id is not None:
        template[Attribute.ID] = uri.id
    return template


def _one(entry: _Session, uri: Pkcs11Uri, kind: ObjectClass) -> Any | None:
    with entry.lock:
        try:
            found = list(entry.session.get_objects(_template(uri, kind)))
        except p11.PKCS11Error as exc:
            raise TokenError(f"cannot search PKCS#11 token {uri.token_name()} "
                             f"({_name(exc)})") from exc
    if len(found) > 1:
        raise TokenError(f"{len(found)} objects match {uri.object_name()} in PKCS#11 token "
                         f"{uri.token_name()}: add id= to the URI to name one")
    return found[0] if found else None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenKey:
    """A private key in a token, and the public key it signs for."""

    uri: Pkcs11Uri
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    extractable: bool  #: CKA_EXTRACTABLE or not CKA_SENSITIVE: the token would give it out
    _entry: _Session = field(repr=False)
    _handle: Any = field(repr=False)

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data`` by the token: DER ECDSA over SHA-256, or RSA PKCS#1 v1.5
        with SHA-256. :class:`TokenError` when the token fails or is gone."""
        try:
            with self._entry.lock:
                if isinstance(self.public_key, rsa.RSAPublicKey):
                    return bytes(self._handle.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
                raw = bytes(self._handle.sign(hashlib.sha256(data).digest(),
                                              mechanism=Mechanism.ECDSA))
        except p11.PKCS11Error as exc:
            raise TokenError(f"PKCS#11 token {self.uri.token_name()} did not sign with "
                             f"{self.uri.object_name()} ({_name(exc)}): the token was "
                             "removed, or stopped answering") from exc
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                    int.from_bytes(raw[half:], "big"))


def _public_from_token(entry: _Session, uri: Pkcs11Uri, private: Any
                       ) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key beside ``private`` (the public object with the same label or id)."""
    public = _one(entry, uri, ObjectClass.PUBLIC_KEY)
    if public is None:
        raise TokenError(f"PKCS#11 token {uri.token_name()} holds the private key "
                         f"{uri.object_name()} but no public key object beside it")
    try:
        with entry.lock:
            if private.key_type == KeyType.RSA:
                return rsa.RSAPublicNumbers(
                    int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
                    int.from_bytes(public[Attribute.MODULUS], "big")).public_key()
            loaded = serialization.load_der_public_key(encode_ec_public_key(public))
    except (p11.PKCS11Error, ValueError) as exc:
        raise TokenError(f"the public key {uri.object_name()} in PKCS#11 token "
                         f"{uri.token_name()} cannot be read ({_name(exc)})") from exc
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise TokenError(f"the public key {uri.object_name()} is not an EC key")
    return loaded


def _verifies(public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, sig: bytes) -> bool:
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(sig, _PROBE, padding.PKCS1v15(), hashes.SHA256())
        else:
            public.verify(sig, _PROBE, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def open_key(uri: Pkcs11Uri, *, p256_only: bool,
             public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None = None
             ) -> TokenKey:
    """The private key ``uri`` names, logged in and checked with one signature.

    ``p256_only``: refuse any key but ECDSA P-256 (a station key); else EC P-256/384/521 or RSA
    (a CA key). ``public_key``: the key it must be (a CA certificate's); None: the token's own
    public object beside it.
    """
    entry = _session(uri)
    private = _one(entry, uri, ObjectClass.PRIVATE_KEY)
    if private is None:
        other = next((kind.name.lower().replace("_", " ") for kind in
                      (ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY, ObjectClass.CERTIFICATE)
                      if _one(entry, uri, kind) is not None), None)
        found = f" (only a {other} by that name)" if other else ""
        raise TokenError(f"PKCS#11 token {uri.token_name()} holds no private key "
                         f"{uri.object_name()}{found}")
    try:
        with entry.lock:
            key_type = private.key_type
            params = bytes(private[Attribute.EC_PARAMS]) if key_type == KeyType.EC else b""
            extractable = bool(private[Attribute.EXTRACTABLE]) or not bool(
                private[Attribute.SENSITIVE])
    except p11.PKCS11Error as exc:
        raise TokenError(f"the key {uri.object_name()} in PKCS#11 token {uri.token_name()} "
                         f"cannot be read ({_name(exc)})") from exc
    wanted = "ECDSA P-256" if p256_only else "EC (P-256, P-384, P-521) or RSA"
    if p256_only:
        fits = key_type == KeyType.EC and params == _P256
    else:
        fits = key_type == KeyType.RSA or (key_type == KeyType.EC and params in _CURVES)
    if not fits:
        what = _CURVES[params].name if params in _CURVES else getattr(key_type, "name", key_type)
        raise TokenError(f"the key {uri.object_name()} in PKCS#11 token {uri.token_name()} is "
                         f"a {what} key; it must be {wanted}")
    public = public_key if public_key is not None else _public_from_token(entry, uri, private)
    key = TokenKey(uri=uri, public_key=public, extractable=extractable, _entry=entry,
                   _handle=private)
    if not _verifies(public, key.sign(_PROBE)):
        whose = "the certificate's key" if public_key is not None else \
            "the public key object beside it"
        raise TokenError(f"the key {uri.object_name()} in PKCS#11 token {uri.token_name()} is "
                         f"not {whose} (a signature by it does not verify)")
    return key


def create_ec_key(uri: Pkcs11Uri) -> ec.EllipticCurvePublicKey:
    """Generate an ECDSA P-256 key pair in the token, labelled with the URI's ``object`` (and
    ``id``, else a random one): sensitive, never extractable, for signing only. Refuses a label
    or id that is already taken."""
    if uri.object is None:
        raise TokenError("name the new key with object=<label> in the URI")
    entry = _session(uri, rw=True)
    for kind in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY):
        if _one(entry, uri, kind) is not None:
            raise TokenError(f"PKCS#11 token {uri.token_name()} already holds an object "
                             f"{uri.object_name()}: refusing to make a second one (choose "
                             "another object=)")
    key_id = uri.id if uri.id is not None else secrets.token_bytes(8)
    private_template = {Attribute.TOKEN: True, Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True, Attribute.DECRYPT: False,
                        Attribute.DERIVE: False, Attribute.UNWRAP: False}
    public_template = {Attribute.TOKEN: True, Attribute.VERIFY: True,
                       Attribute.ENCRYPT: False, Attribute.WRAP: False}
    try:
        with entry.lock:
            params = entry.session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: _P256}, local=True)
            public, _ = params.generate_keypair(
                store=True, label=uri.object, id=key_id, public_template=public_template,
                private_template=private_template)
            der = encode_ec_public_key(public)
    except p11.PKCS11Error as exc:
        raise TokenError(f"PKCS#11 token {uri.token_name()} did not create the key "
                         f"({_name(exc)})") from exc
    loaded = serialization.load_der_public_key(der)
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    return loaded
