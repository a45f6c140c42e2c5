"""Retry and recovery policy: how often a step is tried again, how long to wait between tries,
how often a port is reopened, and when a device has had its time.

How this works
--------------
A :class:`RetryPolicy` is plain data built from a slot's plan settings
(:meth:`RetryPolicy.from_settings`): ``attempts`` of a retried step (``retries + 1``),
``reopen_attempts`` of one recovery (close, reopen, probe, re-identify), a per-device
``deadline`` on its clock, and the :func:`backoff` parameters. tenacity is the mechanism: every
place that tries something again hands the policy an attempt, an async function of the attempt's
number (1, 2, ...), and the policy runs it under a :class:`tenacity.AsyncRetrying`
(:meth:`RetryPolicy.step`, :meth:`RetryPolicy.reopening`, :meth:`RetryPolicy.opening`,
:meth:`RetryPolicy.after_active_state`): the attempt's result, or the error of the last try. The
policy holds the ``sleep`` callable and the ``clock`` it uses, so tests pass fakes and no test
sleeps to see a backoff or a deadline.

Why attempts are functions, not ``async for attempt in retrying`` loops: that form keeps the
call's state on the retrying object, which the state points back at, so every loop would leave a
reference cycle (some 40 objects) that only the cycle collector frees. A run retries a few
steps per device; at hundreds of devices their garbage would set off full collections on the
event loop's thread in the middle of the ``%KEYGEN`` answers. Run as a call (and with each
iteration's actions let go, :class:`_Retrying`), the objects of a step that succeeds go as soon
as it ends. (A step that fails still leaves a cycle: its error's traceback holds tenacity's
frames, which hold the error. Failures are few; successes are every step of every device.)

The deadline never cuts work that succeeds: it is checked only when a try has failed, and no
new try (step or reopen) starts once the next one could not begin before it. A key whose step
gives up on :data:`RETRYABLE` errors once the deadline has passed (:meth:`RetryPolicy.expired`)
ends the device: its later keys are not started (``fleet.provision.flow``).

What is worth another try is listed here and nowhere else: :data:`RETRYABLE` (errors after which
a step starts again from inspection), :data:`RETRY_CODES` (the ``+CME ERROR`` codes after which
a write's step is tried again) and :data:`REOPEN_RETRYABLE` (what one reopen may meet before
the next). A client-key ``%KEYGEN`` is never re-sent blindly: a retried step starts from
inspection, and the attempt decides again what to send.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
import tenacity

from fleet.errors import (
    CmeCode,
    CmeError,
    CommandError,
    CredentialError,
    DeviceTimeout,
    FleetError,
    PortBusy,
    RemoteProtocolError,
    TransportError,
)

__all__ = [
    "REOPEN_RETRYABLE",
    "RETRYABLE",
    "RETRY_CODES",
    "Attempt",
    "Clock",
    "RetryPolicy",
    "Sleep",
    "Transient",
    "backoff",
]


class Transient(FleetError):
    """This attempt failed in a way worth another attempt (after inspecting again)."""


#: What a step retries (each retry starts again from inspection).
RETRYABLE: tuple[type[Exception], ...] = (Transient, DeviceTimeout, TransportError,
                                          RemoteProtocolError, CredentialError)

#: ``+CME ERROR`` codes after which a write's step is tried again, from inspection: 523 key
#: generation failed (with backoff), 518 active state (the modem is taken offline first), 519
#: already exists (inspection decides again). Every other code fails the key with its reason.
RETRY_CODES = frozenset({CmeCode.KEYGEN_FAILED, CmeCode.ACTIVE_STATE, CmeCode.ALREADY_EXISTS})

#: What one reopen of a port may meet before the next reopen is tried (never PortBusy: another
#: process holds the port, and trying again only delays saying so).
REOPEN_RETRYABLE: tuple[type[Exception], ...] = (TransportError, DeviceTimeout,
                                                 RemoteProtocolError, CommandError)


class _Settings(Protocol):
    @property
    def retries(self) -> int: ...
    @property
    def reopen_attempts(self) -> int: ...
    @property
    def device_deadline_s(self) -> float: ...


class _Deadline(tenacity.stop.stop_base):
    """Stop when ``late(state)``: the next try could not start before the deadline."""

    def __init__(self, late: Callable[[tenacity.RetryCallState], bool]) -> None:
        self._late = late

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._late(retry_state)


Sleep = Callable[[float], Awaitable[Any]]
Clock = Callable[[], float]
T = TypeVar("T")
#: One try of a step: an async function of the try's number (1 for the first).
Attempt = Callable[[int], Awaitable[T]]


class _Retrying(tenacity.AsyncRetrying):
    """tenacity's AsyncRetrying, letting go of each iteration's actions once it has run.

    tenacity keeps the actions it decided on (bound methods of the retrying object) in its
    ``iter_state`` until the next iteration, so a finished call would leave the object in a
    reference cycle with itself."""

    async def iter(self, retry_state: tenacity.RetryCallState) -> Any:
        try:
            return await super().iter(retry_state)
        finally:
            self.iter_state.reset()


async def _numbered(retrying: _Retrying, attempt: Attempt[T]) -> T:
    """Run ``attempt`` under ``retrying``, passing each try its number (1, 2, ...)."""
    number = 0

    async def once() -> T:
        nonlocal number
        number += 1
        return await attempt(number)

    result: T = await retrying(once)
    return result


def backoff(attempt: int, *, base: float = 0.5, cap: float = 8.0) -> float:
    """Seconds to wait before ``attempt`` (1-based) of a retried step: 0, base, 2*base, ... cap."""
    if attempt <= 1:
        return 0.0
    return float(min(cap, base * 2 ** (attempt - 2)))


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How one device's steps are tried again. ``deadline`` is a value of ``clock()`` after
    which no new try starts (``inf``: none)."""

    attempts: int = 4
    reopen_attempts: int = 2
    deadline: float = math.inf
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    sleep: Sleep = field(default=anyio.sleep, compare=False)
    clock: Clock = field(default=time.monotonic, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.reopen_attempts < 1:
            raise ValueError("attempts and reopen_attempts must be >= 1")
        if self.backoff_base < 0 or self.backoff_cap < 0:
            raise ValueError("backoff must be >= 0")

    @classmethod
    def from_settings(cls, settings: _Settings, *, sleep: Sleep = anyio.sleep,
                      clock: Clock = time.monotonic) -> RetryPolicy:
        """The policy of a device whose work starts now (``clock()``), from its plan settings."""
        return cls(attempts=settings.retries + 1, reopen_attempts=settings.reopen_attempts,
                   deadline=clock() + settings.device_deadline_s, sleep=sleep, clock=clock)

    def wait(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (1-based)."""
        return backoff(attempt, base=self.backoff_base, cap=self.backoff_cap)

    def expired(self) -> bool:
        """The device's deadline has passed."""
        return self.clock() >= self.deadline

    def _late(self, state: tenacity.RetryCallState) -> bool:
        """The next try (after its wait) could not start before the deadline."""
        return self.clock() + self.wait(state.attempt_number + 1) >= self.deadline

    async def _retried(self, attempts: int, retry_on: tuple[type[Exception], ...],
                       attempt: Attempt[T]) -> T:
        """``attempt`` in up to ``attempts`` tries, with backoff between them and the deadline,
        tried again on the errors of ``retry_on`` (never on PortBusy: another process holds the
        port, and trying again only delays saying so)."""
        return await _numbered(_Retrying(
            stop=tenacity.stop_after_attempt(attempts) | _Deadline(self._late),
            wait=lambda state: self.wait(state.attempt_number + 1),
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, retry_on) and not isinstance(exc, PortBusy)),
            sleep=self.sleep,
            reraise=True,
        ), attempt)

    async def step(self, attempt: Attempt[T],
                   retry_on: tuple[type[Exception], ...] = RETRYABLE) -> T:
        """A retried step (identify, a key, a certificate, ``%ATTESTTOKEN``): ``attempts``
        tries, backoff between them, on the errors of ``retry_on`` (never PortBusy)."""
        return await self._retried(self.attempts, retry_on, attempt)

    async def reopening(self, attempt: Attempt[T]) -> T:
        """One recovery: ``reopen_attempts`` tries of reopening the port (backoff between)."""
        return await self._retried(self.reopen_attempts, REOPEN_RETRYABLE, attempt)

    async def opening(self, attempt: Attempt[T]) -> T:
        """The first opening of a port: ``reopen_attempts`` tries while it cannot be opened
        (a port that opens but where nothing answers is not tried again: it is diagnosed)."""
        return await self._retried(self.reopen_attempts, (TransportError,), attempt)

    async def after_active_state(self, attempt: Attempt[T]) -> T:
        """A write refused with 518 (active state): the attempt takes the modem offline and
        sends it once more (its number is 2 then)."""
        return await _numbered(_Retrying(
            stop=tenacity.stop_after_attempt(2),
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, CmeError) and exc.code == CmeCode.ACTIVE_STATE),
            sleep=self.sleep, reraise=True), attempt)

    def gave_up(self, attempts: int) -> str:
        """How a step that ran out of tries says so."""
        if attempts < self.attempts:  # stopped early: only the deadline does that
            return f"gave up after {attempts} attempt(s) (the device's deadline passed)"
        return f"gave up after {attempts} attempt(s)"
