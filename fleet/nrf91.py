"""Facts about the nRF91 modem that several layers share (reference/nrf91-facts.md)."""

from __future__ import annotations

import unicodedata

__all__ = ["ACTIVE_MODES", "FUNCTION_MODES", "identity_text_problem"]

#: Function modes ``AT+CFUN`` documents: 0 off, 1 on, 2 RX only, 4 offline, 20/21 LTE off/on,
#: 30/31 GNSS off/on, 40/41 UICC off/on, 44 offline with UICC.
FUNCTION_MODES = (0, 1, 2, 4, 20, 21, 30, 31, 40, 41, 44)

#: Modes in which ``%CMNG`` writes and ``%KEYGEN`` are refused with ``+CME ERROR: 518``.
ACTIVE_MODES = frozenset({1, 2, 21})


def identity_text_problem(text: str) -> str | None:
    """Why a model or firmware string (``AT+CGMM``, ``AT+CGMR``) cannot be recorded, or None.

    An nRF91 prints printable text; a NUL, a control character or bytes that are not UTF-8 (the
    line decoder's U+FFFD) mean a garbled line or not an nRF91, and would end up in the journal
    and in the signed manifest."""
    for char in text:
        if char == "\ufffd":
            return "bytes that are not UTF-8"
        if unicodedata.category(char).startswith("C"):
            return f"the control character U+{ord(char):04X}"
    return None
