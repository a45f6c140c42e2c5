"""The simulator's configuration (:class:`SimConfig`) and its timing profiles (:class:`Timing`).

Profiles (documented in the README):

=============  ======  ==========================================================
work           fast    realistic
=============  ======  ==========================================================
%KEYGEN        0       1.5 s (a new key, and the existing endorsement key answer)
CFUN change    0       0.2 s (``AT+CFUN=<m>`` that changes the mode)
anything else  0       20-50 ms (uniform, seeded per modem)
output         at once 115200 baud (11520 bytes/s), paced line by line (short lines joined)
=============  ======  ==========================================================

The ``slow`` fault adds :data:`fleet.sim.faults.SLOW_EXTRA_S` in either profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.nrf91 import FUNCTION_MODES
from fleet.sim.faults import FaultSpec, parse_fault_spec
from fleet.sim.identity import MODELS
from fleet.sim.reply import Work

__all__ = ["DEFAULT_CAPACITY", "MAX_MODEMS", "PROFILES", "SimConfig", "Timing"]

#: Credentials one modem can hold unless ``--capacity`` says otherwise.
DEFAULT_CAPACITY = 32
#: Most modems one simulator serves.
MAX_MODEMS = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How long each kind of work takes, and the output pacing (``None``: no pacing)."""

    keygen_s: float
    cfun_s: float
    quick_min_s: float
    quick_max_s: float
    bytes_per_s: float | None

    def __post_init__(self) -> None:
        if min(self.keygen_s, self.cfun_s, self.quick_min_s) < 0:
            raise ValueError("delays must be >= 0")
        if self.quick_max_s < self.quick_min_s:
            raise ValueError("quick_max_s must be >= quick_min_s")
        if self.bytes_per_s is not None and self.bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be > 0")

    def delay(self, work: Work, jitter: float) -> float:
        """Seconds the answer to ``work`` takes; ``jitter`` in [0, 1) picks within a range."""
        if work is Work.KEYGEN:
            return self.keygen_s
        if work is Work.CFUN_CHANGE:
            return self.cfun_s
        return self.quick_min_s + (self.quick_max_s - self.quick_min_s) * jitter


PROFILES: dict[str, Timing] = {
    "fast": Timing(keygen_s=0.0, cfun_s=0.0, quick_min_s=0.0, quick_max_s=0.0, bytes_per_s=None),
    "realistic": Timing(keygen_s=1.5, cfun_s=0.2, quick_min_s=0.02, quick_max_s=0.05,
                        bytes_per_s=115200 / 10),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """What one simulator serves. Validated on construction (ValueError says what is wrong).

    ``faults`` may be given as :class:`FaultSpec` objects or as ``"NAME:PROB[@I,J]"`` strings.
    ``capacity`` applies to every modem, also those read from the state file; ``model`` and
    ``function_mode`` only to modems created now (a state file keeps its own).
    """

    count: int
    seed: int = 0
    model: str = "nrf9160"
    profile: str = "fast"
    faults: tuple[FaultSpec, ...] = ()
    state_path: Path | None = None
    log_path: Path | None = None
    function_mode: int = 0
    capacity: int = DEFAULT_CAPACITY

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int):
            raise ValueError(f"count must be an integer, not {self.count!r}")
        if not 1 <= self.count <= MAX_MODEMS:
            raise ValueError(f"count must be between 1 and {MAX_MODEMS}, not {self.count}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, not {self.seed!r}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r} (known: {', '.join(MODELS)})")
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r} (known: {', '.join(PROFILES)})")
        if self.function_mode not in FUNCTION_MODES:
            raise ValueError(f"function mode {self.function_mode} is not one of "
                             f"{', '.join(map(str, FUNCTION_MODES))}")
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) \
                or self.capacity < 0:
            raise ValueError(f"capacity must be an integer >= 0, not {self.capacity!r}")
        faults = tuple(parse_fault_spec(f) if isinstance(f, str) else f for f in self.faults)
        for fault in faults:
            if not isinstance(fault, FaultSpec):
                raise ValueError(f"faults must be FaultSpec or 'NAME:PROB' strings, not {fault!r}")
            bad = sorted(i for i in fault.targets or () if i >= self.count)
            if bad:
                raise ValueError(f"fault {fault}: modem index {bad[0]} does not exist "
                                 f"(count is {self.count})")
        object.__setattr__(self, "faults", faults)
        for name in ("state_path", "log_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def timing(self) -> Timing:
        return PROFILES[self.profile]
