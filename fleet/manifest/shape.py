"""The shape of a ``fleet-manifest/1`` document: required fields, their JSON types and values.

How this works: a spec is a tuple of ``(field, JSON type, nullable)``; each check function reports
every problem through a ``fail(name, detail, where)`` callback and returns whether the object can
be read further. Unknown extra fields are allowed (they are covered by the signature; a key's
``extra`` entries are merged into it). The summary is recomputed from the devices.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fleet.at.line import Interface, Terminator
from fleet.jsontype import json_type
from fleet.manifest.build import FORMAT, RESPONSE_PAYLOAD_IDS
from fleet.records import DeviceOutcome, KeyOutcome
from fleet.usbid import usb_identity_problem

__all__ = ["check_device", "check_key", "check_signed", "check_summary"]

Fail = Callable[[str, str, str], None]
Add = Callable[[str, bool, str, str], None]
Spec = tuple[tuple[str, str, bool], ...]

_SIGNED: Spec = (
    ("format", "string", False), ("tool", "object", False), ("station", "string", False),
    ("station_public_key", "string", False), ("plan", "object", False), ("run", "object", False),
    ("summary", "object", False), ("devices", "array", False),
)
_PARTS: Mapping[str, Spec] = {
    "tool": (("name", "string", False), ("version", "string", False)),
    "plan": (("path", "string", False), ("sha256", "string", False)),
    "run": (("id", "string", False), ("started_at", "string", False),
            ("ended_at", "string", False), ("complete", "boolean", False)),
    "summary": (("devices", "integer", False), ("done", "integer", False),
                ("failed", "integer", False), ("interrupted", "integer", False),
                ("keys", "object", False)),
}
_DEVICE: Spec = (
    ("slot", "string", False), ("port", "string", False), ("imei", "string", True),
    ("device_uuid", "string", True), ("model", "string", True), ("firmware", "string", True),
    ("outcome", "string", False), ("error", "string", True), ("keys", "array", False),
)
_KEY: Spec = (
    ("name", "string", False), ("sec_tag", "integer", False), ("type", "string", False),
    ("response", "string", False), ("outcome", "string", False),
    ("keygen_answer", "string", True), ("csr_pem", "string", True),
    ("public_key_pem", "string", True), ("cose_payload", "object", True),
    ("error", "string", True), ("attempts", "integer", False),
)
#: Device fields that manifests written before them lack: checked when present.
_DEVICE_LATER: Mapping[str, tuple[str, ...]] = {
    "interface": tuple(Interface), "terminator": tuple(Terminator)}
_DEVICE_OUTCOMES = tuple(o.value for o in DeviceOutcome)
_KEY_OUTCOMES = tuple(o.value for o in KeyOutcome)


def _fields(obj: Any, spec: Spec, where: str, fail: Fail) -> bool:
    if not isinstance(obj, Mapping):
        fail("shape", f"expected an object, got {json_type(obj)}", where)
        return False
    ok = True
    for name, kind, nullable in spec:
        if name not in obj:
            fail("shape", f"missing field {name!r}", where)
            ok = False
            continue
        actual = json_type(obj[name])
        if actual != kind and not (nullable and actual == "null"):
            fail("shape", f"{name}: expected {kind}{' or null' if nullable else ''}, "
                 f"got {actual}", where)
            ok = False
    return ok


def _one_of(obj: Mapping[str, Any], name: str, allowed: tuple[str, ...], where: str,
            fail: Fail) -> bool:
    if obj[name] in allowed:
        return True
    fail("shape", f"{name}: {obj[name]!r} is not one of {', '.join(allowed)}", where)
    return False


def check_signed(signed: Mapping[str, Any], fail: Fail) -> bool:
    """The top of ``signed``: format, tool, station, plan, run, summary, devices (not each
    device: see :func:`check_device`)."""
    if signed.get("format") != FORMAT:
        fail("shape", f"format {signed.get('format')!r} is not {FORMAT!r} (the only format this "
             "fleet reads)", "signed")
        return False
    ok = _fields(signed, _SIGNED, "signed", fail)
    for part, spec in _PARTS.items():
        if part in signed:
            ok = _fields(signed[part], spec, f"signed.{part}", fail) and ok
    keys = signed.get("summary", {}).get("keys") if ok else None
    if isinstance(keys, Mapping):
        for name, count in keys.items():
            if json_type(count) != "integer":
                fail("shape", f"keys.{name}: expected integer, got {json_type(count)}",
                     "signed.summary")
                ok = False
    return ok


def check_device(device: Any, where: str, fail: Fail) -> tuple[bool, uuid.UUID | None]:
    """``(readable, device UUID or None)`` for one device object (its keys: :func:`check_key`)."""
    if not _fields(device, _DEVICE, where, fail):
        return False, None
    ok = _one_of(device, "outcome", _DEVICE_OUTCOMES, where, fail)
    for name, allowed in _DEVICE_LATER.items():
        if device.get(name) is not None:
            ok = _one_of(device, name, allowed, where, fail) and ok
    device_uuid = None
    if device["device_uuid"] is not None:
        try:
            device_uuid = uuid.UUID(device["device_uuid"])
        except ValueError:
            fail("shape", f"device_uuid: {device['device_uuid']!r} is not a UUID", where)
            ok = False
    if "usb" in device:  # optional: the USB identity of a port a usb: form found
        problem = usb_identity_problem(device["usb"])
        if problem is not None:
            fail("shape", f"usb: {problem}", where)
            ok = False
    return ok, device_uuid


def check_key(key: Any, where: str, fail: Fail) -> bool:
    """Whether one key object has every field, of the right type and value."""
    if not _fields(key, _KEY, where, fail):
        return False
    ok = _one_of(key, "outcome", _KEY_OUTCOMES, where, fail)
    return _one_of(key, "response", tuple(RESPONSE_PAYLOAD_IDS), where, fail) and ok


def check_summary(signed: Mapping[str, Any], add: Add) -> None:
    """The summary must count what the devices say (call only when every device is readable)."""
    devices = signed["devices"]
    expected: dict[str, Any] = {"devices": len(devices)}
    for outcome in _DEVICE_OUTCOMES:
        expected[outcome] = sum(1 for d in devices if d["outcome"] == outcome)
    keys = {outcome: 0 for outcome in _KEY_OUTCOMES}
    for device in devices:
        for key in device["keys"]:
            keys[key["outcome"]] += 1
    expected["keys"] = keys
    summary = dict(signed["summary"])
    # A manifest written before an outcome existed has no count for it: none is zero.
    summary.update({o: summary.get(o, 0) for o in _DEVICE_OUTCOMES})
    if isinstance(summary.get("keys"), Mapping):
        summary["keys"] = {o: 0 for o in _KEY_OUTCOMES} | dict(summary["keys"])
    wrong = [name for name in expected if summary.get(name) != expected[name]]
    if wrong:
        add("summary", False, "summary does not match the devices: "
            + ", ".join(f"{name} is {summary.get(name)!r}, the devices say {expected[name]!r}"
                        for name in wrong), "signed.summary")
    else:
        add("summary", True, "summary matches the devices", "signed.summary")
