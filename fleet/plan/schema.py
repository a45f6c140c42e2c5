"""The plan's shape, as strict pydantic models, and pydantic errors turned into file:line text.

How this works: each section (the top level, ``defaults``, each ``keys.<name>``, each
``slots[i]``, each ``settings``, ``simulator``) is validated on its own by :func:`check`, with the
path of the section in the document. That way one bad key spec does not hide the errors of a
slot, and every pydantic error location (``("sec_tag",)``, ``("attributes", "XX", "[key]")``)
maps back to a path in the document and so to a line (``Source.line``). Models are strict (no
``"5"`` for 5, no ``true`` for 1) and forbid unknown keys. Rules that need several fields at once
live in the loader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from fleet.credentials.attributes import KEYGEN_ATTRIBUTES
from fleet.nrf91 import FUNCTION_MODES
from fleet.plan.model import (
    BAUDRATES,
    ENV_NAME_RE,
    KEY_NAME_RE,
    MAX_SEC_TAG,
    SLOT_NAME_RE,
    STATION_RE,
    fault_problem,
    key_usage_problem,
)
from fleet.plan.source import Path_, Source
from fleet.plan.templates import ATTRIBUTE_PLACEHOLDERS, MANIFEST_PLACEHOLDERS, Template

__all__ = ["DEFAULT_MANIFEST", "CaDoc", "KeyDoc", "SettingsDoc", "SimulatorDoc", "SlotDoc",
           "TopDoc", "check", "dotted"]

DEFAULT_MANIFEST = "out/{station}-{date}.json"


def _checker(problem: Callable[[Any], str | None]) -> AfterValidator:
    def run(value: Any) -> Any:
        reason = problem(value)
        if reason:
            raise ValueError(reason)
        return value
    return AfterValidator(run)


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


KeyName = Annotated[str, _checker(_pattern(KEY_NAME_RE, "key name"))]
AttributeId = Annotated[str, _checker(lambda a: None if a in KEYGEN_ATTRIBUTES else (
    f"attribute {a!r} is not one the modem supports (supported: "
    f"{', '.join(sorted(KEYGEN_ATTRIBUTES, key=str.lower))})"))]
AttributeValue = Annotated[str, _checker(_template_problem(ATTRIBUTE_PLACEHOLDERS))]
PathText = Annotated[str, _checker(_path_problem)]
Fault = Annotated[str, _checker(fault_problem)]
EnvName = Annotated[str, _checker(_pattern(ENV_NAME_RE, "environment variable name"))]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class TopDoc(_Doc):
    """The top level. Sections are checked on their own, so they are only shapes here."""

    version: int
    station: Annotated[str, _checker(_pattern(STATION_RE, "station"))]
    signing_key: PathText | None = None
    throwaway_signing_key: bool = False
    manifest: Annotated[str, _checker(_template_problem(MANIFEST_PLACEHOLDERS)),
                        _checker(_path_problem)] = DEFAULT_MANIFEST
    defaults: dict[str, Any] | None = None
    keys: dict[KeyName, Any] = Field(min_length=1)
    slots: list[Any] = Field(min_length=1)
    simulator: dict[str, Any] | None = None


class SettingsDoc(_Doc):
    """``defaults`` and ``slots[].settings`` (``model_fields_set`` tells what was written)."""

    baudrate: Annotated[int, _checker(lambda b: None if b in BAUDRATES else (
        f"baudrate {b} is not a rate the nRF91 UART supports "
        f"({', '.join(map(str, BAUDRATES))})"))] = 115200
    timeout_s: float = Field(default=20.0, gt=0)
    keygen_timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)
    restore_function_mode: bool = True
    rtscts: bool = True
    concurrency: int | None = Field(default=None, ge=1)


class KeyDoc(_Doc):
    """``keys.<name>``."""

    sec_tag: int = Field(ge=1, le=MAX_SEC_TAG)
    type: Literal["client_key", "endorsement_key"]
    response: Literal["csr", "public_key"] | None = None
    attributes: dict[AttributeId, AttributeValue] | None = None
    key_usage: Annotated[str, _checker(key_usage_problem)] | None = None
    if_exists: Literal["keep", "replace", "fail"] | None = None
    ca: dict[str, Any] | None = None


class CaDoc(_Doc):
    """``keys.<name>.ca``: a local CA (``cert``, ``key``) or an external ``command``; which
    fields go with which form is checked by the loader (``model_fields_set``)."""

    cert: PathText | None = None
    key: PathText | None = None
    validity_days: int = Field(default=365, ge=1, le=36500)
    key_passphrase_env: EnvName | None = None
    command: Any = None  #: a list of strings or one string: checked by the loader
    timeout_s: float = Field(default=30.0, gt=0)
    issuer: PathText | None = None
    chain: PathText | None = None


class SlotDoc(_Doc):
    """``slots[i]`` (``port`` is a string or a list of strings: checked by the loader)."""

    port: Any
    keys: list[str] = Field(min_length=1)
    name: Annotated[str, _checker(_pattern(SLOT_NAME_RE, "slot name"))] | None = None
    settings: dict[str, Any] | None = None


class SimulatorDoc(_Doc):
    """``simulator``."""

    seed: int = 0
    model: Literal["nrf9160", "nrf9151"] = "nrf9160"
    profile: Literal["fast", "realistic"] = "fast"
    state: PathText | None = None
    log: PathText | None = None
    faults: list[Fault] = []
    function_mode: Annotated[int, _checker(lambda m: None if m in FUNCTION_MODES else (
        f"function_mode {m} is not a documented AT+CFUN mode "
        f"({', '.join(map(str, FUNCTION_MODES))})"))] | None = None
    capacity: int | None = Field(default=None, ge=1)


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


M = TypeVar("M", bound=BaseModel)


def check(model: type[M], data: Any, path: Path_, src: Source,
          report: Callable[[int, str], None]) -> M | None:
    """Validate ``data`` (found at ``path``) against ``model``; report each error with its line
    and return None when there was any."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            described = _describe(err, model, data, path, src)
            if described is not None:
                report(*described)
        return None


def _describe(err: Any, model: type[BaseModel], data: Any, path: Path_,
              src: Source) -> tuple[int, str] | None:
    """``(line, reason)`` for one pydantic error, or None when it only follows from a problem
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
        allowed = ", ".join(model.model_fields)
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
