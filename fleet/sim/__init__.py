"""The nRF91 modem simulator: ``fleet sim`` (ptys, TCP) and ``sim://`` ports (in-process).

Layers, bottom up: :mod:`~fleet.sim.identity` (who a modem is, from the seed),
:mod:`~fleet.sim.store` (its credentials), :mod:`~fleet.sim.model` with :mod:`~fleet.sim.keygen`
and :mod:`~fleet.sim.cmng` (the sans-IO command interpreter), :mod:`~fleet.sim.faults`,
:mod:`~fleet.sim.config`, :mod:`~fleet.sim.state` (the state file format),
:mod:`~fleet.sim.persist` (group-commit writer, JSON-line log), :mod:`~fleet.sim.core` (the
session loop), then the transports :mod:`~fleet.sim.ports` (pty, TCP) and
:mod:`~fleet.sim.inprocess` (memory streams), and :mod:`~fleet.sim.server` for ``fleet sim``.
"""

from typing import TYPE_CHECKING, Any

from fleet.faults import FaultName, FaultSpec, parse_fault_spec
from fleet.nrf91 import MODELS, PROFILES, ModelInfo, Timing, Work
from fleet.sim.config import DEFAULT_CAPACITY, SimConfig
from fleet.sim.model import Modem
from fleet.sim.reply import Reply
from fleet.sim.store import Credential, CredentialStore

if TYPE_CHECKING:
    from fleet.sim.inprocess import InProcessSimulator

__all__ = [
    "DEFAULT_CAPACITY",
    "MODELS",
    "PROFILES",
    "Credential",
    "CredentialStore",
    "FaultName",
    "FaultSpec",
    "InProcessSimulator",
    "ModelInfo",
    "Modem",
    "Reply",
    "SimConfig",
    "Timing",
    "Work",
    "parse_fault_spec",
]


def __getattr__(name: str) -> Any:
    # The in-process simulator pulls in anyio; importing it lazily keeps the sans-IO modules
    # (model, state, faults, config) importable without any I/O library.
    if name == "InProcessSimulator":
        from fleet.sim.inprocess import InProcessSimulator

        return InProcessSimulator
    raise AttributeError(f"module 'fleet.sim' has no attribute {name!r}")
