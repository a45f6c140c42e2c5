"""The retry policy (fleet.retry) with a fake clock and a fake sleep: attempt counts, backoff
values, the device's deadline cutting retries short, and the reopen count of a session."""

from __future__ import annotations

import functools
import gc
from collections.abc import Awaitable, Callable

import anyio.abc
import pytest

from fleet.device import DeviceSession
from fleet.errors import CmeCode, CmeError, CommandError, DeviceTimeout, PortBusy, TransportError
from fleet.plan import Settings
from fleet.retry import RETRY_CODES, Attempt, RetryPolicy, Transient, backoff

pytestmark = pytest.mark.anyio


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(fake: FakeTime, **settings: object) -> RetryPolicy:
    return RetryPolicy.from_settings(Settings(**settings),  # type: ignore[arg-type]
                                     sleep=fake.sleep, clock=fake.clock)


async def run_failing(run: Callable[[Attempt[None]], Awaitable[None]], fake: FakeTime,
                      error: Exception, cost: float = 0.0) -> int:
    """Run an attempt that takes ``cost`` seconds and raises ``error`` under ``run`` (one of a
    policy's steps); the number of attempts made, which were numbered 1, 2, ..."""
    numbers: list[int] = []

    async def attempt(number: int) -> None:
        numbers.append(number)
        fake.now += cost
        raise error

    with pytest.raises(type(error)):
        await run(attempt)
    assert numbers == list(range(1, len(numbers) + 1))
    return len(numbers)


def test_backoff_is_a_pure_doubling_with_a_cap() -> None:
    assert [backoff(n) for n in range(1, 8)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert [backoff(n, base=1, cap=3) for n in range(1, 5)] == [0.0, 1.0, 2.0, 3.0]


def test_defaults_from_the_plan_settings() -> None:
    fake = FakeTime()
    rules = policy(fake)
    assert (rules.attempts, rules.reopen_attempts) == (4, 2)
    assert rules.deadline == 1000.0 + 120.0
    assert {CmeCode.KEYGEN_FAILED, CmeCode.ACTIVE_STATE, CmeCode.ALREADY_EXISTS} == RETRY_CODES


async def test_a_step_makes_retries_plus_one_attempts_with_backoff_between() -> None:
    fake = FakeTime()
    rules = policy(fake, retries=3)
    assert await run_failing(rules.step, fake, DeviceTimeout("no answer")) == 4
    assert fake.sleeps == [0.5, 1.0, 2.0]
    assert rules.gave_up(4) == "gave up after 4 attempt(s)"


async def test_errors_that_are_not_retryable_end_the_step_at_once() -> None:
    fake = FakeTime()
    rules = policy(fake)
    assert await run_failing(rules.step, fake, CommandError("AT%KEYGEN", "ERROR")) == 1
    assert await run_failing(rules.step, fake, PortBusy("held")) == 1
    assert await run_failing(rules.step, fake, Transient("523")) == 4
    assert await run_failing(functools.partial(rules.step, retry_on=(DeviceTimeout,)), fake,
                             TransportError("gone")) == 1


async def test_the_deadline_cuts_retries_short() -> None:
    fake = FakeTime()
    rules = policy(fake, retries=10, device_deadline_s=30)
    # each attempt takes 10 s: the 4th could start only at 31.5 s (30 + 0.5 + 1), past 30 s
    assert await run_failing(rules.step, fake, DeviceTimeout("no answer"), cost=10) == 3
    assert fake.sleeps == [0.5, 1.0]
    assert rules.gave_up(3) == "gave up after 3 attempt(s) (the device's deadline passed)"
    # once it has passed, a failed try is never tried again
    assert await run_failing(rules.step, fake, DeviceTimeout("no answer")) == 1
    assert await run_failing(rules.reopening, fake, DeviceTimeout("no answer")) == 1


async def test_a_recovery_reopens_the_port_reopen_attempts_times() -> None:
    fake = FakeTime()
    rules = policy(fake, reopen_attempts=3)
    assert await run_failing(rules.reopening, fake, TransportError("gone")) == 3
    assert fake.sleeps == [0.5, 1.0]
    assert await run_failing(rules.reopening, fake, PortBusy("held")) == 1


async def test_a_write_refused_as_active_is_sent_once_more() -> None:
    fake = FakeTime()
    rules = policy(fake)
    refused = CmeError("AT%CMNG=0,1,1", CmeCode.ACTIVE_STATE)
    assert await run_failing(rules.after_active_state, fake, refused) == 2
    full = CmeError("AT%CMNG=0,1,1", CmeCode.MEMORY_FULL)
    assert await run_failing(rules.after_active_state, fake, full) == 1
    assert set(fake.sleeps) <= {0.0}  # no backoff: the modem was only taken offline


async def test_a_step_returns_its_attempts_result_and_one_that_succeeds_leaves_no_garbage() -> None:
    # A run makes a few steps per device: garbage that only the cycle collector frees would
    # pile up into full collections on the event loop's thread.
    fake = FakeTime()
    rules = policy(fake)
    failures = [DeviceTimeout("no answer")]

    async def flaky(number: int) -> int:
        if failures:
            raise failures.pop()
        return number

    async def at_once(number: int) -> int:
        return number

    gc.collect()
    gc.disable()
    try:
        assert await rules.step(flaky) == 2
        assert fake.sleeps == [0.5]
        assert [await rules.step(at_once) for _ in range(20)] == [1] * 20
        assert await rules.reopening(at_once) == 1
        assert await rules.opening(at_once) == 1
        assert await rules.after_active_state(at_once) == 1
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_a_session_recovery_follows_the_policy_and_names_the_last_error() -> None:
    fake = FakeTime()
    opened: list[float] = []

    async def opener() -> anyio.abc.ByteStream:
        opened.append(fake.now)
        raise TransportError("/dev/ttyACM9 does not exist (unplugged? wrong path?)")

    session = DeviceSession(opener, port="/dev/ttyACM9", policy=policy(fake, reopen_attempts=3))
    with pytest.raises(TransportError) as caught:
        await session.recover(timeout=20)
    assert opened == [1000.0, 1000.5, 1001.5]
    assert "after reopening the port 3 time(s)" in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_new_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="reopen_attempts"):
        Settings(reopen_attempts=0)
    with pytest.raises(ValueError, match="probe_timeout_s"):
        Settings(probe_timeout_s=0)
    with pytest.raises(ValueError, match="device_deadline_s"):
        Settings(device_deadline_s=-1)
