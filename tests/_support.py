"""Waiting for a condition, the one way the tests wait.

A test never asserts how long something took and never sleeps hoping an event has happened: it
waits until a condition holds, with a deadline that is a failure bound only (generous, so that a
loaded machine is slower, never red).  Time inside the sandbox comes from its world clock
(``sb.world.clock.advance(...)``); "nothing more happens" is shown by advancing that clock and
reading counters, not by sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds before a condition that never holds fails the test.
DEFAULT_TIMEOUT = 30.0


def eventually(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Fails the test (``AssertionError``, with ``message`` and the last value) if it is still
    falsy after ``timeout`` seconds.  ``message`` may be a callable, called only on failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(
                f"not within {timeout:g} s: {text or predicate!r} (last: {value!r})"
            )
        time.sleep(interval)


async def aeventually(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
) -> T:
    """:func:`eventually` for async code: ``predicate`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(
                f"not within {timeout:g} s: {text or predicate!r} (last: {value!r})"
            )
        await asyncio.sleep(interval)
