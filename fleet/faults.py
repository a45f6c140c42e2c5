"""The simulator's fault grammar: ``NAME:PROB[:MAX][@I,J,...]``, shared by ``fleet sim --fault``
and a plan's ``simulator.faults`` (so both accept exactly the same specs).

A :class:`FaultSpec` names a fault, a probability per chance, optionally the most times it fires
on one modem (``MAX``: ``keygen-bad-uuid:1:1`` spoils exactly the first answer) and optionally
the modem indexes it targets (``@2,5``). The simulator (:mod:`fleet.sim.faults`) draws each fault
at the one moment it could apply to a received command, in this order (the first three end the
command):

===============  ============================================================================
silent           every command, first: the command is ignored (not executed, never answered)
disconnect       every command, before it is executed: the port drops (pty closed and a new one
                 linked in its place; TCP / in-process connection closed)
reboot           every command, before it is executed: function mode back to 0 (CMEE 0), keys
                 kept, the command is not answered
keygen-fail      a %KEYGEN that passed every check and would produce an answer: ``523``, nothing
                 stored
lost-answer      a %KEYGEN that stored a new key: the key stays stored (and persisted), the answer
                 is never sent and the port drops
keygen-bad-uuid  a %KEYGEN answer: the device UUID in its COSE payload has its lowest bit flipped
                 (signed as usual, the key stored as usual): an answer that passes every local
                 check but does not belong to this device
keygen-weak-rng  a %KEYGEN that makes a new key: the key comes from a broken random source that
                 gives every modem the same key for one sec_tag (a duplicate key, as a factory
                 finds it with ``fleet audit``)
list-no-sha      a %CMNG=1 listing: its lines come without the SHA-256 column, as on firmware that
                 does not list it
list-drop        a %CMNG=1 listing: never answered, the port drops as for disconnect
swap             a %CMNG=1 listing of everything (no sec_tag): never answered, the port drops,
                 and another board with the same IMEI is there when the host reopens it (its
                 own device UUID and identity key, no credentials): a cloned module swapped in
                 while the host reconnects
swap-unattested  as swap, but the board swapped in is an nRF9160 (no %ATTESTTOKEN) with the
                 same IMEI: a clone that cannot say which board it is
slow             every answered command: ``fleet.sim.faults.SLOW_EXTRA_S`` seconds of extra delay
urc-storm        every answered command: URC lines before, between and after the answer lines
garble           every answered command: 1 to 3 bytes of the answer (never CR or LF) replaced
endless-answer   every answered command: its information lines (or a ``%CMNG`` line) sent
                 again and again, never the final line, until the host closes the port
===============  ============================================================================

This module is small on purpose: a plan load imports it, and must not pay for the simulator.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FAULT_NAMES", "FaultName", "FaultSpec", "fault_modems", "fault_problem",
           "parse_fault_spec"]


class FaultName(enum.Enum):
    """The faults the simulator can inject."""

    SILENT = "silent"
    DISCONNECT = "disconnect"
    REBOOT = "reboot"
    KEYGEN_FAIL = "keygen-fail"
    LOST_ANSWER = "lost-answer"
    KEYGEN_BAD_UUID = "keygen-bad-uuid"
    KEYGEN_WEAK_RNG = "keygen-weak-rng"
    LIST_NO_SHA = "list-no-sha"
    LIST_DROP = "list-drop"
    SWAP = "swap"
    SWAP_UNATTESTED = "swap-unattested"
    SLOW = "slow"
    URC_STORM = "urc-storm"
    GARBLE = "garble"
    ENDLESS_ANSWER = "endless-answer"


#: Every fault name, in the order of the table above.
FAULT_NAMES = tuple(f.value for f in FaultName)
_NAMES = ", ".join(FAULT_NAMES)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One ``--fault`` option: ``name`` fires with ``probability`` per chance, at most ``limit``
    times per modem (no limit when ``None``), on the modems in ``targets`` (every modem when
    ``None``)."""

    name: FaultName
    probability: float
    targets: frozenset[int] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, FaultName):
            raise ValueError(f"unknown fault {self.name!r} (known: {_NAMES})")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability must be a number from 0 to 1, not "
                             f"{self.probability}")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(f"a fault's most times must be a whole number >= 1, not {self.limit}")
        if self.targets is not None:
            if not self.targets:
                raise ValueError("a fault target list must not be empty")
            if any(index < 0 for index in self.targets):
                raise ValueError("fault targets must be modem indexes >= 0")

    def applies_to(self, index: int) -> bool:
        return self.targets is None or index in self.targets

    def __str__(self) -> str:
        text = f"{self.name.value}:{self.probability:g}"
        if self.limit is not None:
            text += f":{self.limit}"
        if self.targets is not None:
            text += "@" + ",".join(str(i) for i in sorted(self.targets))
        return text


def parse_fault_spec(text: str) -> FaultSpec:
    """Parse ``NAME:PROB[:MAX][@I,J,...]``; raises ValueError saying what is wrong."""
    spec, at, target_text = text.strip().partition("@")
    name_text, colon, rest = spec.partition(":")
    prob_text, limited, limit_text = rest.partition(":")
    name_text = name_text.strip()
    try:
        name = FaultName(name_text)
    except ValueError:
        raise ValueError(f"fault {text!r}: unknown fault {name_text!r} (known: {_NAMES})") from None
    if not colon or not prob_text.strip():
        raise ValueError(f"fault {text!r}: expected NAME:PROB, e.g. {name_text}:0.1")
    try:
        probability = float(prob_text)
    except ValueError:
        raise ValueError(f"fault {text!r}: probability {prob_text!r} is not a number") from None
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"fault {text!r}: probability must be a number from 0 to 1")
    limit: int | None = None
    if limited:
        if not limit_text.strip().isdigit() or int(limit_text) < 1:
            raise ValueError(f"fault {text!r}: MAX after the probability must be a whole number "
                             f">= 1, like {name_text}:{prob_text}:1")
        limit = int(limit_text)
    targets: frozenset[int] | None = None
    if at:
        items = [item.strip() for item in target_text.split(",")]
        if not target_text.strip() or not all(item.isdigit() for item in items):
            raise ValueError(f"fault {text!r}: targets after '@' must be modem indexes like @2,5")
        targets = frozenset(int(item) for item in items)
    return FaultSpec(name=name, probability=probability, targets=targets, limit=limit)


def fault_problem(spec: str) -> str | None:
    """Why ``spec`` is not a fault :func:`parse_fault_spec` accepts, or None."""
    try:
        parse_fault_spec(spec)
    except ValueError as exc:
        return str(exc)
    return None


def fault_modems(spec: str) -> tuple[int, ...]:
    """The modem indexes fault ``spec`` is limited to (empty: every modem, or not a valid spec:
    :func:`fault_problem` says why)."""
    try:
        return tuple(sorted(parse_fault_spec(spec).targets or ()))
    except ValueError:
        return ()
