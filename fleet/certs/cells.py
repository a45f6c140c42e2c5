"""CSV cells that are safe to open in a spreadsheet: the one rule every export follows.

A cell a spreadsheet would run as a formula (OWASP "CSV injection": first character ``=``,
``+``, ``-``, ``@``, tab or CR, after the blanks and fullwidth forms a spreadsheet skips) or one
with a control or format character is refused, never written.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["cell_problem", "checked_cell", "split_list"]

_TAG = re.compile(r"[^|;,\"\x00-\x1f\x7f]+\Z")
#: A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Unicode categories of characters that change how a cell reads without showing: controls,
#: format characters (a right-to-left override), line and paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def cell_problem(value: str) -> str | None:
    """Why ``value`` must not be a CSV cell (a spreadsheet formula, a control character), or
    ``None``."""
    # Spreadsheets skip leading blanks and read fullwidth signs as their ASCII forms.
    start = unicodedata.normalize("NFKC", value).lstrip()
    if start.startswith(_FORMULA_START):
        return (f"starts with {start[0]!r}: a spreadsheet would run it as a formula "
                "(CSV injection)")
    if any(unicodedata.category(c) in _INVISIBLE for c in value):
        return "has a control or format character"
    return None


def checked_cell(value: str, what: str) -> str:
    """``value`` if it can be a cell (:func:`cell_problem`), else ``ValueError`` naming ``what``."""
    problem = cell_problem(value)
    if problem is not None:
        raise ValueError(f"{what}: {value!r} {problem}")
    return value


def split_list(text: str, what: str, *, allowed: Sequence[str] | None = None) -> str:
    """``a|b``, ``a;b`` or ``a,b`` -> ``a|b``, each item checked (``ValueError``)."""
    items = [item.strip() for item in re.split(r"[|;,]", text)] if text.strip() else []
    for item in items:
        if not _TAG.match(item):
            raise ValueError(f"{what}: {item!r} is empty or has a control or separator "
                             "character")
        if allowed is not None and item not in allowed:
            raise ValueError(f"{what}: {item!r} is not one of {', '.join(allowed)}")
        checked_cell(item, what)
    return "|".join(items)
