"""Plan sections constructed from the file, and their validation errors turned into file:line
text; the shapes of the parts of the file that are no record (the top level, ``slots[i]``).

How this works: each section (the top level, ``defaults``, each ``keys.<name>``, each
``slots[i]``, each ``settings``, ``simulator``, each ``ca``) is constructed on its own by
:func:`check`, from the mapping at its path in the document. That way one bad key spec does not
hide the errors of a slot, and every validation error location (``("sec_tag",)``,
``("attributes", "XX", "[key]")``) maps back to a path in the document and so to a line
(``Source.line``). A section is a strict pydantic dataclass (``fleet.plan.model``, or the shapes
below), so the rules are the section's own; unknown keys are refused here, before construction,
together with the fields the loader fills in (a key spec's ``name``, the simulator's ``count``),
which the plan may not write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError
from pydantic.dataclasses import dataclass

from fleet.plan.fields import ManifestText, PathText, PlanVersion, SlotName, Station
from fleet.plan.model import STRICT
from fleet.plan.source import Path_, Source

__all__ = ["DEFAULT_MANIFEST", "PlanFile", "SlotEntry", "check", "dotted"]

DEFAULT_MANIFEST = "out/{station}-{date}.json"


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class PlanFile:
    """The top level. Sections are constructed on their own, so they are only shapes here;
    the other fields are those of :class:`~fleet.plan.model.Plan`, as the plan writes them."""

    version: PlanVersion
    station: Station
    signing_key: PathText | None = None
    throwaway_signing_key: bool = False
    manifest: ManifestText = DEFAULT_MANIFEST
    journal: PathText | None = None
    defaults: dict[str, Any] | None = None
    keys: Annotated[dict[str, Any], Field(min_length=1)]  #: names: KeySpec checks them
    slots: Annotated[list[Any], Field(min_length=1)]
    simulator: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class SlotEntry:
    """``slots[i]`` (``port`` is a string or a list of strings: checked by the loader)."""

    port: Any
    keys: Annotated[list[str], Field(min_length=1)]
    name: SlotName | None = None
    settings: dict[str, Any] | None = None


def dotted(path: Path_) -> str:
    """``("slots", 0, "port")`` -> ``slots[0].port``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


T = TypeVar("T")


def check(section: type[T], raw: Any, path: Path_, src: Source,
          report: Callable[[int, str], None], *, supplied: Mapping[str, Any] | None = None,
          ) -> T | None:
    """Construct ``section`` from the mapping ``raw`` found at ``path``, plus the fields
    ``supplied`` by the loader (which the plan may not write); report each problem with its
    line and return None when there was any."""
    supplied = supplied or {}
    where = dotted(path) or "the plan"
    if not isinstance(raw, dict):
        report(src.line(path), f"{where}: expected a mapping, got {_what(raw)}")
        return None
    fields: Mapping[str, dataclasses.Field[Any]] = section.__dataclass_fields__  # type: ignore[attr-defined]
    allowed = [name for name, field in fields.items() if field.init and name not in supplied]
    unknown = [key for key in raw if key not in allowed]
    for key in unknown:
        report(src.line((*path, key), key=True),
               f"{dotted((*path, key))}: unknown key {key!r} (allowed here: {', '.join(allowed)})")
    try:
        made = section(**{k: v for k, v in raw.items() if k in allowed}, **supplied)
    except ValidationError as exc:
        for err in exc.errors():
            described = _describe(err, raw, path, src)
            if described is not None:
                report(*described)
        return None
    return None if unknown else made


_TYPE_NAMES = {
    "int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
    "float_type": "a number", "dict_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list", "int_from_float": "an integer", "finite_number": "a finite number",
}
_MISSING = ("missing", "missing_keyword_only_argument", "missing_argument")


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


def _describe(err: Any, data: Any, path: Path_, src: Source) -> tuple[int, str] | None:
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
    if full in src.broken and (kind in _MISSING or len(real) == len(loc)):
        return None
    if kind in _MISSING:
        return src.line(full, key=True), f"{dotted(path + loc)}: missing (required)"
    key_line = "[key]" in loc or kind == "misplaced"
    line = src.line(full, key=True) if key_line else src.line(full)
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
    if kind not in ("value_error", "assertion_error", "misplaced"):
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        message = f"{message} (got {shown})"
    return line, f"{where}: {message}"
