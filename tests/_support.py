"""Waiting for a condition, the one way the tests wait.

A test never asserts how long something took and never sleeps hoping an event has happened: it
waits until a condition holds, with a deadline that is a failure bound only (generous, so that a
loaded machine is slower, never red).  Time inside the sandbox comes from its world clock
(``sb.world.clock.advance(...)``); "nothing more happens" is shown by advancing that clock and
reading counters, not by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
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
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """:func:`eventually` for async code: ``predicate`` may be a plain or an async callable.

    ``sleep`` waits between two looks: ``asyncio.sleep``, or the reactor's under Twisted
    (``tests._scrapy_traffic.sleep``).
    """
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
        await sleep(interval)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket stays bound (and not listening) until the block ends, so no other process (a
    sandbox in another xdist worker, say) can start listening there in the meantime, as it
    could on a port that was only found free and let go.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
