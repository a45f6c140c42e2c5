"""nRF Cloud's bulk onboarding CSV (``onboard.csv``) from verified manifests.

The layout is the one Nordic's nrfcloud-utils writes (``cli_helpers.save_onboarding_csv``, used
by ``device_credentials_installer`` and ``create_device_credentials``) and ``nrf_cloud_onboard``
posts as ``text/csv`` to the ``POST /v1/devices`` (OnboardDevices / ProvisionDevices) endpoint:
no header row, one row per device, five columns

    <device id>,<subtype>,<tags>,<firmware types>,<certificate PEM>

written with Python's ``csv`` module (``QUOTE_MINIMAL``, LF line terminator, so the multi-line
PEM is quoted). Tags and firmware types are separated by ``|`` (nRF Cloud's documentation: "If
you want multiple tags, separate them using a pipe | character in the CSV file"); nrfcloud-utils'
default firmware types are ``APP|MODEM``. nrf_cloud_onboard refuses files over 1000 rows.

Device ID: nrfcloud-utils uses the CSR's common name (the modem's device UUID when ``%KEYGEN``
gets no attributes; ``nrf-<IMEI>`` with ``--id-imei --id-str nrf-``), so the default here is the
certificate's common name (``cn``); ``uuid``, ``imei`` and ``nrf-imei`` are the alternatives.

What is refused (:class:`fleet.errors.ExportError`, every problem named, no row written): two
different devices (another IMEI or device UUID) that would get one device id (nRF Cloud would
onboard one of them with the other's certificate, or refuse the file); a cell a spreadsheet would
run as a formula (OWASP "CSV injection": first character ``=``, ``+``, ``-``, ``@``, tab or CR)
or one with a control character; a device with a certificate but no device id; manifest content
of an unexpected shape. The certificate column is the one cell that starts with ``-``: it must be
exactly a PEM certificate (``-----BEGIN CERTIFICATE-----`` first), which verification parsed. One
device in several manifests is not a conflict: the row of the run that ended last is kept.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from cryptography.x509.oid import NameOID

from fleet.certs.pem import parse_pem_certificates
from fleet.errors import CertificateError, ExportError

__all__ = ["DEVICE_ID_MODES", "FIRMWARE_TYPES", "MAX_ROWS", "OnboardRow", "cell_problem",
           "checked_cell", "onboarding_rows", "split_list", "write_onboarding_csv"]

DEVICE_ID_MODES = ("cn", "uuid", "imei", "nrf-imei")
#: The firmware types nrfcloud-utils documents for ``--fwtypes``.
FIRMWARE_TYPES = ("APP", "MODEM", "BOOT", "SOFTDEVICE", "BOOTLOADER")
#: nrf_cloud_onboard refuses a CSV with more rows than this.
MAX_ROWS = 1000
_GOOD = ("issued", "unchanged", "rewritten", "pre-existing")
_TAG = re.compile(r"[^|;,\"\x00-\x1f\x7f]+\Z")
#: A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Unicode categories of characters that change how a cell reads without showing: controls,
#: format characters (a right-to-left override), line and paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
_PEM_START = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True, kw_only=True)
class OnboardRow:
    device_id: str
    subtype: str
    tags: str  #: ``|``-separated
    firmware_types: str  #: ``|``-separated
    certificate_pem: str

    def as_list(self) -> list[str]:
        return [self.device_id, self.subtype, self.tags, self.firmware_types,
                self.certificate_pem]


def cell_problem(value: str) -> str | None:
    """Why ``value`` must not be a CSV cell (a spreadsheet formula, a control character), or
    ``None``."""
    # Spreadsheets skip leading blanks and read fullwidth signs as their ASCII forms.
    start = unicodedata.normalize("NFKC", value).lstrip()
    if start.startswith(_FORMULA_START):
        return (f"starts with {start[0]!r}: a spreadsheet would run it as a formula "
                "(CSV injection)")
    if any(unicodedata.category(c) in _INVISIBLE for c in value):
        return "has a control or format character"
    return None


def checked_cell(value: str, what: str) -> str:
    """``value`` if it can be a cell (:func:`cell_problem`), else ``ValueError`` naming ``what``."""
    problem = cell_problem(value)
    if problem is not None:
        raise ValueError(f"{what}: {value!r} {problem}")
    return value


def split_list(text: str, what: str, *, allowed: Sequence[str] | None = None) -> str:
    """``a|b``, ``a;b`` or ``a,b`` -> ``a|b``, each item checked (``ValueError``)."""
    items = [item.strip() for item in re.split(r"[|;,]", text)] if text.strip() else []
    for item in items:
        if not _TAG.match(item):
            raise ValueError(f"{what}: {item!r} is empty or has a control or separator "
                             "character")
        if allowed is not None and item not in allowed:
            raise ValueError(f"{what}: {item!r} is not one of {', '.join(allowed)}")
        checked_cell(item, what)
    return "|".join(items)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    """One device of one manifest that has a certificate to export."""

    label: str  #: ``<manifest>: device <imei>``
    path: str
    ended: datetime
    order: int  #: position among all entries (a later manifest on the command line wins a tie)
    imei: str | None
    device_uuid: str | None
    row: OnboardRow


def _text(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) and value else None


def _device_id(mode: str, device: Mapping[str, Any], pem: str) -> str | None:
    imei, device_uuid = _text(device, "imei"), _text(device, "device_uuid")
    if mode == "imei":
        return imei
    if mode == "nrf-imei":
        return None if imei is None else f"nrf-{imei}"
    if mode == "uuid":
        return device_uuid
    cert = parse_pem_certificates(pem, "certificate", exactly_one=True)[0]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _pick(keys: list[Any], key_name: str | None) -> tuple[str | None, str]:
    """The certificate PEM to export from a device's ``keys`` and, when there is none, why."""
    found = [(k.get("name"), k["certificate"]) for k in keys
             if isinstance(k, Mapping) and isinstance(k.get("certificate"), Mapping)]
    if key_name is not None:
        found = [f for f in found if f[0] == key_name]
    good = [(name, c) for name, c in found
            if c.get("outcome") in _GOOD and isinstance(c.get("pem"), str)]
    if not good:
        outcomes = ", ".join(f"{name}: {c.get('outcome')}" for name, c in found)
        return None, (f"no certificate ({outcomes})" if outcomes else "no certificate")
    if len(good) > 1:
        names = ", ".join(str(name) for name, _ in good)
        return None, f"certificates for several keys ({names}): choose one with --key"
    return str(good[0][1]["pem"]), ""


def _ended(path: str, signed: Mapping[str, Any]) -> datetime:
    run = signed.get("run")
    text = run.get("ended_at") if isinstance(run, Mapping) else None
    try:
        moment = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise ExportError([f"{path}: run.ended_at {text!r} is not an RFC 3339 time with a zone "
                           "(the export keeps the row of the run that ended last)"])
    return moment


def _device_label(path: str, device: Mapping[str, Any], index: int) -> str:
    name = _text(device, "imei") or _text(device, "device_uuid")
    if name is not None:
        return f"{path}: device {name}"
    slot = _text(device, "slot")
    return f"{path}: device in slot {slot}" if slot else f"{path}: devices[{index}]"


class _Collector:
    """Walks the manifests, keeping every entry, every skipped device and every problem."""

    def __init__(self, *, device_id: str, subtype: str, tags: str, firmware_types: str,
                 key_name: str | None) -> None:
        self.mode, self.key_name = device_id, key_name
        self.cells = (subtype, tags, firmware_types)
        self.entries: list[_Entry] = []
        self.warnings: list[str] = []
        self.problems: list[str] = []

    def manifest(self, path: str, document: Any) -> None:
        signed = document.get("signed") if isinstance(document, Mapping) else None
        devices = signed.get("devices") if isinstance(signed, Mapping) else None
        if not isinstance(signed, Mapping) or not isinstance(devices, list):
            raise ExportError([f"{path}: not a manifest (no signed.devices list)"])
        ended = _ended(path, signed)
        for index, device in enumerate(devices):
            if not isinstance(device, Mapping):
                self.problems.append(f"{path}: devices[{index}]: not an object")
                continue
            self.device(path, ended, device, _device_label(path, device, index))

    def device(self, path: str, ended: datetime, device: Mapping[str, Any], label: str) -> None:
        keys = device.get("keys")
        imei, device_uuid = device.get("imei"), device.get("device_uuid")
        if (not isinstance(keys, list) or not isinstance(imei, str | None)
                or not isinstance(device_uuid, str | None)):
            self.problems.append(f"{label}: keys, imei or device_uuid of an unexpected type")
            return
        pem, why = _pick(keys, self.key_name)
        if pem is None:
            self.warnings.append(f"{label}: skipped: {why}")
            return
        if not pem.startswith(_PEM_START):
            self.problems.append(f"{label}: the certificate does not start with {_PEM_START}")
            return
        try:
            ident = _device_id(self.mode, device, pem)
        except CertificateError as exc:
            self.problems.append(f"{label}: {exc}")
            return
        if not ident:
            self.problems.append(f"{label}: has a certificate but no {self.mode} to make its "
                                 "device id (choose another --device-id)")
            return
        problem = cell_problem(ident)
        if problem is not None:
            self.problems.append(f"{label}: device id ({self.mode}) {ident!r} {problem}")
            return
        subtype, tags, firmware_types = self.cells
        self.entries.append(_Entry(
            label=label, path=path, ended=ended, order=len(self.entries), imei=imei or None,
            device_uuid=device_uuid or None,
            row=OnboardRow(device_id=ident, subtype=subtype, tags=tags,
                           firmware_types=firmware_types, certificate_pem=pem)))

    def latest_per_device(self) -> list[_Entry]:
        """One entry per device (IMEI, else device UUID): the one whose run ended last."""
        groups: dict[tuple[str, str], list[_Entry]] = {}
        for entry in self.entries:
            identity = (("imei", entry.imei) if entry.imei is not None else
                        ("uuid", entry.device_uuid) if entry.device_uuid is not None else
                        ("entry", str(entry.order)))
            groups.setdefault(identity, []).append(entry)
        kept = []
        for (kind, name), group in groups.items():
            uuids = sorted({e.device_uuid for e in group if e.device_uuid is not None})
            if kind == "imei" and len(uuids) > 1:
                listing = ", ".join(f"{e.device_uuid} ({e.path})" for e in group)
                self.problems.append(f"IMEI {name} is recorded with different device UUIDs: "
                                     f"{listing}: these are not one device")
                continue
            latest = max(group, key=lambda e: (e.ended, e.order))
            older = [e.path for e in group
                     if e.row.certificate_pem != latest.row.certificate_pem]
            if older:
                self.warnings.append(
                    f"{latest.label}: exported with the certificate of this manifest, whose run "
                    f"ended last; {', '.join(older)} record(s) another certificate for it")
            kept.append(latest)
        by_uuid: dict[str, list[_Entry]] = {}
        for entry in kept:
            if entry.device_uuid is not None:
                by_uuid.setdefault(entry.device_uuid, []).append(entry)
        for device_uuid, same in by_uuid.items():
            if len(same) > 1:
                self.problems.append(f"device UUID {device_uuid} is recorded for more than "
                                     f"one device: {'; '.join(e.label for e in same)}")
        return kept

    def unique_ids(self, kept: list[_Entry]) -> None:
        by_id: dict[str, list[_Entry]] = {}
        for entry in kept:
            by_id.setdefault(entry.row.device_id, []).append(entry)
        for ident, same in by_id.items():
            if len(same) > 1:
                self.problems.append(
                    f"device id {ident!r} ({self.mode}) would be shared by {len(same)} "
                    f"different devices: {'; '.join(e.label for e in same)} (nRF Cloud "
                    "onboards one device per id: make the ids unique, e.g. a CN template "
                    "with {imei}, or choose another --device-id)")


def onboarding_rows(manifests: Iterable[tuple[str, Mapping[str, Any]]], *, device_id: str,
                    subtype: str, tags: str, firmware_types: str, key_name: str | None = None
                    ) -> tuple[list[OnboardRow], list[str]]:
    """One row per device with a certificate in the (already verified) manifests, and warnings
    for the devices left out. A device in several manifests gets the row of the manifest whose
    run ended last. Raises :class:`ExportError` naming every problem (module docstring) instead
    of returning rows that would onboard a device wrongly."""
    if device_id not in DEVICE_ID_MODES:
        raise ValueError(f"device id mode {device_id!r} is not one of {DEVICE_ID_MODES}")
    collector = _Collector(device_id=device_id, subtype=subtype, tags=tags,
                           firmware_types=firmware_types, key_name=key_name)
    for what, value in (("subtype", subtype), ("tags", tags), ("firmware types", firmware_types)):
        problem = cell_problem(value)
        if problem is not None:
            collector.problems.append(f"{what} {value!r} {problem}")
    for path, document in manifests:
        collector.manifest(path, document)
    kept = collector.latest_per_device()
    collector.unique_ids(kept)
    if collector.problems:
        raise ExportError(collector.problems)
    rows = [entry.row for entry in kept]
    warnings = collector.warnings
    if len(rows) > MAX_ROWS:
        warnings.append(f"{len(rows)} rows: nRF Cloud's onboarding takes at most {MAX_ROWS} "
                        "per file (split it)")
    return rows, warnings


def write_onboarding_csv(rows: Iterable[OnboardRow], stream: TextIO) -> None:
    """Write ``rows`` as nrfcloud-utils does: no header, ``QUOTE_MINIMAL``, LF endings."""
    writer = csv.writer(stream, delimiter=",", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    for row in rows:
        writer.writerow(row.as_list())
