"""The value types of plan fields: each rule about one value, written once.

The sections (``fleet.plan.model`` for the records, ``fleet.plan.schema`` and ``fleet.plan.ca``
for the parts of the file that are no record) declare their fields with these ``Annotated``
types, and pydantic checks them on construction: strictly (no ``"5"`` for 5, no ``true`` for 1),
then the rule of the type, whose reason becomes the error. Rules between several fields live
with their section.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from fleet.credentials.attributes import KEYGEN_ATTRIBUTES
from fleet.nrf91 import FUNCTION_MODES, MAX_USER_SEC_TAG
from fleet.plan.templates import ATTRIBUTE_PLACEHOLDERS, MANIFEST_PLACEHOLDERS, Template

__all__ = [
    "BAUDRATES",
    "MAX_SEC_TAG",
    "Attributes",
    "Baudrate",
    "EnvName",
    "FunctionMode",
    "KeyName",
    "KeyUsage",
    "ManifestText",
    "PathText",
    "PlanPath",
    "PlanVersion",
    "Positive",
    "SecTag",
    "Seconds",
    "SlotName",
    "Station",
    "ca_key_usage_problem",
    "misplaced",
    "rule",
]

#: ``%KEYGEN`` documents sec_tags 1..2147483647.
MAX_SEC_TAG = MAX_USER_SEC_TAG
#: Baud rates the nRF91 UARTE supports, from 9600 up.
BAUDRATES = (9600, 14400, 19200, 28800, 31250, 38400, 56000, 57600, 76800, 115200, 230400,
             250000, 460800, 921600, 1000000)


def rule(problem: Callable[[Any], str | None]) -> AfterValidator:
    """A validator that refuses a value for the reason ``problem(value)`` gives (None: fine)."""
    def check(value: Any) -> Any:
        reason = problem(value)
        if reason:
            raise ValueError(reason)
        return value
    return AfterValidator(check)


def misplaced(reason: str) -> PydanticCustomError:
    """The error for a field that does not belong where it is written: the plan check reports
    it at the line of the field's key (the value is not what is wrong)."""
    return PydanticCustomError("misplaced", reason)


def _pattern(regex: str, what: str) -> AfterValidator:
    compiled = re.compile(regex + r"\Z")
    return rule(lambda text: None if compiled.match(text)
                else f"{what} {text!r} must match {regex}")


def _template(allowed: frozenset[str]) -> AfterValidator:
    def problem(text: str) -> str | None:
        try:
            Template.parse(text, allowed)
        except ValueError as exc:
            return str(exc)
        return None
    return rule(problem)


def _path_problem(text: str) -> str | None:
    return None if text.strip() and "\x00" not in text else f"not a usable path: {text!r}"


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


def _version_problem(version: int) -> str | None:
    return None if version == 1 else (f"unsupported plan version {version} (this fleet reads "
                                       "version 1)")


def _path(value: Any) -> Any:
    if isinstance(value, str):
        problem = _path_problem(value)
        if problem:
            raise ValueError(problem)
        return Path(value)
    return value


PlanVersion = Annotated[int, rule(_version_problem)]
SecTag = Annotated[int, Field(ge=1, le=MAX_SEC_TAG)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Positive = Annotated[int, Field(ge=1)]
Baudrate = Annotated[int, rule(_baudrate_problem)]
FunctionMode = Annotated[int, rule(_function_mode_problem)]
Station = Annotated[str, _pattern(r"[A-Za-z0-9._-]{1,64}", "station")]
KeyName = Annotated[str, _pattern(r"[A-Za-z0-9_-]+", "key name")]
SlotName = Annotated[str, _pattern(r"[A-Za-z0-9._-]+", "slot name")]
EnvName = Annotated[str, _pattern(r"[A-Za-z_][A-Za-z0-9_]*", "environment variable name")]
KeyUsage = Annotated[str, rule(key_usage_problem)]
#: A path as the plan writes it (relative to the plan's directory).
PathText = Annotated[str, rule(_path_problem)]
#: A path field of a record: the plan's text (checked like PathText) or a Path.
PlanPath = Annotated[Path, BeforeValidator(_path)]
ManifestText = Annotated[str, _template(MANIFEST_PLACEHOLDERS), rule(_path_problem)]
_AttributeName = Annotated[str, rule(_attribute_problem)]
_AttributeText = Annotated[str, _template(ATTRIBUTE_PLACEHOLDERS)]


class _PairsFromMapping:
    """Validate ``(name, template)`` pairs as the mapping the plan writes, so that each error
    names its entry (``attributes.XX``); keep them as pairs, in the order written."""

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        mapping = handler.generate_schema(dict[_AttributeName, _AttributeText])
        pairs = core_schema.no_info_after_validator_function(lambda d: tuple(d.items()), mapping)
        return core_schema.no_info_before_validator_function(_pairs_as_mapping, pairs)


def _pairs_as_mapping(value: Any) -> Any:
    if isinstance(value, tuple):
        try:
            return dict(value)
        except (TypeError, ValueError):
            pass  # not pairs: refused as not a mapping
    return value


#: ``keys.<name>.attributes``: attribute IDs and their templates.
Attributes = Annotated[tuple[tuple[str, str], ...], _PairsFromMapping()]
