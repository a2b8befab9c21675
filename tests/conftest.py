"""Shared test setup.

``async def`` tests run with ``asyncio.run`` on a fresh thread of their own.  The Scrapy tests
run Twisted's asyncio reactor in a greenlet on the main thread (pytest-twisted), and that loop
stays marked as running there for the whole session; a thread of its own gives every async test
a clean loop whatever ran before it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from proxaro_scrape.sandbox import Sandbox


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn) or hasattr(fn, "_pytest_twisted_mark"):
        return None
    if pyfuncitem.get_closest_marker("twisted") is not None:
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    timeout = 120.0
    marker = pyfuncitem.get_closest_marker("timeout")
    if marker is not None and marker.args:
        timeout = float(marker.args[0])
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, fn(**kwargs)).result(timeout=timeout)
    return True


def run_async(coro: Any, timeout: float = 120.0) -> Any:
    """Run a coroutine to completion on a fresh loop in a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A whole sandbox (API, gateway, demo site, webhook deliverer) on free loopback ports."""
    with Sandbox(seed=0, clock_speed=1.0) as sb:
        yield sb
