"""Facts about the nRF91 modem that several layers share (reference/nrf91-facts.md)."""

from __future__ import annotations

__all__ = ["ACTIVE_MODES", "FUNCTION_MODES"]

#: Function modes ``AT+CFUN`` documents: 0 off, 1 on, 2 RX only, 4 offline, 20/21 LTE off/on,
#: 30/31 GNSS off/on, 40/41 UICC off/on, 44 offline with UICC.
FUNCTION_MODES = (0, 1, 2, 4, 20, 21, 30, 31, 40, 41, 44)

#: Modes in which ``%CMNG`` writes and ``%KEYGEN`` are refused with ``+CME ERROR: 518``.
ACTIVE_MODES = frozenset({1, 2, 21})
