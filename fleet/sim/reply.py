"""What the sans-IO modem model hands back for one command, and what it takes from outside.

The model never sleeps, reads a clock or touches a port. For each command it returns a
:class:`Reply`: the information lines and final result, the kind of :class:`Work` the command took
(the timing profile turns that into seconds; the server sleeps), and flags the server needs to
keep its promises: ``changed`` (persist the state BEFORE sending the answer) and ``key_made`` (a
``%KEYGEN`` stored a new key: the lost-answer fault applies).

Randomness that must not be seeded (nonces, credential keys) comes from an :class:`Entropy`, so
tests can substitute a deterministic one. The command handlers of :mod:`fleet.sim.cmng` and
:mod:`fleet.sim.keygen` see the modem as a :class:`ModemView` (what they read and change of it),
so they need not import the model that dispatches to them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from fleet.at import CmeErrorLine, Error, Final, Ok
from fleet.errors import CmeCode
from fleet.faults import FaultName
from fleet.nrf91 import ModelInfo, Work
from fleet.sim.store import CredentialStore

__all__ = [
    "NO_FAULTS",
    "SYSTEM_ENTROPY",
    "Entropy",
    "Faults",
    "ModemView",
    "Reply",
    "SystemEntropy",
    "cme",
    "error",
    "ok",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The model's answer to one command."""

    final: Final
    lines: tuple[str, ...] = ()
    work: Work = Work.QUICK
    #: the persistent state changed: the server writes it before sending the answer
    changed: bool = False
    #: a %KEYGEN stored a new key (lost-answer may drop its answer)
    key_made: bool = False
    #: the fault the model applied to this answer (keygen-fail, keygen-bad-uuid, list-no-sha,
    #: list-drop, swap, swap-unattested), for the log
    fault: FaultName | None = None
    #: no answer: the port drops instead (list-drop; swap and swap-unattested, which the
    #: server carries out)
    drop: bool = False

    def __post_init__(self) -> None:
        if self.key_made and not self.changed:
            raise ValueError("a reply that made a key must mark the state changed")


def ok(*lines: str, work: Work = Work.QUICK, changed: bool = False,
       key_made: bool = False, fault: FaultName | None = None) -> Reply:
    """An ``OK`` answer with ``lines`` before it."""
    return Reply(final=Ok(), lines=lines, work=work, changed=changed or key_made,
                 key_made=key_made, fault=fault)


def error() -> Reply:
    """A bare ``ERROR`` answer."""
    return Reply(final=Error())


def cme(code: int, *, cmee: int, fault: FaultName | None = None) -> Reply:
    """``+CME ERROR: <code>`` with ``AT+CMEE=1``, a bare ``ERROR`` with CMEE 0."""
    final: Final = CmeErrorLine(code=code) if cmee else Error()
    return Reply(final=final, fault=fault)


class ModemView(Protocol):
    """What a command handler uses of a modem (:class:`fleet.sim.model.Modem` is one)."""

    model: ModelInfo
    device_uuid: uuid.UUID
    identity_key: ec.EllipticCurvePrivateKey
    store: CredentialStore

    @property
    def active(self) -> bool:
        """True in the function modes where credential work is refused (518)."""
        ...

    def touch(self) -> None:
        """Record that the persistent state changed."""
        ...

    def cme(self, code: CmeCode, *, fault: FaultName | None = None) -> Reply:
        """``+CME ERROR: <code>``, or ``ERROR`` while CMEE is 0."""
        ...

    def reserved_entries(self) -> list[tuple[int, int, str]]:
        """The modem's own credentials ``(sec_tag, type, SHA)`` that %CMNG lists."""
        ...

    def check_client_certificate(self, sec_tag: int, content: bytes) -> CmeCode | None:
        """The error that refuses writing client certificate ``content``, or None."""
        ...


class Entropy(Protocol):
    """Where the model gets its unseeded randomness."""

    def nonce(self) -> bytes:
        """16 fresh bytes for a %KEYGEN or %ATTESTTOKEN nonce."""
        ...

    def new_key(self) -> ec.EllipticCurvePrivateKey:
        """A fresh P-256 key for %KEYGEN."""
        ...


class SystemEntropy:
    """The operating system's randomness."""

    def nonce(self) -> bytes:
        return os.urandom(16)

    def new_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())


SYSTEM_ENTROPY = SystemEntropy()


#: Asked whether a fault fires at this chance (:meth:`fleet.sim.faults.FaultDice.roll`).
Faults = Callable[[FaultName], bool]


def _no_faults(name: FaultName) -> bool:
    return False


#: The default: no fault ever fires.
NO_FAULTS: Faults = _no_faults
