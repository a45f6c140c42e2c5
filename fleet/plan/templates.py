"""``{placeholder}`` templates in plan strings (attribute values, the manifest path).

A template is parsed once, at load time, into literal text and placeholder names. Only bare
names from an allowed set are placeholders: ``{imei}`` is one, ``{imei:>20}``, ``{imei!r}``,
``{0}``, ``{imei.real}`` and ``{unknown}`` are errors, and so is an unbalanced brace. ``{{`` and
``}}`` stand for literal braces. Rendering substitutes values without ``str.format`` (so nothing
in a value is ever interpreted) and refuses a missing value instead of leaving a hole.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ATTRIBUTE_PLACEHOLDERS",
    "MANIFEST_PLACEHOLDERS",
    "SAMPLE_DEVICE_UUID",
    "SAMPLE_IMEI",
    "SAMPLE_RUN_ID",
    "Template",
]

#: Placeholders allowed in ``keys.<name>.attributes`` values.
ATTRIBUTE_PLACEHOLDERS = frozenset({"imei", "slot", "station", "device_uuid"})
#: Placeholders allowed in ``manifest``.
MANIFEST_PLACEHOLDERS = frozenset({"station", "date", "time", "run_id"})

#: Values used to render attribute templates at load time (same lengths as real ones).
SAMPLE_IMEI = "000000000000000"
SAMPLE_DEVICE_UUID = "00000000-0000-0000-0000-000000000000"
#: A stand-in for a run id (a UUID) in a manifest path rendered before the run.
SAMPLE_RUN_ID = SAMPLE_DEVICE_UUID

_FORMATTER = string.Formatter()


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """A parsed template: ``parts`` alternates literal text (``str``) and placeholder names
    (``(name,)`` one-tuples), in order."""

    text: str
    parts: tuple[str | tuple[str], ...]

    @classmethod
    def parse(cls, text: str, allowed: frozenset[str]) -> Template:
        """Parse ``text``; raise ValueError naming the problem (unknown placeholder, bad brace)."""
        parts: list[str | tuple[str]] = []
        try:
            pieces = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise ValueError(f"bad template {text!r}: {exc} (write {{{{ or }}}} for a literal "
                             "brace)") from None
        names = ", ".join("{" + name + "}" for name in sorted(allowed))
        for literal, field, spec, conversion in pieces:
            if literal:
                parts.append(literal)
            if field is None:
                continue
            if spec or conversion:
                raise ValueError(f"bad template {text!r}: placeholder {{{field}}} may not have a "
                                 f"format spec or conversion (allowed: {names})")
            if field not in allowed:
                raise ValueError(f"bad template {text!r}: unknown placeholder {{{field}}} "
                                 f"(allowed: {names})")
            parts.append((field,))
        return cls(text=text, parts=tuple(parts))

    @property
    def placeholders(self) -> frozenset[str]:
        """The placeholder names used."""
        return frozenset(part[0] for part in self.parts if isinstance(part, tuple))

    def render(self, values: Mapping[str, str]) -> str:
        """Substitute ``values``; raise ValueError when a used placeholder has no value."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                out.append(str(values[part[0]]))
            except KeyError:
                raise ValueError(f"no value for {{{part[0]}}} in template {self.text!r}") from None
        return "".join(out)

    def unrendered(self) -> str:
        """The template as it would be shown to a user: placeholders as ``{name}``, literal
        braces unescaped."""
        return "".join(p if isinstance(p, str) else "{" + p[0] + "}" for p in self.parts)
