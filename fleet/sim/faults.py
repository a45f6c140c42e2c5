"""Fault injection in the simulator: seeded dice per modem, and the byte mangling.

The grammar (``NAME:PROB[@I,J,...]``) and what each fault does are in :mod:`fleet.faults`.
Each modem gets its own :class:`FaultDice`, seeded from ``(seed, index)``, so a run with the same
seed draws the same faults whatever the other modems do.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from fleet.faults import FaultName, FaultSpec, parse_fault_spec

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


class _Chance:
    """One spec's probability, and how many more times it may fire (None: no limit)."""

    __slots__ = ("left", "probability")

    def __init__(self, spec: FaultSpec) -> None:
        self.probability = spec.probability
        self.left = spec.limit


class FaultDice:
    """The fault draws of one modem (seeded, independent of every other modem)."""

    def __init__(self, specs: Iterable[FaultSpec], index: int, seed: int) -> None:
        self._specs: dict[FaultName, list[_Chance]] = {}
        for spec in specs:
            if spec.applies_to(index):
                self._specs.setdefault(spec.name, []).append(_Chance(spec))
        self._rng = random.Random(f"fleet-sim/faults/{seed}/{index}")

    def roll(self, name: FaultName) -> bool:
        """Draw ``name`` for this chance; False without drawing when it is not configured (or
        has fired its most times)."""
        if not self._specs:  # the usual case: no faults at all (and no enum hashing)
            return False
        fired = False
        for chance in self._specs.get(name, ()):
            if chance.left == 0:
                continue
            if self._rng.random() < chance.probability:
                fired = True
                if chance.left is not None:
                    chance.left -= 1
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
