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
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from cryptography.x509.oid import NameOID

from fleet.certs.pem import parse_pem_certificates
from fleet.errors import CertificateError

__all__ = ["DEVICE_ID_MODES", "FIRMWARE_TYPES", "MAX_ROWS", "OnboardRow", "onboarding_rows",
           "split_list", "write_onboarding_csv"]

DEVICE_ID_MODES = ("cn", "uuid", "imei", "nrf-imei")
#: The firmware types nrfcloud-utils documents for ``--fwtypes``.
FIRMWARE_TYPES = ("APP", "MODEM", "BOOT", "SOFTDEVICE", "BOOTLOADER")
#: nrf_cloud_onboard refuses a CSV with more rows than this.
MAX_ROWS = 1000
_GOOD = ("issued", "unchanged", "rewritten", "pre-existing")
_TAG = re.compile(r"[^|;,\"\x00-\x1f\x7f]+\Z")


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


def split_list(text: str, what: str, *, allowed: Sequence[str] | None = None) -> str:
    """``a|b``, ``a;b`` or ``a,b`` -> ``a|b``, each item checked (``ValueError``)."""
    items = [item.strip() for item in re.split(r"[|;,]", text)] if text.strip() else []
    for item in items:
        if not _TAG.match(item):
            raise ValueError(f"{what}: {item!r} is empty or has a control or separator "
                             "character")
        if allowed is not None and item not in allowed:
            raise ValueError(f"{what}: {item!r} is not one of {', '.join(allowed)}")
    return "|".join(items)


def _device_id(mode: str, device: Mapping[str, Any], pem: str) -> str | None:
    imei, uuid = device.get("imei"), device.get("device_uuid")
    if mode == "imei":
        return imei if isinstance(imei, str) else None
    if mode == "nrf-imei":
        return f"nrf-{imei}" if isinstance(imei, str) else None
    if mode == "uuid":
        return uuid if isinstance(uuid, str) else None
    cert = parse_pem_certificates(pem, "certificate", exactly_one=True)[0]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _pick(device: Mapping[str, Any], key_name: str | None) -> tuple[str | None, str]:
    """The certificate PEM to export for ``device`` and, when there is none, why."""
    found = [(k.get("name"), k["certificate"]) for k in device.get("keys", [])
             if isinstance(k.get("certificate"), Mapping)]
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


def onboarding_rows(manifests: Iterable[tuple[str, Mapping[str, Any]]], *, device_id: str,
                    subtype: str, tags: str, firmware_types: str, key_name: str | None = None
                    ) -> tuple[list[OnboardRow], list[str]]:
    """One row per device with a certificate in the (already verified) manifests, and warnings
    for the devices left out. A device in several manifests gets the row of the manifest whose
    run ended last."""
    if device_id not in DEVICE_ID_MODES:
        raise ValueError(f"device id mode {device_id!r} is not one of {DEVICE_ID_MODES}")
    warnings: list[str] = []
    latest: dict[str, tuple[str, OnboardRow]] = {}
    for path, document in manifests:
        signed = document["signed"]
        ended = str(signed["run"]["ended_at"])
        for device in signed["devices"]:
            label = f"{path}: device {device.get('imei') or device.get('slot')}"
            pem, why = _pick(device, key_name)
            if pem is None:
                warnings.append(f"{label}: skipped: {why}")
                continue
            try:
                ident = _device_id(device_id, device, pem)
            except CertificateError as exc:  # pragma: no cover - verify parsed it already
                warnings.append(f"{label}: skipped: {exc}")
                continue
            if not ident:
                warnings.append(f"{label}: skipped: no {device_id} for a device id")
                continue
            row = OnboardRow(device_id=ident, subtype=subtype, tags=tags,
                             firmware_types=firmware_types, certificate_pem=pem)
            seen = latest.get(ident)
            if seen is not None and seen[1] != row:
                warnings.append(f"{label}: device id {ident} also in an earlier manifest with "
                                "another certificate: the one from the run that ended last is "
                                "exported")
            if seen is None or ended >= seen[0]:
                latest[ident] = (ended, row)
    rows = [row for _, row in latest.values()]
    if len(rows) > MAX_ROWS:
        warnings.append(f"{len(rows)} rows: nRF Cloud's onboarding takes at most {MAX_ROWS} "
                        "per file (split it)")
    return rows, warnings


def write_onboarding_csv(rows: Iterable[OnboardRow], stream: TextIO) -> None:
    """Write ``rows`` as nrfcloud-utils does: no header, ``QUOTE_MINIMAL``, LF endings."""
    writer = csv.writer(stream, delimiter=",", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    for row in rows:
        writer.writerow(row.as_list())
