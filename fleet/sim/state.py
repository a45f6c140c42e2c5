"""The ``--state`` file: JSON for the modems and everything they hold. Pure (no file I/O here).

Shape (documented in the README)::

    {"format": "fleet-sim-state", "version": 1,
     "modems": [{"index": 0, "imei": "...", "device_uuid": "...", "model": "nrf9160",
                 "firmware": "mfw_nrf9160_1.3.5", "function_mode": 0,
                 "identity_public_key_pem": "...", "identity_private_key_pem": "...",
                 "credentials": [{"sec_tag": 16842753, "type": 2, "sha256": "...",
                                  "public_key_pem": "...", "private_key_pem": "...",
                                  "content": null}]}]}

A modem may also have ``cgmm``, what ``AT+CGMM`` prints when it is not its model's string.
``firmware`` and ``cgmm`` may hold any text; a lone surrogate ``\\udcXX`` is sent as the raw byte
``XX`` (a modem that prints bytes that are not UTF-8). ``content`` is the exact text written with
``%CMNG=0`` (``null`` for generated keys);
``private_key_pem`` is set for keys made by ``%KEYGEN`` (it is a simulator). Each modem is one line
of the file, so :class:`StateRenderer` re-serialises only the modems whose ``revision`` changed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.nrf91 import MODELS
from fleet.sim.model import Modem
from fleet.sim.store import Credential, CredentialStore

__all__ = ["FORMAT", "VERSION", "StateRenderer", "modem_from_dict", "modem_to_dict",
           "parse_state"]

FORMAT = "fleet-sim-state"
VERSION = 1


def _credential_to_dict(credential: Credential) -> dict[str, Any]:
    return {
        "sec_tag": credential.sec_tag,
        "type": credential.type,
        "sha256": credential.sha256,
        "public_key_pem": credential.public_key_pem,
        "private_key_pem": credential.private_key_pem,
        "content": None if credential.content is None else credential.content.decode("utf-8"),
    }


def modem_to_dict(modem: Modem) -> dict[str, Any]:
    """The JSON object for one modem."""
    return {
        "index": modem.index,
        "imei": modem.imei,
        "device_uuid": str(modem.device_uuid),
        "model": modem.model.name,
        **({"cgmm": modem.cgmm} if modem.cgmm != modem.model.cgmm else {}),
        "firmware": modem.firmware,
        "function_mode": modem.function_mode,
        "identity_public_key_pem": modem.identity_public_key_pem,
        "identity_private_key_pem": modem.identity_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode("ascii"),
        "credentials": [_credential_to_dict(c) for c in modem.store.entries()],
    }


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise ValueError(f"{where}: missing {name!r}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: {name!r} has the wrong type ({type(value).__name__})")
    return value


def _credential_from_dict(obj: Any, where: str) -> Credential:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a credential must be an object")
    content = obj.get("content")
    private = obj.get("private_key_pem")
    sec_tag = _field(obj, "sec_tag", int, where)
    type_ = _field(obj, "type", int, where)
    if isinstance(content, str):
        credential = Credential.written(sec_tag, type_, content.encode("utf-8"))
    elif isinstance(private, str):
        key = serialization.load_pem_private_key(private.encode("ascii"), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{where}: private_key_pem is not an EC key")
        credential = Credential.generated_key(sec_tag, type_, key)
    else:
        raise ValueError(f"{where}: a credential needs 'content' or 'private_key_pem'")
    return credential


def modem_from_dict(obj: Any, *, capacity: int) -> Modem:
    """One modem from its JSON object; raises ValueError naming the problem."""
    if not isinstance(obj, dict):
        raise ValueError("each modem must be a JSON object")
    index = _field(obj, "index", int, "modem")
    where = f"modem {index}"
    model_name = _field(obj, "model", str, where)
    if model_name not in MODELS:
        raise ValueError(f"{where}: unknown model {model_name!r}")
    try:
        key = serialization.load_pem_private_key(
            _field(obj, "identity_private_key_pem", str, where).encode("ascii"), password=None)
        device_uuid = uuid.UUID(_field(obj, "device_uuid", str, where))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{where}: identity key is not an EC key")
    credentials = tuple(_credential_from_dict(c, f"{where} credential {n}")
                        for n, c in enumerate(_field(obj, "credentials", list, where)))
    return Modem(index=index, imei=_field(obj, "imei", str, where), device_uuid=device_uuid,
                 model=MODELS[model_name], identity_key=key,
                 store=CredentialStore(max(capacity, len(credentials)), credentials),
                 function_mode=_field(obj, "function_mode", int, where),
                 firmware=_field(obj, "firmware", str, where),
                 cgmm=_field(obj, "cgmm", str, where) if "cgmm" in obj else None)


def parse_state(data: bytes, *, capacity: int) -> dict[int, Modem]:
    """Every modem in a state file, by index; raises ValueError naming the problem."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("modems"), list):
        raise ValueError('expected an object with a "modems" list')
    modems: dict[int, Modem] = {}
    for obj in doc["modems"]:
        modem = modem_from_dict(obj, capacity=capacity)
        if modem.index in modems:
            raise ValueError(f"modem index {modem.index} appears twice")
        modems[modem.index] = modem
    return modems


class StateRenderer:
    """Serialise the whole state, re-encoding only the modems that changed since last time."""

    def __init__(self) -> None:
        #: per index: the modem (another board may take its place), its revision, its JSON
        self._cache: dict[int, tuple[Modem, int, str]] = {}

    def render(self, modems: list[Modem]) -> bytes:
        parts: list[str] = []
        for modem in sorted(modems, key=lambda m: m.index):
            cached = self._cache.get(modem.index)
            if cached is None or cached[0] is not modem or cached[1] != modem.revision:
                cached = (modem, modem.revision,
                          json.dumps(modem_to_dict(modem), sort_keys=False))
                self._cache[modem.index] = cached
            parts.append(cached[2])
        head = f'{{"format": "{FORMAT}", "version": {VERSION}, "modems": [\n'
        return (head + ",\n".join(parts) + "\n]}\n").encode("utf-8")
