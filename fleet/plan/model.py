"""The typed plan: what ``load_plan`` returns and the run code consumes.

Every record is a frozen, slotted, keyword-only dataclass that validates itself on construction
(raising ``ValueError``), so a ``Plan`` built by hand in a test is held to the same rules as one
read from YAML. The loader reports the same problems earlier, with file and line, through the
``*_problem`` helpers below; the checks here are the safety net.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from fleet.at import Command, check_string
from fleet.certs.authority import CommandCa, LocalCa
from fleet.credentials.attributes import KEYGEN_ATTRIBUTES, validate_attribute_value
from fleet.faults import FAULT_NAMES, fault_problem
from fleet.nrf91 import FUNCTION_MODES
from fleet.nrf91 import MAX_USER_SEC_TAG as MAX_SEC_TAG
from fleet.nrf91 import MODEL_NAMES as MODELS
from fleet.nrf91 import PROFILE_NAMES as PROFILES
from fleet.plan.templates import ATTRIBUTE_PLACEHOLDERS, MANIFEST_PLACEHOLDERS, Template

__all__ = [
    "BAUDRATES",
    "FAULT_NAMES",
    "MAX_SEC_TAG",
    "IfExists",
    "KeySpec",
    "KeyType",
    "Plan",
    "Response",
    "Settings",
    "SimulatorSettings",
    "Slot",
]

#: Baud rates the nRF91 UARTE supports, from 9600 up.
BAUDRATES = (9600, 14400, 19200, 28800, 31250, 38400, 56000, 57600, 76800, 115200, 230400,
             250000, 460800, 921600, 1000000)

STATION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
KEY_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
SLOT_NAME_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class KeyType(StrEnum):
    """``%KEYGEN`` ``<key_type>``."""

    CLIENT_KEY = "client_key"
    ENDORSEMENT_KEY = "endorsement_key"

    @property
    def code(self) -> int:
        """The ``<key_type>`` number (also the ``%CMNG`` ``<type>``)."""
        return 2 if self is KeyType.CLIENT_KEY else 8


class Response(StrEnum):
    """``%KEYGEN`` ``<response_content>``."""

    CSR = "csr"
    PUBLIC_KEY = "public_key"

    @property
    def code(self) -> int:
        """The ``<response_content>`` number."""
        return 0 if self is Response.CSR else 1


class IfExists(StrEnum):
    """What to do when a client key is already in its sec_tag and fleet did not make it."""

    KEEP = "keep"
    REPLACE = "replace"
    FAIL = "fail"


def key_usage_problem(value: str) -> str | None:
    """Why ``value`` is not a ``<key_usage>`` the modem accepts, or None."""
    if len(value) != 9 or set(value) - {"0", "1"}:
        return f"key_usage must be exactly 9 binary digits (0/1), not {value!r}"
    if value[8] == "1":
        return (f"key_usage {value!r} sets decipherOnly (the 9th digit), which the modem does "
                "not support")
    return None


def ca_key_usage_problem(value: str | None) -> str | None:
    """Why a key with ``ca:`` cannot request ``value`` as its key usage, or None: a client
    certificate must not have keyCertSign or cRLSign (digits 6 and 7)."""
    if value is not None and "1" in value[5:7]:
        return (f"key_usage {value!r} sets keyCertSign or cRLSign (the 6th and 7th digits), "
                "which a client certificate must not have")
    return None


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise ValueError(reason)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Per-slot port and retry settings (``defaults:``, overridden by ``slots[].settings:``)."""

    baudrate: int = 115200
    timeout_s: float = 20.0
    keygen_timeout_s: float = 30.0
    retries: int = 3
    reopen_attempts: int = 2  #: reopens of the port in one recovery
    device_deadline_s: float = 120.0  #: no retry or reopen starts later than this into a device
    probe_timeout_s: float = 3.0  #: wait for each of the two first-contact ``AT`` probes
    restore_function_mode: bool = True
    rtscts: bool = True
    concurrency: int | None = None  #: plan-wide: at most this many slots at once (None: all)

    def __post_init__(self) -> None:
        _require(_is_int(self.baudrate) and self.baudrate in BAUDRATES,
                 f"baudrate must be one of {BAUDRATES}, not {self.baudrate!r}")
        for name in ("timeout_s", "keygen_timeout_s", "device_deadline_s", "probe_timeout_s"):
            value = getattr(self, name)
            _require(isinstance(value, int | float) and not isinstance(value, bool)
                     and 0 < value < float("inf"), f"{name} must be > 0, not {value!r}")
        _require(_is_int(self.retries) and 0 <= self.retries <= 10,
                 f"retries must be 0..10, not {self.retries!r}")
        _require(_is_int(self.reopen_attempts) and 1 <= self.reopen_attempts <= 10,
                 f"reopen_attempts must be 1..10, not {self.reopen_attempts!r}")
        for name in ("restore_function_mode", "rtscts"):
            _require(isinstance(getattr(self, name), bool), f"{name} must be a boolean")
        _require(self.concurrency is None or (_is_int(self.concurrency) and self.concurrency >= 1),
                 f"concurrency must be >= 1 or None, not {self.concurrency!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """One named key spec (``keys.<name>``): what to send as ``%KEYGEN`` for it.

    ``attributes`` holds ``(attribute ID, template)`` pairs in the order written; templates may
    use ``{imei}``, ``{slot}``, ``{station}``, ``{device_uuid}``. For an endorsement key
    ``response`` is always PUBLIC_KEY and ``if_exists`` is KEEP (its ``%KEYGEN`` returns the key
    that is already there)."""

    name: str
    sec_tag: int
    type: KeyType
    response: Response
    attributes: tuple[tuple[str, str], ...] = ()
    key_usage: str | None = None
    if_exists: IfExists = IfExists.KEEP
    ca: LocalCa | CommandCa | None = None
    line: int = 0
    _templates: tuple[Template, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(bool(KEY_NAME_RE.match(self.name)), f"invalid key name {self.name!r}")
        _require(_is_int(self.sec_tag) and 1 <= self.sec_tag <= MAX_SEC_TAG,
                 f"sec_tag must be an integer 1..{MAX_SEC_TAG}, not {self.sec_tag!r}")
        _require(isinstance(self.type, KeyType), f"type must be a KeyType, not {self.type!r}")
        _require(isinstance(self.response, Response), "response must be a Response")
        _require(isinstance(self.if_exists, IfExists), "if_exists must be an IfExists")
        if self.type is KeyType.ENDORSEMENT_KEY:
            _require(self.response is Response.PUBLIC_KEY,
                     "an endorsement key can only return its public key (response: public_key)")
            _require(self.if_exists is IfExists.KEEP,
                     "if_exists does not apply to an endorsement key")
        if self.response is not Response.CSR:
            _require(not self.attributes and self.key_usage is None,
                     "attributes and key_usage are only valid with response: csr")
        if self.key_usage is not None:
            problem = key_usage_problem(self.key_usage)
            _require(problem is None, problem or "")
        if self.ca is not None:
            _require(self.type is KeyType.CLIENT_KEY and self.response is Response.CSR,
                     "ca is only valid for a client_key with response: csr")
            problem = ca_key_usage_problem(self.key_usage)
            _require(problem is None, problem or "")
        templates = []
        for attr, text in self.attributes:
            _require(attr in KEYGEN_ATTRIBUTES, f"attribute {attr!r} is not supported")
            templates.append(Template.parse(text, ATTRIBUTE_PLACEHOLDERS))
        object.__setattr__(self, "_templates", tuple(templates))

    @property
    def uses_device_uuid(self) -> bool:
        """Whether an attribute uses ``{device_uuid}`` (which needs the UUID before KEYGEN)."""
        return any("device_uuid" in t.placeholders for t in self._templates)

    @property
    def placeholders(self) -> frozenset[str]:
        """Every placeholder the attributes use."""
        return frozenset().union(*(t.placeholders for t in self._templates))

    def render_attributes(self, ctx: Mapping[str, str]) -> str | None:
        """The ``<attributes>`` string (``CN=...,O=...``) for one device, or None when the spec
        has no attributes. Raises ValueError when a value is missing from ``ctx`` or the
        rendered value cannot be sent (quote, comma, control character...)."""
        if not self.attributes:
            return None
        pairs = []
        for (attr, _), template in zip(self.attributes, self._templates, strict=True):
            value = template.render(ctx)
            problem = validate_attribute_value(attr, value)
            if problem:
                raise ValueError(f"key {self.name!r}: {problem}")
            pairs.append(f"{attr}={value}")
        text = ",".join(pairs)
        check_string(text)  # ArgumentError is a ValueError
        return text

    def keygen_args(self, ctx: Mapping[str, str]) -> tuple[int | str | None, ...]:
        """The ``%KEYGEN`` arguments: (sec_tag, key_type code, response code or None for an
        endorsement key, attributes or None, key_usage or None)."""
        if self.type is KeyType.ENDORSEMENT_KEY:
            return (self.sec_tag, self.type.code, None, None, None)
        return (self.sec_tag, self.type.code, self.response.code,
                self.render_attributes(ctx), self.key_usage)

    def keygen_command(self, ctx: Mapping[str, str]) -> Command:
        """The ``AT%KEYGEN=...`` command for one device (trailing omitted arguments dropped)."""
        return Command.set("%KEYGEN", *self.keygen_args(ctx))

    def keygen_template(self) -> str:
        """The ``AT%KEYGEN=...`` line with the templates shown unrendered (for display only)."""
        if self.type is KeyType.ENDORSEMENT_KEY:
            args: list[str] = [str(self.sec_tag), str(self.type.code)]
        else:
            attrs = ",".join(f"{a}={t.unrendered()}"
                             for (a, _), t in zip(self.attributes, self._templates, strict=True))
            args = [str(self.sec_tag), str(self.type.code), str(self.response.code),
                    f'"{attrs}"' if attrs else "",
                    f'"{self.key_usage}"' if self.key_usage else ""]
            while args[-1] == "":
                args.pop()
        return "AT%KEYGEN=" + ",".join(args)


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """One device slot: one port, the keys its device gets, and its settings."""

    name: str
    port: str  #: an absolute device path, ``socket://host:port`` or ``sim://N``
    keys: tuple[KeySpec, ...]
    settings: Settings = Settings()
    line: int = 0

    def __post_init__(self) -> None:
        _require(bool(SLOT_NAME_RE.match(self.name)), f"invalid slot name {self.name!r}")
        _require(bool(self.port), "a slot needs a port")
        _require(bool(self.keys), f"slot {self.name!r} has no keys")
        seen = set()
        for spec in self.keys:
            ident = (spec.sec_tag, spec.type)
            _require(ident not in seen, f"slot {self.name!r} has two keys for sec_tag "
                                        f"{spec.sec_tag} type {spec.type}")
            seen.add(ident)

    @property
    def sim_index(self) -> int | None:
        """N for a ``sim://N`` port, else None."""
        return int(self.port[6:]) if self.port.startswith("sim://") else None


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorSettings:
    """The in-process simulator behind ``sim://`` ports. ``count`` = highest index used + 1.
    ``function_mode`` and ``capacity`` are None for the simulator's own defaults."""

    seed: int = 0
    model: str = "nrf9160"
    profile: str = "fast"
    state: Path | None = None
    log: Path | None = None
    faults: tuple[str, ...] = ()
    function_mode: int | None = None
    capacity: int | None = None
    count: int = 0

    def __post_init__(self) -> None:
        _require(_is_int(self.seed), "seed must be an integer")
        _require(self.model in MODELS, f"model must be one of {MODELS}")
        _require(self.profile in PROFILES, f"profile must be one of {PROFILES}")
        for spec in self.faults:
            problem = fault_problem(spec)
            _require(problem is None, problem or "")
        _require(self.function_mode is None or self.function_mode in FUNCTION_MODES,
                 f"function_mode must be one of {FUNCTION_MODES}")
        _require(self.capacity is None or (_is_int(self.capacity) and self.capacity >= 1),
                 "capacity must be >= 1")
        _require(_is_int(self.count) and self.count >= 0, "count must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A loaded, validated plan. Paths are absolute (resolved against the plan's directory)."""

    path: Path
    sha256: str  #: hex SHA-256 of the plan file's exact bytes
    version: int
    station: str
    signing_key: Path | None
    throwaway_signing_key: bool
    manifest: str  #: the manifest path template, as written
    defaults: Settings
    keys: Mapping[str, KeySpec]
    slots: tuple[Slot, ...]  #: the slots to work on (``--only`` keeps some)
    simulator: SimulatorSettings | None
    #: the plan's other slots, left out by ``--only``: still part of the run's record
    unselected: tuple[Slot, ...] = ()
    journal: Path | None = None  #: ``journal:`` in the plan; None: the default (journal_path)

    def __post_init__(self) -> None:
        _require(self.version == 1, f"unsupported plan version {self.version!r}")
        _require(bool(STATION_RE.match(self.station)), f"invalid station {self.station!r}")
        Template.parse(self.manifest, MANIFEST_PLACEHOLDERS)

    @property
    def journal_path(self) -> Path:
        """The plan's journal: ``journal:`` in the plan, else ``.fleet/<plan file's stem>.
        journal.sqlite`` beside the plan file (so two plans in one directory have two)."""
        if self.journal is not None:
            return self.journal
        return self.path.parent / ".fleet" / f"{self.path.stem}.journal.sqlite"

    def manifest_path(self, *, now: datetime, run_id: str) -> Path:
        """Where this run's manifest goes: ``manifest`` rendered with ``{station}``, ``{date}``
        (YYYYMMDD, UTC), ``{time}`` (HHMMSSZ, UTC) and ``{run_id}``, relative to the plan's
        directory. ``now`` must be timezone-aware."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("manifest_path needs a timezone-aware datetime")
        if not RUN_ID_RE.match(run_id):
            raise ValueError(f"run_id {run_id!r} is not safe in a file name")
        utc = now.astimezone(UTC)
        rendered = Template.parse(self.manifest, MANIFEST_PLACEHOLDERS).render({
            "station": self.station,
            "date": utc.strftime("%Y%m%d"),
            "time": utc.strftime("%H%M%SZ"),
            "run_id": run_id,
        })
        return self._beside_plan(rendered)

    def manifest_directory(self, *, now: datetime) -> Path:
        """The directory of a manifest written at ``now``, as far as it is known before the
        run: the template's directory up to the first part that holds ``{time}`` or
        ``{run_id}`` (those parts are made when the manifest is written)."""
        kept: list[str] = []
        for part in Path(self.manifest).expanduser().parent.parts:
            if "{time}" in part or "{run_id}" in part:
                break
            kept.append(part)
        utc = now.astimezone(UTC)
        rendered = Template.parse(os.path.join(".", *kept), MANIFEST_PLACEHOLDERS).render({
            "station": self.station, "date": utc.strftime("%Y%m%d")})
        return self._beside_plan(rendered)

    @property
    def manifest_pattern(self) -> str:
        """The manifest path template made absolute (``..`` resolved), placeholders kept: what
        `fleet plan check` shows."""
        return str(self._beside_plan(self.manifest))

    def _beside_plan(self, text: str) -> Path:
        return Path(os.path.normpath(self.path.parent / Path(text).expanduser()))

    def template_context(self, slot: Slot, *, imei: str,
                         device_uuid: str | None = None) -> dict[str, str]:
        """The values for attribute templates of one device in ``slot``."""
        ctx = {"imei": imei, "slot": slot.name, "station": self.station}
        if device_uuid is not None:
            ctx["device_uuid"] = device_uuid
        return ctx
