"""The typed plan: what ``load_plan`` returns and the run code consumes.

Every record is a frozen, slotted, keyword-only pydantic dataclass: it validates itself on
construction (a ``ValidationError``, which is a ``ValueError``), strictly, refusing unknown
fields, so a ``Plan`` built by hand in a test is held to the same rules as one read from YAML.
The loader builds ``Settings``, ``KeySpec`` and ``SimulatorSettings`` straight from their
sections of the file and turns each validation error into ``file:line: reason``
(``fleet.plan.schema``). Each rule of a record is written once: here, or in ``fleet.plan.fields``
when it is about one value. The rules between fields are validators on the later field (they see
the earlier ones in ``info.data``), so each problem is reported at the line of the field it
concerns; what spans sections (slot names, ports, ``--only``) is the loader's.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    Strict,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass

from fleet.at import Command, check_string
from fleet.certs.authority import CommandCa, LocalCa
from fleet.credentials.attributes import validate_attribute_value
from fleet.faults import FAULT_NAMES, fault_modems, fault_problem
from fleet.hsm.uri import Pkcs11Uri
from fleet.nrf91 import CredentialType
from fleet.plan.fields import (
    BAUDRATES,
    MAX_SEC_TAG,
    Attributes,
    Baudrate,
    FunctionMode,
    KeyName,
    KeyUsage,
    ManifestText,
    PlanPath,
    PlanVersion,
    Positive,
    Seconds,
    SecTag,
    SlotName,
    Station,
    ca_key_usage_problem,
    misplaced,
    rule,
)
from fleet.plan.templates import (
    ATTRIBUTE_PLACEHOLDERS,
    MANIFEST_PLACEHOLDERS,
    SAMPLE_RUN_ID,
    Template,
)
from fleet.usbid import UsbIdentity

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
    "attribute_value_problem",
    "fault_modems",
    "key_clash",
]

RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]+\Z")

#: strict (no "5" for 5, no true for 1), unknown fields refused
STRICT = ConfigDict(strict=True, extra="forbid")


class KeyType(StrEnum):
    """``%KEYGEN`` ``<key_type>``."""

    CLIENT_KEY = "client_key"
    ENDORSEMENT_KEY = "endorsement_key"

    @property
    def code(self) -> int:
        """The ``<key_type>`` number (also the ``%CMNG`` ``<type>``)."""
        return int(CredentialType.CLIENT_PRIVATE_KEY if self is KeyType.CLIENT_KEY
                   else CredentialType.ENDORSEMENT_KEY)


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


#: An enum field that the plan writes as its value (``client_key``): strict mode would take
#: only the enum itself.
_ByValue = Strict(False)


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class Settings:
    """Per-slot port and retry settings (``defaults:``, overridden by ``slots[].settings:``)."""

    baudrate: Baudrate = 115200
    timeout_s: Seconds = 20.0
    keygen_timeout_s: Seconds = 30.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    reopen_attempts: Annotated[int, Field(ge=1, le=10)] = 2  #: reopens of the port in one recovery
    #: no retry starts later than this into a device; a key giving up after it ends the device
    device_deadline_s: Seconds = 120.0
    probe_timeout_s: Seconds = 3.0  #: wait for each of the two first-contact ``AT`` probes
    restore_function_mode: bool = True
    rtscts: bool = True
    xonxoff: bool = False  #: software flow control (XON/XOFF)
    dsrdtr: bool = False  #: DSR/DTR hardware flow control
    #: who reads the port: a plain AT host, a Zephyr shell with the ``at`` command, or found
    #: on first contact
    interface: Literal["auto", "at", "shell"] = "auto"
    #: the line end of the AT host (its build-time CONFIG_AT_HOST_TERMINATION), or found on
    #: first contact
    terminator: Literal["auto", "cr", "lf", "crlf", "nul"] = "auto"
    #: read ``%ATTESTTOKEN`` from every device and keep it in the journal and the manifest
    attestation_token: bool = False
    concurrency: Positive | None = None  #: plan-wide: at most this many slots at once (None: all)


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class KeySpec:
    """One named key spec (``keys.<name>``): what to send as ``%KEYGEN`` for it.

    ``attributes`` holds ``(attribute ID, template)`` pairs in the order written (the plan
    writes a mapping); templates may use ``{imei}``, ``{slot}``, ``{station}``,
    ``{device_uuid}``. A client key needs its ``response``; an endorsement key's is always
    PUBLIC_KEY (the default) and its ``if_exists`` is KEEP (its ``%KEYGEN`` returns the key that
    is already there). ``name`` and ``line`` come from where the spec is written."""

    name: KeyName
    sec_tag: SecTag
    type: Annotated[KeyType, _ByValue]
    #: left out: None until __post_init__ puts in the key type's (a default is not validated)
    response: Annotated[Response, _ByValue] = None  # type: ignore[assignment]
    attributes: Attributes = ()
    ca: InstanceOf[LocalCa] | InstanceOf[CommandCa] | None = None  #: loaded by the plan check
    key_usage: KeyUsage | None = None
    if_exists: Annotated[IfExists, _ByValue] = IfExists.KEEP
    line: int = 0
    #: the attributes' templates, parsed once (rendered for every device)
    _templates: tuple[Template, ...] = dataclasses.field(init=False, repr=False, compare=False,
                                                         default=())

    @field_validator("response")
    @classmethod
    def _response(cls, value: Response, info: ValidationInfo) -> Response:
        if info.data.get("type") is KeyType.ENDORSEMENT_KEY and value is not Response.PUBLIC_KEY:
            raise ValueError("an endorsement_key returns only its public key: response must be "
                             "public_key or left out")
        return value

    # The rules between fields. A field that failed, or a response left out (which
    # __post_init__ reports), is not in info.data: the rules that need it wait for it.

    @field_validator("attributes", "key_usage")
    @classmethod
    def _only_in_a_csr(cls, value: Any, info: ValidationInfo) -> Any:
        response = info.data.get("response")
        if info.data.get("type") is KeyType.ENDORSEMENT_KEY:
            why = "for an endorsement_key"
        elif response is not None and response is not Response.CSR:
            why = f"with response: {response}"
        else:
            return value
        raise misplaced(f"{info.field_name} is only valid with response: csr, not {why} (the "
                        "modem would silently ignore it)")

    @field_validator("attributes")
    @classmethod
    def _not_empty(cls, value: Attributes) -> Attributes:
        if not value:
            raise misplaced("attributes is empty: leave it out for the modem's default subject "
                            "CN=<device UUID>")
        return value

    @field_validator("ca")
    @classmethod
    def _ca_for_a_csr(cls, value: Any, info: ValidationInfo) -> Any:
        response = info.data.get("response")
        if value is not None and (info.data.get("type") is not KeyType.CLIENT_KEY
                                  or response not in (None, Response.CSR)):
            raise misplaced("ca is only valid for a client_key with response: csr (a "
                            "certificate is issued for the key's CSR)")
        return value

    @field_validator("key_usage")
    @classmethod
    def _fits_a_client_certificate(cls, value: str | None, info: ValidationInfo) -> str | None:
        problem = ca_key_usage_problem(value) if info.data.get("ca") is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("if_exists")
    @classmethod
    def _client_only(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("type") is KeyType.ENDORSEMENT_KEY:
            raise misplaced("if_exists does not apply to an endorsement_key (its %KEYGEN returns "
                            "the key already in the sec_tag, so it is always safe to send)")
        return value

    def __post_init__(self) -> None:
        if self.response is None:  # left out
            if self.type is KeyType.CLIENT_KEY:
                raise ValueError("response is required for a client_key: csr (a certificate "
                                 "signing request) or public_key")
            object.__setattr__(self, "response", Response.PUBLIC_KEY)
        object.__setattr__(self, "_templates", tuple(
            Template.parse(text, ATTRIBUTE_PLACEHOLDERS) for _, text in self.attributes))

    @property
    def uses_device_uuid(self) -> bool:
        """Whether an attribute uses ``{device_uuid}`` (which needs the UUID before KEYGEN)."""
        return any("device_uuid" in t.placeholders for t in self._templates)

    def render_attributes(self, ctx: Mapping[str, str]) -> str | None:
        """The ``<attributes>`` string (``CN=...,O=...``) for one device, or None when the spec
        has no attributes. Raises ValueError when a value is missing from ``ctx`` or the
        rendered value cannot be sent (quote, comma, control character...)."""
        if not self.attributes:
            return None
        pairs = []
        for (attr, _), template in zip(self.attributes, self._templates, strict=True):
            value = template.render(ctx)
            problem = attribute_value_problem(attr, value)
            if problem:
                raise ValueError(f"key {self.name!r}: {problem}")
            pairs.append(f"{attr}={value}")
        return ",".join(pairs)

    def keygen_args(self, ctx: Mapping[str, str]) -> tuple[int | str | None, ...]:
        """The ``%KEYGEN`` arguments: (sec_tag, key_type code, response code or None for an
        endorsement key, attributes or None, key_usage or None)."""
        if self.type is KeyType.ENDORSEMENT_KEY:
            return self._keygen_args(None)
        return self._keygen_args(self.render_attributes(ctx))

    def _keygen_args(self, attributes: str | None) -> tuple[int | str | None, ...]:
        if self.type is KeyType.ENDORSEMENT_KEY:
            return (self.sec_tag, self.type.code, None, None, None)
        return (self.sec_tag, self.type.code, self.response.code, attributes, self.key_usage)

    def keygen_command(self, ctx: Mapping[str, str]) -> Command:
        """The ``AT%KEYGEN=...`` command for one device (trailing omitted arguments dropped)."""
        return Command.set("%KEYGEN", *self.keygen_args(ctx))

    def keygen_template(self) -> str:
        """The ``AT%KEYGEN=...`` line with the templates shown unrendered (for display only)."""
        attributes = ",".join(f"{attr}={template.unrendered()}" for (attr, _), template
                              in zip(self.attributes, self._templates, strict=True))
        return str(Command.set("%KEYGEN", *self._keygen_args(attributes or None)))


def attribute_value_problem(attr: str, value: str) -> str | None:
    """Why the rendered ``value`` of the attribute ``attr`` cannot be sent to the modem (a
    value it refuses, or a quote or control character that would break the command), or
    None."""
    problem = validate_attribute_value(attr, value)
    if problem is None:
        try:
            check_string(value)
        except ValueError as exc:  # ArgumentError
            problem = str(exc)
    return problem


def key_clash(keys: Sequence[KeySpec]) -> tuple[int, str] | None:
    """The first key of ``keys`` that one slot cannot hold beside an earlier one (the same
    sec_tag and type), as (its index, the reason), or None."""
    seen: dict[tuple[int, KeyType], str] = {}
    for index, spec in enumerate(keys):
        ident = (spec.sec_tag, spec.type)
        if ident in seen:
            return index, (f"keys {seen[ident]!r} and {spec.name!r} are both a {spec.type} at "
                           f"sec_tag {spec.sec_tag}: one slot can hold only one")
        seen[ident] = spec.name
    return None


def _no_clash(keys: tuple[KeySpec, ...]) -> str | None:
    clash = key_clash(keys)
    return clash[1] if clash else None


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class Slot:
    """One device slot: one port, the keys its device gets, and its settings."""

    name: SlotName
    #: an absolute device path, ``socket://host:port`` or ``sim://N``
    port: Annotated[str, Field(min_length=1)]
    keys: Annotated[tuple[KeySpec, ...], Field(min_length=1), rule(_no_clash)]
    settings: Settings = Settings()
    line: int = 0
    #: the USB identity of the port, for a slot a usb: form found (recorded in the manifest)
    usb: InstanceOf[UsbIdentity] | None = None

    @property
    def sim_index(self) -> int | None:
        """N for a ``sim://N`` port, else None."""
        return int(self.port[6:]) if self.port.startswith("sim://") else None


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class SimulatorSettings:
    """The in-process simulator behind ``sim://`` ports. ``count`` = highest index used + 1
    (from the slots, not written in the plan). ``function_mode`` and ``capacity`` are None for
    the simulator's own defaults."""

    seed: int = 0
    model: Literal["nrf9160", "nrf9151"] = "nrf9160"
    profile: Literal["fast", "realistic"] = "fast"
    state: PlanPath | None = None
    log: PlanPath | None = None
    #: the plan writes a list
    faults: Annotated[tuple[Annotated[str, rule(fault_problem)], ...],
                      BeforeValidator(_as_tuple)] = ()
    function_mode: FunctionMode | None = None
    capacity: Positive | None = None
    #: the line in front of every modem (``fleet sim --interface`` and the shell options)
    interface: Literal["at", "shell"] = "at"
    terminator: Literal["cr", "lf", "crlf", "nul"] = "cr"
    prompt: Annotated[str, Field(min_length=1, max_length=32)] = "uart:~$ "
    shell_wildcards: bool = True
    shell_buffer: Annotated[int, Field(ge=2, le=65536)] = 256
    unescape_lf: bool = False
    at_cmd_mode: bool = False
    count: Annotated[int, Field(ge=0)] = 0


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class Plan:
    """A loaded, validated plan. Paths are absolute (resolved against the plan's directory)."""

    path: Path
    sha256: str  #: hex SHA-256 of the plan file's exact bytes
    version: PlanVersion
    station: Station
    signing_key: Path | Pkcs11Uri | None  #: a PEM file, or a key in a PKCS#11 token
    throwaway_signing_key: bool
    manifest: ManifestText  #: the manifest path template, as written
    defaults: Settings
    keys: Annotated[Mapping[str, KeySpec], AfterValidator(MappingProxyType)]
    slots: tuple[Slot, ...]  #: the slots to work on (``--only`` keeps some)
    simulator: SimulatorSettings | None
    #: the plan's other slots, left out by ``--only``: still part of the run's record
    unselected: tuple[Slot, ...] = ()
    journal: Path | None = None  #: ``journal:`` in the plan; None: the default (journal_path)

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

    def sample_manifest_path(self, *, now: datetime) -> Path:
        """The manifest path of a run at ``now`` as far as it is known before the run, its run
        id a stand-in as long as a real one: what is checked before any device (its names
        must fit the file system; ``{date}`` and ``{time}`` always render as long)."""
        return self.manifest_path(now=now, run_id=SAMPLE_RUN_ID)

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
