"""fleet.aio.both: two awaitables at once, results in order, errors as themselves."""

from __future__ import annotations

import anyio
import pytest

from fleet.aio import both


async def _value(value: object, delay: float) -> object:
    await anyio.sleep(delay)
    return value


async def _fail(message: str, delay: float) -> None:
    await anyio.sleep(delay)
    raise KeyError(message)


def test_both_runs_at_the_same_time_and_keeps_the_order() -> None:
    """The first waits for an event only the second sets: run one after the other, it would
    never finish."""

    async def main() -> tuple[object, object]:
        ready = anyio.Event()

        async def waits() -> str:
            await ready.wait()
            return "a"

        async def sets() -> str:
            ready.set()
            return "b"

        with anyio.fail_after(5):
            return await both(waits(), sets())

    assert anyio.run(main) == ("a", "b")


@pytest.mark.parametrize("which", ["first", "second"])
def test_an_error_is_raised_as_itself_after_both_finished(which: str) -> None:
    finished: list[str] = []

    async def other() -> str:
        await anyio.sleep(0.1)
        finished.append("other")
        return "ok"

    async def main() -> None:
        if which == "first":
            await both(_fail("boom", 0), other())
        else:
            await both(other(), _fail("boom", 0))

    with pytest.raises(KeyError, match="boom"):
        anyio.run(main)
    assert finished == ["other"]


def test_the_first_error_wins_when_both_fail() -> None:
    async def main() -> None:
        await both(_fail("first", 0.05), _fail("second", 0))

    with pytest.raises(KeyError, match="first"):
        anyio.run(main)
