"""The plan's shape, as strict pydantic-core schemas, and validation errors turned into file:line
text.

How this works: each section (the top level, ``defaults``, each ``keys.<name>``, each
``slots[i]``, each ``settings``, ``simulator``) is validated on its own by :func:`check`, with the
path of the section in the document. That way one bad key spec does not hide the errors of a
slot, and every validation error location (``("sec_tag",)``, ``("attributes", "XX", "[key]")``)
maps back to a path in the document and so to a line (``Source.line``). Fields are strict (no
``"5"`` for 5, no ``true`` for 1) and unknown keys are errors. Rules that need several fields at
once live in the loader.

Why pydantic-core and not pydantic models: the same validator (pydantic's engine, with the same
errors), without importing pydantic's model machinery, which cost about 0.15 s at every start of
``fleet`` - a tenth of the wall time of a re-run with nothing to do. A section is a frozen
dataclass; :data:`_SCHEMAS` gives each field its schema (with its default, if any), and
``fields_set`` tells which fields the plan wrote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from fleet.credentials.attributes import KEYGEN_ATTRIBUTES
from fleet.faults import fault_problem
from fleet.nrf91 import FUNCTION_MODES
from fleet.plan.model import (
    BAUDRATES,
    ENV_NAME_RE,
    KEY_NAME_RE,
    MAX_SEC_TAG,
    SLOT_NAME_RE,
    STATION_RE,
    key_usage_problem,
)
from fleet.plan.source import Path_, Source
from fleet.plan.templates import ATTRIBUTE_PLACEHOLDERS, MANIFEST_PLACEHOLDERS, Template

__all__ = ["DEFAULT_MANIFEST", "CaDoc", "KeyDoc", "SettingsDoc", "SimulatorDoc", "SlotDoc",
           "TopDoc", "check", "dotted", "fields_of"]

DEFAULT_MANIFEST = "out/{station}-{date}.json"

Problem = Callable[[Any], "str | None"]


def _checked(schema: cs.CoreSchema, *problems: Problem) -> cs.CoreSchema:
    """``schema``, then each ``problem(value)`` in turn: a reason it returns is a value error."""
    for problem in problems:
        def run(value: Any, problem: Problem = problem) -> Any:
            reason = problem(value)
            if reason:
                raise ValueError(reason)
            return value
        schema = cs.no_info_after_validator_function(run, schema)
    return schema


def _template_problem(allowed: frozenset[str]) -> Callable[[str], str | None]:
    def problem(text: str) -> str | None:
        try:
            Template.parse(text, allowed)
        except ValueError as exc:
            return str(exc)
        return None
    return problem


def _pattern(regex: Any, what: str) -> Callable[[str], str | None]:
    def problem(text: str) -> str | None:
        if regex.match(text):
            return None
        allowed = regex.pattern.removesuffix(r"\Z")
        return f"{what} {text!r} must match {allowed}"
    return problem


def _path_problem(text: str) -> str | None:
    return None if text.strip() and "\x00" not in text else f"not a usable path: {text!r}"


def _attribute_problem(name: str) -> str | None:
    if name in KEYGEN_ATTRIBUTES:
        return None
    return (f"attribute {name!r} is not one the modem supports (supported: "
            f"{', '.join(sorted(KEYGEN_ATTRIBUTES, key=str.lower))})")


def _baudrate_problem(rate: int) -> str | None:
    if rate in BAUDRATES:
        return None
    return (f"baudrate {rate} is not a rate the nRF91 UART supports "
            f"({', '.join(map(str, BAUDRATES))})")


def _function_mode_problem(mode: int) -> str | None:
    if mode in FUNCTION_MODES:
        return None
    return (f"function_mode {mode} is not a documented AT+CFUN mode "
            f"({', '.join(map(str, FUNCTION_MODES))})")


_STR = cs.str_schema(strict=True)
_BOOL = cs.bool_schema(strict=True)
_ANY = cs.any_schema()
_MAPPING = cs.dict_schema(_STR, _ANY, strict=True)
_PATH = _checked(_STR, _path_problem)


def _int(*, ge: int | None = None, le: int | None = None) -> cs.CoreSchema:
    return cs.int_schema(strict=True, ge=ge, le=le)


def _seconds() -> cs.CoreSchema:
    return cs.float_schema(strict=True, gt=0, allow_inf_nan=False)


def _literal(*values: str) -> cs.CoreSchema:
    return cs.literal_schema(list(values))


def _optional(schema: cs.CoreSchema) -> cs.CoreSchema:
    return cs.nullable_schema(schema)


_NO_DEFAULT = object()


def _fields(**specs: cs.CoreSchema | tuple[cs.CoreSchema, Any]) -> dict[str, cs.ModelField]:
    """Field name -> schema, or (schema, default); an optional field defaults to None, and a
    default of ``list`` is a new empty list each time."""
    out: dict[str, cs.ModelField] = {}
    for name, spec in specs.items():
        schema, default = spec if isinstance(spec, tuple) else (spec, _NO_DEFAULT)
        if default is _NO_DEFAULT and schema["type"] == "nullable":
            default = None
        if default is list:
            schema = cs.with_default_schema(schema, default_factory=list)
        elif default is not _NO_DEFAULT:
            schema = cs.with_default_schema(schema, default=default)
        out[name] = cs.model_field(schema)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class _Doc:
    #: the fields the plan wrote (the others have their defaults)
    fields_set: frozenset[str] = dataclasses.field(default=frozenset(), repr=False,
                                                     compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopDoc(_Doc):
    """The top level. Sections are checked on their own, so they are only shapes here."""

    version: int
    station: str
    signing_key: str | None
    throwaway_signing_key: bool
    manifest: str
    journal: str | None
    defaults: dict[str, Any] | None
    keys: dict[str, Any]
    slots: list[Any]
    simulator: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsDoc(_Doc):
    """``defaults`` and ``slots[].settings`` (``fields_set`` tells what was written)."""

    baudrate: int
    timeout_s: float
    keygen_timeout_s: float
    retries: int
    reopen_attempts: int
    device_deadline_s: float
    probe_timeout_s: float
    restore_function_mode: bool
    rtscts: bool
    concurrency: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyDoc(_Doc):
    """``keys.<name>``."""

    sec_tag: int
    type: Literal["client_key", "endorsement_key"]
    response: Literal["csr", "public_key"] | None
    attributes: dict[str, str] | None
    key_usage: str | None
    if_exists: Literal["keep", "replace", "fail"] | None
    ca: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CaDoc(_Doc):
    """``keys.<name>.ca``: a local CA (``cert``, ``key``) or an external ``command``; which
    fields go with which form is checked by the loader (``fields_set``)."""

    cert: str | None
    key: str | None
    validity_days: int
    key_passphrase_env: str | None
    command: Any  #: a list of strings or one string: checked by the loader
    timeout_s: float
    issuer: str | None
    chain: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotDoc(_Doc):
    """``slots[i]`` (``port`` is a string or a list of strings: checked by the loader)."""

    port: Any
    keys: list[str]
    name: str | None
    settings: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorDoc(_Doc):
    """``simulator``."""

    seed: int
    model: Literal["nrf9160", "nrf9151"]
    profile: Literal["fast", "realistic"]
    state: str | None
    log: str | None
    faults: list[str]
    function_mode: int | None
    capacity: int | None


_SCHEMAS: dict[type[_Doc], dict[str, cs.ModelField]] = {
    TopDoc: _fields(
        version=_int(),
        station=_checked(_STR, _pattern(STATION_RE, "station")),
        signing_key=_optional(_PATH),
        throwaway_signing_key=(_BOOL, False),
        manifest=(_checked(_STR, _template_problem(MANIFEST_PLACEHOLDERS), _path_problem),
                  DEFAULT_MANIFEST),
        journal=_optional(_PATH),
        defaults=_optional(_MAPPING),
        keys=cs.dict_schema(_checked(_STR, _pattern(KEY_NAME_RE, "key name")), _ANY,
                            min_length=1, strict=True),
        slots=cs.list_schema(_ANY, min_length=1, strict=True),
        simulator=_optional(_MAPPING),
    ),
    SettingsDoc: _fields(
        baudrate=(_checked(_int(), _baudrate_problem), 115200),
        timeout_s=(_seconds(), 20.0),
        keygen_timeout_s=(_seconds(), 30.0),
        retries=(_int(ge=0, le=10), 3),
        reopen_attempts=(_int(ge=1, le=10), 2),
        device_deadline_s=(_seconds(), 120.0),
        probe_timeout_s=(_seconds(), 3.0),
        restore_function_mode=(_BOOL, True),
        rtscts=(_BOOL, True),
        concurrency=_optional(_int(ge=1)),
    ),
    KeyDoc: _fields(
        sec_tag=_int(ge=1, le=MAX_SEC_TAG),
        type=_literal("client_key", "endorsement_key"),
        response=_optional(_literal("csr", "public_key")),
        attributes=_optional(cs.dict_schema(
            _checked(_STR, _attribute_problem),
            _checked(_STR, _template_problem(ATTRIBUTE_PLACEHOLDERS)), strict=True)),
        key_usage=_optional(_checked(_STR, key_usage_problem)),
        if_exists=_optional(_literal("keep", "replace", "fail")),
        ca=_optional(_MAPPING),
    ),
    CaDoc: _fields(
        cert=_optional(_PATH),
        key=_optional(_PATH),
        validity_days=(_int(ge=1, le=36500), 365),
        key_passphrase_env=_optional(
            _checked(_STR, _pattern(ENV_NAME_RE, "environment variable name"))),
        command=(_ANY, None),
        timeout_s=(_seconds(), 30.0),
        issuer=_optional(_PATH),
        chain=_optional(_PATH),
    ),
    SlotDoc: _fields(
        port=_ANY,
        keys=cs.list_schema(_STR, min_length=1, strict=True),
        name=_optional(_checked(_STR, _pattern(SLOT_NAME_RE, "slot name"))),
        settings=_optional(_MAPPING),
    ),
    SimulatorDoc: _fields(
        seed=(_int(), 0),
        model=(_literal("nrf9160", "nrf9151"), "nrf9160"),
        profile=(_literal("fast", "realistic"), "fast"),
        state=_optional(_PATH),
        log=_optional(_PATH),
        faults=(cs.list_schema(_checked(_STR, fault_problem), strict=True), list),
        function_mode=_optional(_checked(_int(), _function_mode_problem)),
        capacity=_optional(_int(ge=1)),
    ),
}

_VALIDATORS = {
    doc: SchemaValidator(cs.model_fields_schema(fields, model_name=doc.__name__,
                                                extra_behavior="forbid"))
    for doc, fields in _SCHEMAS.items()
}


def fields_of(doc: _Doc) -> dict[str, Any]:
    """A section's fields as a mapping (without ``fields_set``)."""
    return {name: getattr(doc, name) for name in _SCHEMAS[type(doc)]}


def dotted(path: Path_) -> str:
    """``("slots", 0, "port")`` -> ``slots[0].port``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_TYPE_NAMES = {
    "int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
    "float_type": "a number", "dict_type": "a mapping", "list_type": "a list",
    "int_from_float": "an integer", "finite_number": "a finite number",
    "model_type": "a mapping",
}


def _what(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value!s})"


D = TypeVar("D", bound=_Doc)


def check(model: type[D], data: Any, path: Path_, src: Source,
          report: Callable[[int, str], None]) -> D | None:
    """Validate ``data`` (found at ``path``) against ``model``; report each error with its line
    and return None when there was any."""
    try:
        values, _, written = _VALIDATORS[model].validate_python(data)
    except ValidationError as exc:
        for err in exc.errors():
            described = _describe(err, model, data, path, src)
            if described is not None:
                report(*described)
        return None
    return model(**values, fields_set=frozenset(written))


def _describe(err: Any, model: type[_Doc], data: Any, path: Path_,
              src: Source) -> tuple[int, str] | None:
    """``(line, reason)`` for one validation error, or None when it only follows from a problem
    already reported (a value or mapping entry the YAML walk could not read)."""
    loc = tuple(err["loc"])
    # Walk the error location through the data: keep the parts that exist in the document.
    real: list[str | int] = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            break
        real.append(part)
    full = path + tuple(real)
    kind, value = err["type"], err.get("input")
    if full in src.broken and (kind == "missing" or len(real) == len(loc)):
        return None
    if kind == "extra_forbidden":
        allowed = ", ".join(_SCHEMAS[model])
        return (src.line(full, key=True),
                f"{dotted(full)}: unknown key {str(loc[-1])!r} (allowed here: {allowed})")
    if kind == "missing":
        where = dotted(path + loc)
        return src.line(full, key=True), f"{where}: missing (required)"
    line = src.line(full, key=True) if "[key]" in loc else src.line(full)
    where = dotted(full) or "the plan"
    if kind in _TYPE_NAMES:
        reason = f"expected {_TYPE_NAMES[kind]}, got {_what(value)}"
        found = src.located(full)
        if (kind == "string_type" and value is not None and found is not None and found.plain
                and found.text):
            reason += (f": YAML reads unquoted {found.text} as {_what(value).split(' (')[0]}; "
                       f"write it in quotes: \"{found.text}\"")
        return line, f"{where}: {reason}"
    if kind == "too_short":
        return line, f"{where}: must not be empty"
    message = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    if kind not in ("value_error", "assertion_error"):
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        message = f"{message} (got {shown})"
    return line, f"{where}: {message}"
