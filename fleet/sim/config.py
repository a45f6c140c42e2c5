"""The simulator's configuration (:class:`SimConfig`).

The timing profiles (``--profile``) are :data:`fleet.nrf91.PROFILES`; the ``slow`` fault adds
:data:`fleet.sim.faults.SLOW_EXTRA_S` in either profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.at.line import Interface, Terminator
from fleet.faults import FaultSpec, parse_fault_spec
from fleet.nrf91 import FUNCTION_MODES, MODELS, PROFILES, Timing

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_PROMPT", "DEFAULT_SHELL_BUFFER", "MAX_MODEMS",
           "SimConfig"]

#: Credentials one modem can hold unless ``--capacity`` says otherwise.
DEFAULT_CAPACITY = 32
#: Most modems one simulator serves.
MAX_MODEMS = 1024
#: Zephyr's ``CONFIG_SHELL_PROMPT_UART`` default.
DEFAULT_PROMPT = "uart:~$ "
#: Zephyr's ``CONFIG_SHELL_CMD_BUFF_SIZE`` default.
DEFAULT_SHELL_BUFFER = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """What one simulator serves. Validated on construction (ValueError says what is wrong).

    ``faults`` may be given as :class:`FaultSpec` objects or as ``"NAME:PROB[@I,J]"`` strings.
    ``capacity`` applies to every modem, also those read from the state file; ``model`` and
    ``function_mode`` only to modems created now (a state file keeps its own).

    The line: ``interface`` ``at`` (an AT host built with ``terminator``) or ``shell`` (a
    Zephyr shell with the ``at`` command: ``prompt``, ``shell_wildcards``, ``shell_buffer``,
    ``unescape_lf``, ``at_cmd_mode``; see :mod:`fleet.sim.shell`).
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
    interface: Interface = Interface.AT
    terminator: Terminator = Terminator.CR
    prompt: str = DEFAULT_PROMPT
    shell_wildcards: bool = True
    shell_buffer: int = DEFAULT_SHELL_BUFFER
    unescape_lf: bool = False
    at_cmd_mode: bool = False

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
        for name, kind in (("interface", Interface), ("terminator", Terminator)):
            value = getattr(self, name)
            if value not in tuple(kind):
                raise ValueError(f"unknown {name} {value!r} (known: {', '.join(kind)})")
            object.__setattr__(self, name, kind(value))
        if not isinstance(self.prompt, str) or not self.prompt.isprintable() \
                or not 1 <= len(self.prompt) <= 32:
            raise ValueError(f"prompt must be 1 to 32 printable characters, not "
                             f"{self.prompt!r}")
        if isinstance(self.shell_buffer, bool) or not isinstance(self.shell_buffer, int) \
                or not 2 <= self.shell_buffer <= 65536:
            raise ValueError(f"shell buffer must be an integer from 2 to 65536, not "
                             f"{self.shell_buffer!r}")
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
