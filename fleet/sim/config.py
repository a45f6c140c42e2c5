"""The simulator's configuration (:class:`SimConfig`).

The timing profiles (``--profile``) are :data:`fleet.nrf91.PROFILES`; the ``slow`` fault adds
:data:`fleet.sim.faults.SLOW_EXTRA_S` in either profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.faults import FaultSpec, parse_fault_spec
from fleet.nrf91 import FUNCTION_MODES, MODELS, PROFILES, Timing

__all__ = ["DEFAULT_CAPACITY", "MAX_MODEMS", "SimConfig"]

#: Credentials one modem can hold unless ``--capacity`` says otherwise.
DEFAULT_CAPACITY = 32
#: Most modems one simulator serves.
MAX_MODEMS = 1024


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
