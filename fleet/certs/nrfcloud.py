"""nRF Cloud's bulk files from verified manifests: onboarding, claiming, device info.

``onboard`` (``onboard.csv``) is the layout nrfcloud-utils writes (``cli_helpers.
save_onboarding_csv``) and ``nrf_cloud_onboard --csv`` posts to ``POST /v1/devices``: no header
row, one row per device, ``<device id>,<subtype>,<tags>,<firmware types>,<certificate PEM>``
(``QUOTE_MINIMAL``, LF line terminator, so the multi-line PEM is quoted). Tags and firmware
types are separated by ``|``; nrfcloud-utils' default firmware types are ``APP|MODEM``;
nrf_cloud_onboard refuses files over 1000 rows.

``claim`` is what ``gather_attestation_tokens`` writes, one line per device,
``f'{imei},{uuid},{attestation_token},{datetime.now(timezone.utc).isoformat()}'`` (no header),
and ``claim_devices --csv`` reads (``imei, uuid, attest_tok, date_time = row[:4]``, then posts
every token): the time is when the token was read (the manifest's ``attestation.read_at``).

``devinfo`` is what ``device_credentials_installer --devinfo`` writes
(``f'{dev_id},{mfw_ver},{imei}'``) and ``nrf_cloud_onboard --devinfo`` reads
(``read_devinfo_csv``: ``[row[0], row[1], row[2]]``, device id, modem firmware, IMEI), to set
each device's firmware version in its shadow and its IMEI as its name. Its device id must be
the onboarding file's: the same ``--device-id`` choices.

Device ID: nrfcloud-utils uses the CSR's common name (the modem's device UUID when ``%KEYGEN``
gets no attributes; ``nrf-<IMEI>`` with ``--id-imei --id-str nrf-``), so the default here is the
certificate's common name (``cn``); ``uuid``, ``imei`` and ``nrf-imei`` are the alternatives.
``claim`` has none: nRF Cloud takes the device from its token.

What is refused (:class:`fleet.errors.ExportError`, every problem named, no row written): two
different devices (another IMEI or device UUID) that would get one device id (nRF Cloud would
onboard one of them with the other's certificate, or refuse the file); a cell a spreadsheet would
run as a formula or one with a control character (:mod:`fleet.certs.cells`); a device with a
certificate but no device id; manifest content of an unexpected shape. The certificate column
is the one cell that starts with ``-``: it must be exactly a PEM certificate (``-----BEGIN
CERTIFICATE-----`` first), which verification parsed. One device in several manifests is not a
conflict: the row of the run that ended last is kept. A device without what the format needs
(a certificate, an attestation token, a firmware string; ``claim`` and ``devinfo`` also a
``done`` outcome) is left out and named in the warnings.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from cryptography.x509.oid import NameOID

from fleet.certs.cells import cell_problem, checked_cell, split_list
from fleet.certs.pem import parse_pem_certificates
from fleet.credentials import parse_attest_token
from fleet.errors import CertificateError, CredentialError, ExportError

__all__ = ["DEVICE_ID_MODES", "EXPORT_FORMATS", "FIRMWARE_TYPES", "MAX_ROWS", "OnboardRow",
           "UnknownKey", "cell_problem", "checked_cell", "export_rows", "onboarding_rows",
           "split_list", "write_onboarding_csv", "write_rows"]

DEVICE_ID_MODES = ("cn", "uuid", "imei", "nrf-imei")
#: ``fleet export nrfcloud --format``: bulk onboarding, bulk claiming, device info.
EXPORT_FORMATS = ("onboard", "claim", "devinfo")
#: The firmware types nrfcloud-utils documents for ``--fwtypes``.
FIRMWARE_TYPES = ("APP", "MODEM", "BOOT", "SOFTDEVICE", "BOOTLOADER")
#: nrf_cloud_onboard refuses a CSV with more rows than this.
MAX_ROWS = 1000
_GOOD = ("issued", "unchanged", "rewritten", "pre-existing")
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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    """One device of one manifest that has what the export's format needs."""

    label: str  #: ``<manifest>: device <imei>``
    path: str
    ended: datetime
    order: int  #: position among all entries (a later manifest on the command line wins a tie)
    imei: str | None
    device_uuid: str | None
    cells: tuple[str, ...]
    device_id: str | None  #: the nRF Cloud device id the row names (None: the format has none)
    #: what another manifest's row of the device must hold too, or a warning says so
    witness: str | None = None


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


class _Skip(Exception):
    """The device is left out of the export (named on stderr)."""


class UnknownKey(Exception):
    """``key_name`` is no key of any device of the manifests: a mistyped option, not a device
    without that certificate. ``names``: the key names they do have."""

    def __init__(self, key_name: str, names: set[str]) -> None:
        super().__init__(f"no device in the manifest(s) has a key named {key_name!r}")
        self.key_name, self.names = key_name, names


class _Collector:
    """Walks the manifests, keeping every entry, every skipped device and every problem."""

    def __init__(self, *, export_format: str, device_id: str, subtype: str, tags: str,
                 firmware_types: str, key_name: str | None) -> None:
        self.format, self.mode, self.key_name = export_format, device_id, key_name
        self.cells = (subtype, tags, firmware_types)
        self.entries: list[_Entry] = []
        self.warnings: list[str] = []
        self.problems: list[str] = []
        self.key_names: set[str] = set()  #: of every device's keys

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
        self.key_names.update(k["name"] for k in keys
                              if isinstance(k, Mapping) and isinstance(k.get("name"), str))
        row = {"onboard": self._onboard, "claim": self._claim, "devinfo": self._devinfo}
        try:
            cells, ident, witness = row[self.format](device, keys)
        except _Skip as why:
            self.warnings.append(f"{label}: skipped: {why}")
            return
        except ExportError as exc:
            self.problems += [f"{label}: {problem}" for problem in exc.problems]
            return
        self.entries.append(_Entry(
            label=label, path=path, ended=ended, order=len(self.entries), imei=imei or None,
            device_uuid=device_uuid or None, cells=cells, device_id=ident, witness=witness))

    def _ident(self, device: Mapping[str, Any], pem: str) -> str:
        try:
            ident = _device_id(self.mode, device, pem)
        except CertificateError as exc:
            raise ExportError([str(exc)]) from exc
        if not ident:
            raise ExportError([f"has a certificate but no {self.mode} to make its device id "
                               "(choose another --device-id)"])
        problem = cell_problem(ident)
        if problem is not None:
            raise ExportError([f"device id ({self.mode}) {ident!r} {problem}"])
        return ident

    def _onboard(self, device: Mapping[str, Any], keys: list[Any]
                 ) -> tuple[tuple[str, ...], str, str]:
        pem, why = _pick(keys, self.key_name)
        if pem is None:
            raise _Skip(why)
        if not pem.startswith(_PEM_START):
            raise ExportError([f"the certificate does not start with {_PEM_START}"])
        ident = self._ident(device, pem)
        return (ident, *self.cells, pem), ident, pem

    @staticmethod
    def _done(device: Mapping[str, Any]) -> None:
        if device.get("outcome") != "done":
            raise _Skip(f"its outcome is {device.get('outcome')!r}, not done")

    def _claim(self, device: Mapping[str, Any], keys: list[Any]
               ) -> tuple[tuple[str, ...], None, None]:
        self._done(device)
        attestation = device.get("attestation")
        if not isinstance(attestation, Mapping):
            raise _Skip("no attestation token (its plan did not set attestation_token: true)")
        imei, token, read_at = (_text(device, "imei"), _text(attestation, "token"),
                                _text(attestation, "read_at"))
        if imei is None or token is None or read_at is None:
            raise ExportError(["an attestation without a token, a read_at time or an IMEI"])
        try:
            device_uuid = str(parse_attest_token(token).device_uuid)
            moment = datetime.fromisoformat(read_at)
        except (CredentialError, ValueError) as exc:
            raise ExportError([f"its attestation does not decode: {exc}"]) from exc
        # gather_attestation_tokens writes datetime.now(timezone.utc).isoformat()
        cells = (imei, device_uuid, token, moment.astimezone(UTC).isoformat())
        return _checked(cells, ("IMEI", "device UUID", "token", "time")), None, None

    def _devinfo(self, device: Mapping[str, Any], keys: list[Any]
                 ) -> tuple[tuple[str, ...], str, None]:
        self._done(device)
        firmware = _text(device, "firmware")
        if firmware is None:
            raise _Skip("no modem firmware recorded")
        pem = ""
        if self.mode == "cn":
            picked, why = _pick(keys, self.key_name)
            if picked is None:
                raise _Skip(f"{why} to take its device id (cn) from: choose another "
                            "--device-id")
            pem = picked
        ident = self._ident(device, pem)
        cells = (ident, firmware, _text(device, "imei") or "")
        return _checked(cells, ("device id", "modem firmware", "IMEI")), ident, None

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
            older = [e.path for e in group if e.witness != latest.witness]
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
            if entry.device_id is not None:
                by_id.setdefault(entry.device_id, []).append(entry)
        for ident, same in by_id.items():
            if len(same) > 1:
                self.problems.append(
                    f"device id {ident!r} ({self.mode}) would be shared by {len(same)} "
                    f"different devices: {'; '.join(e.label for e in same)} (nRF Cloud "
                    "onboards one device per id: make the ids unique, e.g. a CN template "
                    "with {imei}, or choose another --device-id)")


def _checked(cells: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    problems = [f"{name} {cell!r} {problem}" for name, cell in zip(names, cells, strict=True)
                if (problem := cell_problem(cell)) is not None]
    if problems:
        raise ExportError(problems)
    return cells


def export_rows(manifests: Iterable[tuple[str, Mapping[str, Any]]], *, export_format: str,
                device_id: str = "cn", subtype: str = "", tags: str = "",
                firmware_types: str = "", key_name: str | None = None
                ) -> tuple[list[tuple[str, ...]], list[str]]:
    """The rows of ``export_format`` (:data:`EXPORT_FORMATS`) for the (already verified)
    manifests, one per device that has what the format needs, and warnings naming the devices
    left out. A device in several manifests gets the row of the manifest whose run ended last.
    Raises :class:`UnknownKey` for a ``key_name`` no device has, and :class:`ExportError`
    naming every problem (module docstring) instead of returning rows that would onboard or
    claim a device wrongly."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export format {export_format!r} is not one of {EXPORT_FORMATS}")
    if device_id not in DEVICE_ID_MODES:
        raise ValueError(f"device id mode {device_id!r} is not one of {DEVICE_ID_MODES}")
    collector = _Collector(export_format=export_format, device_id=device_id, subtype=subtype,
                           tags=tags, firmware_types=firmware_types, key_name=key_name)
    for what, value in (("subtype", subtype), ("tags", tags), ("firmware types", firmware_types)):
        problem = cell_problem(value)
        if problem is not None:
            collector.problems.append(f"{what} {value!r} {problem}")
    for path, document in manifests:
        collector.manifest(path, document)
    if key_name is not None and key_name not in collector.key_names:
        raise UnknownKey(key_name, collector.key_names)
    kept = collector.latest_per_device()
    collector.unique_ids(kept)
    if collector.problems:
        raise ExportError(collector.problems)
    rows = [entry.cells for entry in kept]
    warnings = collector.warnings
    if export_format == "onboard" and len(rows) > MAX_ROWS:
        warnings.append(f"{len(rows)} rows: nRF Cloud's onboarding takes at most {MAX_ROWS} "
                        "per file (split it)")
    return rows, warnings


def onboarding_rows(manifests: Iterable[tuple[str, Mapping[str, Any]]], *, device_id: str,
                    subtype: str, tags: str, firmware_types: str, key_name: str | None = None
                    ) -> tuple[list[OnboardRow], list[str]]:
    """:func:`export_rows` of the onboarding format, as :class:`OnboardRow` records."""
    rows, warnings = export_rows(manifests, export_format="onboard", device_id=device_id,
                                 subtype=subtype, tags=tags, firmware_types=firmware_types,
                                 key_name=key_name)
    return [OnboardRow(device_id=r[0], subtype=r[1], tags=r[2], firmware_types=r[3],
                       certificate_pem=r[4]) for r in rows], warnings


def write_rows(rows: Iterable[Sequence[str]], stream: TextIO) -> None:
    """Write ``rows`` as nrfcloud-utils does: no header, ``QUOTE_MINIMAL``, LF endings (its
    claim and device-info files are written line by line with the same result: none of their
    cells needs quoting)."""
    writer = csv.writer(stream, delimiter=",", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)


def write_onboarding_csv(rows: Iterable[OnboardRow], stream: TextIO) -> None:
    """Write onboarding ``rows`` as nrfcloud-utils does (:func:`write_rows`)."""
    write_rows((row.as_list() for row in rows), stream)
