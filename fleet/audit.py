"""The cross-station audit (``fleet audit``): every manifest of every station, one inventory per
device, and the red flags no single manifest can show.

How this works
--------------
:func:`read_manifest_inventory` verifies one manifest exactly as ``fleet verify`` does and
reduces it to a :class:`ManifestInventory`: per device its slot, IMEI, device UUID and per key
the SHA-256 of its public key (DER) and, for a certificate, of the certificate's public key. A
manifest whose signature, signer or shape fails is not inventoried (what it says is nobody's
word); one whose signature is good but whose content fails (a certificate that is not its key's)
is inventoried too, so the finding says whose key the certificate carries. The parsed document
is dropped as soon as its inventory is made: the caller streams the manifests one at a time (in
worker processes: :mod:`fleet.cmd.audit`), and :class:`Auditor` keeps only small tuples per
device and key, then reports:

- ``duplicate-key``: one public key on two devices, or in two sec_tags;
- ``cloned-uuid``: one device UUID under two IMEIs;
- ``reprovisioned-imei``: one IMEI with different keys in one sec_tag across runs;
- ``foreign-certificate``: a certificate that does not carry its key;
- ``several-stations``: one IMEI provisioned at more than one station;
- ``unverified-manifest``: a manifest that does not verify (or cannot be read).

Each finding carries its evidence: manifest, station, run id, slot, IMEI, device UUID, key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fleet.certs.pem import parse_pem_certificates, public_key_der
from fleet.errors import CertificateError
from fleet.manifest import verify_file
from fleet.pemtext import pem_der
from fleet.regular import read_regular_file
from fleet.station_key import PublicKey

__all__ = ["FINDING_KINDS", "Auditor", "Evidence", "Finding", "KeyEntry", "ManifestInventory",
           "read_manifest_inventory"]

FINDING_KINDS = ("duplicate-key", "cloned-uuid", "reprovisioned-imei", "foreign-certificate",
                 "several-stations", "unverified-manifest")
#: Failed checks after which nothing a manifest says is inventoried.
_UNTRUSTED = frozenset({"json", "shape", "canonical", "signature", "keyid", "station_key",
                        "trust"})
_MANIFEST_PROBLEMS_SHOWN = 5


class KeyEntry(NamedTuple):
    """One key with a public key: ``(name, sec_tag, type, key digest, certificate's key digest
    or None)`` (digests: the first 16 bytes of SHA-256 of the DER SubjectPublicKeyInfo)."""

    name: str
    sec_tag: int
    type: str
    key: bytes
    certificate_key: bytes | None


class DeviceEntry(NamedTuple):
    """One device of a manifest (this and :class:`KeyEntry` are named tuples: the workers
    pickle 100,000 of them back to the auditing process)."""

    slot: str
    imei: str | None
    device_uuid: str | None
    keys: tuple[KeyEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestInventory:
    """What one manifest contributes to the audit."""

    path: str
    station: str | None = None
    run_id: str | None = None
    ended_at: str | None = None
    devices: tuple[DeviceEntry, ...] = ()
    problems: tuple[str, ...] = ()  #: why it does not verify (empty: it verifies)
    inventoried: bool = False  #: its content is taken into the inventory
    warnings: tuple[str, ...] = ()


def _digest(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()[:16]


def _key_digest(pem: Any) -> bytes | None:
    """The digest of a ``public_key_pem``'s DER (verification made sure it is the PEM the
    answer yields; a PEM that is not one is not inventoried)."""
    der = pem_der(pem, "PUBLIC KEY")
    return None if der is None else _digest(der)


def _certificate_digest(certificate: Any) -> bytes | None:
    pem = certificate.get("pem") if isinstance(certificate, dict) else None
    if not isinstance(pem, str):
        return None
    try:
        return _digest(public_key_der(parse_pem_certificates(pem, "certificate",
                                                             exactly_one=True)[0]))
    except CertificateError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _devices(signed: Mapping[str, Any], *, certificates: bool) -> tuple[DeviceEntry, ...]:
    """The inventory of ``signed``'s devices; ``certificates``: read each certificate's key
    (only for a manifest that failed verification: in one that passed, every certificate
    carries its key)."""
    devices = []
    for device in signed.get("devices") or ():
        if not isinstance(device, dict):
            continue
        keys = []
        for key in device.get("keys") or ():
            digest = _key_digest(key.get("public_key_pem")) if isinstance(key, dict) else None
            if digest is None or not isinstance(key.get("sec_tag"), int):
                continue
            keys.append(KeyEntry(str(key.get("name")), key["sec_tag"], str(key.get("type")),
                                 digest, _certificate_digest(key.get("certificate"))
                                 if certificates else None))
        devices.append(DeviceEntry(str(device.get("slot")), _text(device.get("imei")),
                                   _text(device.get("device_uuid")), tuple(keys)))
    return tuple(devices)


def read_manifest_inventory(path: str, trusted: Sequence[PublicKey] | None
                            ) -> ManifestInventory:
    """Verify the manifest at ``path`` (against ``trusted``, as ``fleet verify --pubkey``) and
    make its inventory. Never raises for a bad file: its problems are in the result."""
    try:
        data = read_regular_file(path)
    except OSError as exc:
        return ManifestInventory(path=path, problems=(f"cannot read: {exc.strerror or exc}",))
    report, document = verify_file(data, trusted=trusted)
    problems = tuple(check.line() for check in report.failures)
    if report.ok or not problems:
        problems = () if report.ok else ("no check ran",)
    if (document is None or not report.checks
            or any(check.name in _UNTRUSTED for check in report.failures)):
        return ManifestInventory(path=path, problems=problems, warnings=report.warnings)
    signed = document["signed"]
    run = signed.get("run") if isinstance(signed.get("run"), dict) else {}
    return ManifestInventory(
        path=path, station=_text(signed.get("station")), run_id=_text(run.get("id")),
        ended_at=_text(run.get("ended_at")),
        devices=_devices(signed, certificates=bool(problems)), problems=problems,
        inventoried=True, warnings=report.warnings)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """Where a finding was seen."""

    manifest: str
    station: str | None
    run_id: str | None
    slot: str
    imei: str | None
    device_uuid: str | None
    key: str | None = None
    sec_tag: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "station": self.station, "run_id": self.run_id,
                "slot": self.slot, "imei": self.imei, "device_uuid": self.device_uuid,
                "key": self.key, "sec_tag": self.sec_tag}

    def line(self) -> str:
        where = (f"{self.manifest}: station {self.station}, run {self.run_id}, slot {self.slot}"
                 f", IMEI {self.imei or '-'}, device UUID {self.device_uuid or '-'}")
        return where + (f", key {self.key} (sec_tag {self.sec_tag})" if self.key else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    kind: str
    detail: str
    evidence: tuple[Evidence, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "detail": self.detail,
                "evidence": [e.to_dict() for e in self.evidence]}


# Where one device or key was seen: (manifest index, device index in that manifest's list,
# key index or -1). Kept instead of Evidence objects: a few small integers per key.
_Seen = tuple[int, int, int]


@dataclass
class _Manifest:
    path: str
    station: str | None
    run_id: str | None
    devices: tuple[DeviceEntry, ...]


@dataclass
class Auditor:
    """Takes manifest inventories one at a time (:meth:`add`); :meth:`findings` at the end."""

    manifests: list[_Manifest] = field(default_factory=list)
    unverified: list[ManifestInventory] = field(default_factory=list)
    devices: int = 0
    keys: int = 0
    _by_key: dict[bytes, list[_Seen]] = field(default_factory=dict)
    _by_uuid: dict[str, dict[str, _Seen]] = field(default_factory=dict)
    _by_tag: dict[tuple[str, int, str], dict[bytes, list[_Seen]]] = field(default_factory=dict)
    _stations: dict[str, dict[str, _Seen]] = field(default_factory=dict)
    _foreign: list[_Seen] = field(default_factory=list)

    def add(self, inventory: ManifestInventory) -> None:
        if inventory.problems:
            self.unverified.append(inventory)
        if not inventory.inventoried:
            return
        index = len(self.manifests)
        self.manifests.append(_Manifest(inventory.path, inventory.station, inventory.run_id,
                                        inventory.devices))
        station = inventory.station or ""
        for d_index, device in enumerate(inventory.devices):
            self.devices += 1
            seen: _Seen = (index, d_index, -1)
            if device.imei is not None:
                self._stations.setdefault(device.imei, {}).setdefault(station, seen)
                if device.device_uuid is not None:
                    self._by_uuid.setdefault(device.device_uuid, {}).setdefault(device.imei,
                                                                                seen)
            identity = device.imei or device.device_uuid or f"{inventory.path}#{device.slot}"
            for k_index, key in enumerate(device.keys):
                self.keys += 1
                at: _Seen = (index, d_index, k_index)
                self._by_key.setdefault(key.key, []).append(at)
                self._by_tag.setdefault((identity, key.sec_tag, key.type), {}).setdefault(
                    key.key, []).append(at)
                if key.certificate_key is not None and key.certificate_key != key.key:
                    self._foreign.append(at)

    def _evidence(self, seen: _Seen) -> Evidence:
        manifest = self.manifests[seen[0]]
        device = manifest.devices[seen[1]]
        key = device.keys[seen[2]] if seen[2] >= 0 else None
        return Evidence(manifest=manifest.path, station=manifest.station,
                        run_id=manifest.run_id, slot=device.slot, imei=device.imei,
                        device_uuid=device.device_uuid, key=key.name if key else None,
                        sec_tag=key.sec_tag if key else None)

    def _owner(self, seen: _Seen) -> tuple[str, int, str]:
        device = self.manifests[seen[0]].devices[seen[1]]
        key = device.keys[seen[2]]
        return (device.imei or device.device_uuid or f"{seen[0]}#{device.slot}", key.sec_tag,
                key.type)

    def _finding(self, kind: str, detail: str, seen: Iterable[_Seen]) -> Finding:
        return Finding(kind=kind, detail=detail, evidence=tuple(map(self._evidence, seen)))

    def findings(self) -> list[Finding]:
        """Every finding, in the order of :data:`FINDING_KINDS`."""
        found: list[Finding] = []
        for seen in self._by_key.values():
            owners = {self._owner(s): s for s in seen}
            if len(owners) > 1:
                names = ", ".join(f"{imei} sec_tag {tag}" for imei, tag, _ in sorted(owners))
                found.append(self._finding("duplicate-key", (
                    f"one public key is on {len(owners)} devices or sec_tags ({names}): a "
                    "broken random source, or a key copied between devices"), owners.values()))
        for device_uuid, imeis in self._by_uuid.items():
            if len(imeis) > 1:
                found.append(self._finding("cloned-uuid", (
                    f"device UUID {device_uuid} is recorded under {len(imeis)} IMEIs "
                    f"({', '.join(sorted(imeis))}): a cloned module or a reprogrammed IMEI"),
                    imeis.values()))
        for (identity, sec_tag, key_type), keys in self._by_tag.items():
            if len(keys) > 1:
                found.append(self._finding("reprovisioned-imei", (
                    f"{identity} has {len(keys)} different {key_type} keys in sec_tag "
                    f"{sec_tag} across runs: each replacement needs an explanation"),
                    (seen[0] for seen in keys.values())))
        found += [self._foreign_finding(at) for at in self._foreign]
        for imei, stations in self._stations.items():
            if len(stations) > 1:
                found.append(self._finding("several-stations", (
                    f"IMEI {imei} was provisioned at {len(stations)} stations "
                    f"({', '.join(sorted(stations))})"), stations.values()))
        for inventory in self.unverified:
            shown = "; ".join(inventory.problems[:_MANIFEST_PROBLEMS_SHOWN])
            more = len(inventory.problems) - _MANIFEST_PROBLEMS_SHOWN
            found.append(Finding(kind="unverified-manifest", detail=(
                f"{inventory.path} does not verify: {shown}"
                + (f" (and {more} more)" if more > 0 else "")
                + ("" if inventory.inventoried else "; nothing it says was inventoried"))))
        order = {kind: i for i, kind in enumerate(FINDING_KINDS)}
        return sorted(found, key=lambda f: order[f.kind])

    def _foreign_finding(self, seen: _Seen) -> Finding:
        manifest = self.manifests[seen[0]]
        key = manifest.devices[seen[1]].keys[seen[2]]
        assert key.certificate_key is not None
        owners = self._by_key.get(key.certificate_key, [])
        whose = (f"it carries the key of {', '.join(sorted({self._owner(s)[0] for s in owners}))}"
                 if owners else "it carries a key no inventoried device has")
        return Finding(kind="foreign-certificate", detail=(
            f"the certificate of key {key.name} does not carry the key's public key: {whose}"),
            evidence=(self._evidence(seen), *(self._evidence(s) for s in owners)))
