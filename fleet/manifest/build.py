"""Build the ``signed`` part of a manifest from the records of a run.

How this works: :func:`build_signed` turns a :class:`fleet.records.RunRecord` into plain JSON data
(dicts, lists, strings, integers, booleans and null; never a float, so RFC 8785 number rules never
come into play) in the layout of DESIGN.md, "Manifest". Devices are sorted by slot (digit runs
compared as numbers, so ``slot2`` comes before ``slot10``) then IMEI; keys keep the plan's order.
A key's ``extra`` entries are merged into its object (certificates, later). For a key with a
``%KEYGEN`` answer, ``csr_pem`` / ``public_key_pem`` / ``cose_payload`` that the record leaves
``None`` are filled from the answer (:func:`answer_fields`), which is also what ``fleet verify``
recomputes and compares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from fleet.credentials import PAYLOAD_ID_CSR, PAYLOAD_ID_PUBLIC_KEY, KeygenAnswer, parse_keygen
from fleet.errors import CredentialError, ManifestError
from fleet.records import (
    DeviceOutcome,
    DeviceRecord,
    KeyOutcome,
    KeyRecord,
    RunRecord,
)

__all__ = [
    "DEVICE_FIELDS",
    "FORMAT",
    "KEY_FIELDS",
    "MAX_JSON_INT",
    "RESPONSE_PAYLOAD_IDS",
    "answer_fields",
    "build_signed",
    "plain_json",
]

FORMAT = "fleet-manifest/1"

#: The fields of one device object, in the order they are written (``usb`` follows them for a
#: device whose port a usb: form found).
DEVICE_FIELDS = ("slot", "port", "imei", "device_uuid", "model", "firmware", "interface",
                 "terminator", "outcome", "error", "keys")
#: The fields of one key object (``extra`` entries follow them).
KEY_FIELDS = ("name", "sec_tag", "type", "response", "outcome", "keygen_answer", "csr_pem",
              "public_key_pem", "cose_payload", "error", "attempts")
#: ``response`` -> the COSE payload id the modem puts in its answer.
RESPONSE_PAYLOAD_IDS: Mapping[str, int] = {"csr": PAYLOAD_ID_CSR,
                                           "public_key": PAYLOAD_ID_PUBLIC_KEY}

#: RFC 8785 / I-JSON: integers beyond this are not exact in JSON
MAX_JSON_INT = 2**53 - 1


def answer_fields(answer: KeygenAnswer) -> dict[str, Any]:
    """The manifest fields a %KEYGEN answer determines: ``keygen_answer``, ``csr_pem`` (``None``
    for a public-key answer), ``public_key_pem`` (the CSR's key for a CSR) and ``cose_payload``.

    The run layer can build its KeyRecord with ``KeyRecord(..., **answer_fields(answer))``.
    """
    return {
        "keygen_answer": answer.value,
        "csr_pem": answer.csr_pem,
        "public_key_pem": answer.public_key_pem,
        "cose_payload": answer.payload.to_dict(),
    }


def plain_json(value: Any, where: str) -> Any:
    """A deep copy of ``value`` as plain JSON data; ``ManifestError`` naming ``where`` for a
    float, a non-string key, an integer RFC 8785 cannot represent exactly, or any other type."""
    return _plain(value, where, ())


def _where(where: str, path: tuple[str | int, ...]) -> str:
    """``where`` followed by ``.key`` and ``[index]`` steps, built only for an error message."""
    return where + "".join(f"[{step}]" if isinstance(step, int) else f".{step}"
                           for step in path)


def _plain(value: Any, where: str, path: tuple[str | int, ...]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        if not -MAX_JSON_INT <= value <= MAX_JSON_INT:
            raise ManifestError(f"{_where(where, path)}: integer {value} is outside the exact "
                                "JSON range")
        return int(value)
    if isinstance(value, float):
        raise ManifestError(f"{_where(where, path)}: floating-point value {value!r} (manifests "
                            "hold integers and strings only)")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError(f"{_where(where, path)}: key {key!r} is not a string")
            out[str(key)] = _plain(item, where, (*path, key))
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, where, (*path, i)) for i, item in enumerate(value)]
    raise ManifestError(f"{_where(where, path)}: {type(value).__name__} is not JSON data")


def _utc(text: str, where: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: {text!r} is not an RFC 3339 time") from exc
    if moment.utcoffset() != timedelta(0):
        raise ManifestError(f"{where}: {text!r} is not in UTC (expected a time ending in Z)")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _slot_order(device: DeviceRecord) -> tuple[Any, ...]:
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                  for p in re.split(r"(\d+)", device.slot) if p)
    return (parts, device.imei or "")


#: The key fields a %KEYGEN answer determines (filled from the answer when a record lacks them).
_DERIVED = ("csr_pem", "public_key_pem", "cose_payload")


def _key(key: KeyRecord, where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": key.name,
        "sec_tag": key.sec_tag,
        "type": key.type,
        "response": key.response,
        "outcome": KeyOutcome(key.outcome).value,
        "keygen_answer": key.keygen_answer,
        "csr_pem": key.csr_pem,
        "public_key_pem": key.public_key_pem,
        "cose_payload": key.cose_payload,
        "error": key.error,
        "attempts": key.attempts,
    }
    missing = [name for name in _DERIVED if fields[name] is None
               and not (name == "csr_pem" and key.response != "csr")]
    if key.keygen_answer is not None and missing:
        try:
            derived = answer_fields(parse_keygen(key.keygen_answer))
        except CredentialError:
            derived = {}  # recorded as it is; `fleet verify` will name what is wrong with it
        for name, value in derived.items():
            if fields[name] is None:
                fields[name] = value
    if key.deleted:  # only when it happened: earlier manifests never say it
        fields["deleted"] = True
    for name, value in key.extra.items():
        if name in fields:
            raise ManifestError(f"{where}: extra field {name!r} would replace a standard field")
        fields[name] = value
    return fields  # build_signed checks the whole document is plain JSON


def _device(device: DeviceRecord, where: str) -> dict[str, Any]:
    keys = [_key(key, f"{where}.keys[{key.name}]") for key in device.keys]
    fields: dict[str, Any] = {
        "slot": device.slot,
        "port": device.port,
        "imei": device.imei,
        "device_uuid": device.device_uuid,
        "model": device.model,
        "firmware": device.firmware,
        "interface": device.interface,
        "terminator": device.terminator,
        "outcome": DeviceOutcome(device.outcome).value,
        "error": device.error,
        "keys": keys,
    }
    if device.usb is not None:  # only for a port a usb: form found: earlier manifests lack it
        fields["usb"] = device.usb.to_dict()
    if device.attestation is not None:  # only when the plan asked for it: older ones never say
        fields["attestation"] = {"token": device.attestation.token,
                                 "read_at": _utc(device.attestation.read_at,
                                                 f"{where}.attestation.read_at")}
    return fields


def build_signed(run: RunRecord, *, station_public_key_pem: str) -> dict[str, Any]:
    """The ``signed`` object of the manifest of ``run`` (see DESIGN.md, "Manifest").

    ``station_public_key_pem`` is the public key of the key that will sign it
    (:func:`fleet.station_key.public_key_pem`). Raises :class:`ManifestError` for a record that
    cannot be represented exactly (a float, a non-UTC time, an extra field that would replace a
    standard one).
    """
    devices = sorted(run.devices, key=_slot_order)
    device_objects = [
        _device(d, f"device {d.imei or '(no IMEI)'} in slot {d.slot}") for d in devices
    ]
    key_counts = {outcome.value: 0 for outcome in KeyOutcome}
    for device in devices:
        for key in device.keys:
            key_counts[KeyOutcome(key.outcome).value] += 1
    summary: dict[str, Any] = {"devices": len(devices)}
    for outcome in DeviceOutcome:
        summary[outcome.value] = sum(1 for d in devices if d.outcome == outcome)
    summary["keys"] = key_counts
    signed = {
        "format": FORMAT,
        "tool": {"name": "fleet", "version": run.tool_version},
        "station": run.station,
        "station_public_key": station_public_key_pem,
        "plan": {"path": run.plan_path, "sha256": run.plan_sha256},
        "run": {
            "id": run.run_id,
            "started_at": _utc(run.started_at, "run.started_at"),
            "ended_at": _utc(run.ended_at, "run.ended_at"),
            "complete": bool(run.complete),
        },
        "summary": summary,
        "devices": device_objects,
    }
    result: dict[str, Any] = plain_json(signed, "signed")
    return result
