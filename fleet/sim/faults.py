"""Fault injection: ``--fault NAME:PROB[@I,J,...]`` specs, seeded dice, and the byte mangling.

How this works
--------------
A :class:`FaultSpec` names a fault, a probability and optionally the modem indexes it targets.
Each modem gets its own :class:`FaultDice`, seeded from ``(seed, index)``, so a run with the same
seed draws the same faults whatever the other modems do. A fault is drawn at the one moment it
could apply to a received command (the server asks in this order, the first three end the
command):

==============  =============================================================================
silent          every command, first: the command is ignored (not executed, never answered)
disconnect      every command, before it is executed: the port drops (pty closed and a new one
                linked in its place; TCP / in-process connection closed)
reboot          every command, before it is executed: function mode back to 0 (CMEE 0), keys
                kept, the command is not answered
keygen-fail     a %KEYGEN that passed every check and would produce an answer: ``523``, nothing
                stored
lost-answer     a %KEYGEN that stored a new key: the key stays stored (and persisted), the answer
                is never sent and the port drops
slow            every answered command: :data:`SLOW_EXTRA_S` seconds of extra delay
urc-storm       every answered command: URC lines before, between and after the answer lines
garble          every answered command: 1 to 3 bytes of the answer (never CR or LF) replaced
endless-answer  every answered command: its information lines (or a ``%CMNG`` line) sent
                again and again, never the final line, until the host closes the port
==============  =============================================================================
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "SLOW_EXTRA_S",
    "STORM_URCS",
    "FaultDice",
    "FaultName",
    "FaultSpec",
    "garble",
    "parse_fault_spec",
    "urc_storm",
]

#: Extra delay of the ``slow`` fault, in seconds (in every profile).
SLOW_EXTRA_S = 5.0


class FaultName(enum.Enum):
    """The faults the simulator can inject."""

    SILENT = "silent"
    DISCONNECT = "disconnect"
    REBOOT = "reboot"
    KEYGEN_FAIL = "keygen-fail"
    LOST_ANSWER = "lost-answer"
    SLOW = "slow"
    URC_STORM = "urc-storm"
    GARBLE = "garble"
    ENDLESS_ANSWER = "endless-answer"


_NAMES = ", ".join(f.value for f in FaultName)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One ``--fault`` option: ``name`` fires with ``probability`` per chance, on the modems in
    ``targets`` (every modem when ``None``)."""

    name: FaultName
    probability: float
    targets: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, FaultName):
            raise ValueError(f"unknown fault {self.name!r} (known: {_NAMES})")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability must be between 0 and 1, not {self.probability}")
        if self.targets is not None:
            if not self.targets:
                raise ValueError("a fault target list must not be empty")
            if any(index < 0 for index in self.targets):
                raise ValueError("fault targets must be modem indexes >= 0")

    def applies_to(self, index: int) -> bool:
        return self.targets is None or index in self.targets

    def __str__(self) -> str:
        text = f"{self.name.value}:{self.probability:g}"
        if self.targets is not None:
            text += "@" + ",".join(str(i) for i in sorted(self.targets))
        return text


def parse_fault_spec(text: str) -> FaultSpec:
    """Parse ``NAME:PROB`` or ``NAME:PROB@I,J,...``; raises ValueError saying what is wrong."""
    spec, at, target_text = text.strip().partition("@")
    name_text, colon, prob_text = spec.partition(":")
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
        raise ValueError(f"fault {text!r}: probability must be between 0 and 1")
    targets: frozenset[int] | None = None
    if at:
        items = [item.strip() for item in target_text.split(",")]
        if not target_text.strip() or not all(item.isdigit() for item in items):
            raise ValueError(f"fault {text!r}: targets after '@' must be modem indexes like @2,5")
        targets = frozenset(int(item) for item in items)
    return FaultSpec(name=name, probability=probability, targets=targets)


class FaultDice:
    """The fault draws of one modem (seeded, independent of every other modem)."""

    def __init__(self, specs: Iterable[FaultSpec], index: int, seed: int) -> None:
        self._specs: dict[FaultName, list[float]] = {}
        for spec in specs:
            if spec.applies_to(index):
                self._specs.setdefault(spec.name, []).append(spec.probability)
        self._rng = random.Random(f"fleet-sim/faults/{seed}/{index}")

    def __bool__(self) -> bool:
        return bool(self._specs)

    def roll(self, name: FaultName) -> bool:
        """Draw ``name`` for this chance; False without drawing when it is not configured."""
        if not self._specs:  # the usual case: no faults at all (and no enum hashing)
            return False
        fired = False
        for probability in self._specs.get(name, ()):
            fired = (self._rng.random() < probability) or fired
        return fired

    @property
    def rng(self) -> random.Random:
        """The generator the byte mangling uses (same seed, so runs repeat)."""
        return self._rng


#: URCs the urc-storm fault sprinkles into answers (all of them real nRF91 URC shapes).
STORM_URCS = (
    '+CEREG: 2,"002F","0012BEEF",7',
    '+CEREG: 1,"002F","0012BEEF",7,,,"11100000","11100000"',
    "%XSIM: 1",
    "%CESQ: 54,2,16,2",
    "+CSCON: 1",
    "+CSCON: 0",
    '%XTIME: "0A","42102141500480","01"',
    "%MDMEV: SEARCH STATUS 1",
)


def urc_storm(lines: list[str], rng: random.Random) -> list[str]:
    """``lines`` (the answer, final line last) with 2-5 URCs before, 1-3 between lines and 2-5
    after the final line."""
    out = [rng.choice(STORM_URCS) for _ in range(rng.randint(2, 5))]
    for position, line in enumerate(lines):
        if position:
            out.extend(rng.choice(STORM_URCS) for _ in range(rng.randint(1, 3)))
        out.append(line)
    out.extend(rng.choice(STORM_URCS) for _ in range(rng.randint(2, 5)))
    return out


_REPLACEMENTS = bytes(b for b in range(0x20, 0x7F))


def garble(data: bytes, rng: random.Random) -> bytes:
    """``data`` with 1-3 bytes (never CR or LF) replaced by different printable bytes, so the
    line structure stays and the content does not."""
    positions = [i for i, b in enumerate(data) if b not in (0x0D, 0x0A)]
    if not positions:
        return data
    out = bytearray(data)
    for position in rng.sample(positions, min(len(positions), rng.randint(1, 3))):
        choices = [b for b in _REPLACEMENTS if b != out[position]]
        out[position] = rng.choice(choices)
    return bytes(out)
