"""Small concurrency helpers on top of anyio."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

__all__ = ["both"]

A = TypeVar("A")
B = TypeVar("B")


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two things at the same time (a journal read while the modem answers a command)
    and return both results. An exception is raised as itself, not in an ExceptionGroup - the
    first one's if both fail - after both have finished; cancellation propagates as usual."""
    results: list[Any] = [None, None]
    errors: list[BaseException | None] = [None, None]

    async def run(index: int, awaitable: Awaitable[Any]) -> None:
        try:
            results[index] = await awaitable
        except Exception as exc:  # re-raised below, outside the task group
            errors[index] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 1, second)
        await run(0, first)
    for error in errors:
        if error is not None:
            raise error
    return results[0], results[1]
