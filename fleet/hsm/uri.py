"""PKCS#11 URIs (RFC 7512): the name of a key in a hardware token, as a plan writes it.

How this works: ``pkcs11:token=fleet;object=station?module-path=/usr/lib/...&pin-source=env:PIN``
is split into its path attributes (``;``-separated, which token and which object) and its query
attributes (``&``-separated, how to reach it), each value percent-decoded. Only the attributes
fleet acts on are accepted; any other is refused by name rather than silently ignored, because a
selector that is ignored could pick another key. The PIN is never part of the URI:
``pin-value`` is refused (a plan is not a place for a secret), ``pin-source`` names an
environment variable (``env:NAME``) or a file (``file:/path`` or an absolute path). What this
module decides is pure; reading the environment and the PIN is :mod:`fleet.hsm.token`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fleet.errors import TokenError

__all__ = [
    "DEFAULT_MODULE",
    "DEFAULT_PIN_ENV",
    "MODULE_ENV",
    "SCHEME",
    "PinSource",
    "Pkcs11Uri",
    "is_pkcs11_uri",
    "parse_pkcs11_uri",
]

SCHEME = "pkcs11:"
#: The module used when the URI has no ``module-path`` and ``FLEET_PKCS11_MODULE`` is unset:
#: SoftHSM2 as Debian and Ubuntu install it (a development token).
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "FLEET_PKCS11_MODULE"
#: The environment variable read for the PIN when the URI has no ``pin-source``.
DEFAULT_PIN_ENV = "FLEET_PKCS11_PIN"

_PATH_ATTRS = ("token", "manufacturer", "serial", "model", "object", "id", "type")
_QUERY_ATTRS = ("module-path", "pin-source")
_TYPES = ("private", "public", "cert", "secret-key", "data")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class PinSource:
    """Where the PIN is read: an environment variable or a file."""

    kind: Literal["env", "file"]
    name: str  #: the variable's name or the file's path

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI; ``text`` is the URI as written (it never holds a PIN)."""

    text: str
    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    object: str | None = None  #: the object's label (CKA_LABEL)
    id: bytes | None = None  #: the object's CKA_ID
    module_path: str | None = None
    pin_source: PinSource | None = None

    def __str__(self) -> str:
        return self.text

    def object_name(self) -> str:
        """The object as a person reads it: its label, else its id in hex."""
        if self.object is not None:
            return repr(self.object)
        return f"id {self.id.hex()}" if self.id is not None else "(any)"

    def token_name(self) -> str:
        """The token as a person reads it: its label, else its serial number."""
        if self.token is not None:
            return repr(self.token)
        return f"serial {self.serial}" if self.serial is not None else "(the only token)"


def is_pkcs11_uri(text: str) -> bool:
    """True for text that is meant as a PKCS#11 URI (the scheme is case-insensitive)."""
    return text[: len(SCHEME)].lower() == SCHEME


def _decode(value: str, attr: str) -> bytes:
    if _ESCAPE.search(value):
        raise TokenError(f"{attr}: '%' must start a two-digit hex escape like %20")
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "%":
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out += value[i].encode("utf-8")
            i += 1
    return bytes(out)


def _text(value: str, attr: str) -> str:
    try:
        return _decode(value, attr).decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError(f"{attr}: the value is not UTF-8 text once decoded") from None


def _pairs(part: str, sep: str, allowed: tuple[str, ...], where: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in part.split(sep) if part else []:
        name, eq, value = item.partition("=")
        name = name.lower()
        if not eq or not name:
            raise TokenError(f"{where} attribute {item!r} is not name=value")
        if name == "pin-value":
            raise TokenError("pin-value: a PIN must not be written in the plan; name where it "
                             "is read with pin-source=env:NAME or pin-source=file:/path")
        if name not in allowed:
            raise TokenError(f"{where} attribute {name!r} is not supported (supported: "
                             f"{', '.join(allowed)})")
        if name in found:
            raise TokenError(f"{where} attribute {name!r} is given twice")
        found[name] = value
    return found


def _pin_source(text: str) -> PinSource:
    if text.startswith("env:"):
        name = text[4:]
        if not _ENV_NAME.fullmatch(name):
            raise TokenError(f"pin-source: {name!r} is not an environment variable name")
        return PinSource(kind="env", name=name)
    path = text[5:] if text.startswith("file:") else text
    if path.startswith("//"):  # file:///etc/pin: no host part
        path = path[2:]
    if not path.startswith("/"):
        raise TokenError(f"pin-source {text!r}: use env:NAME, file:/absolute/path or an "
                         "absolute path")
    return PinSource(kind="file", name=path)


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse ``text``; :class:`TokenError` naming the problem for anything fleet cannot use."""
    if not is_pkcs11_uri(text):
        raise TokenError(f"{text!r} is not a PKCS#11 URI (it starts with pkcs11:)")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        raise TokenError("a PKCS#11 URI has no spaces or control characters (escape them "
                         "as %20 ...)")
    path, _, query = text[len(SCHEME):].partition("?")
    attrs = _pairs(path, ";", _PATH_ATTRS, "path")
    options = _pairs(query, "&", _QUERY_ATTRS, "query")
    kind = _text(attrs.pop("type"), "type") if "type" in attrs else None
    if kind is not None and kind not in _TYPES:
        raise TokenError(f"type {kind!r} is not a PKCS#11 URI object type ({', '.join(_TYPES)})")
    if kind not in (None, "private"):
        raise TokenError(f"type={kind}: fleet signs with a private key (type=private, or "
                         "leave type out)")
    fields = {name: _text(value, name) for name, value in attrs.items() if name != "id"}
    if "object" not in fields and "id" not in attrs:
        raise TokenError("the URI names no key: add object=<label> (or id=<%-encoded id>)")
    module = _text(options["module-path"], "module-path") if "module-path" in options else None
    if module is not None and not module.startswith("/"):
        raise TokenError(f"module-path {module!r} must be an absolute path")
    pin = _pin_source(_text(options["pin-source"], "pin-source")) \
        if "pin-source" in options else None
    return Pkcs11Uri(
        text=text, token=fields.get("token"), manufacturer=fields.get("manufacturer"),
        serial=fields.get("serial"), model=fields.get("model"), object=fields.get("object"),
        id=_decode(attrs["id"], "id") if "id" in attrs else None, module_path=module,
        pin_source=pin)
