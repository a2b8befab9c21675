"""Shared test setup: the one async test runner and the one sandbox fixture factory.

``async def`` tests run with ``asyncio.run`` on a fresh thread of their own (pytest-asyncio is
switched off in pyproject.toml: one runner, not two).  The Scrapy tests run Twisted's asyncio
reactor in a greenlet on the main thread (pytest-twisted), and that loop stays marked as running
there for the whole session; a thread of its own gives every async test a clean loop whatever
ran before it.  Tests marked ``twisted`` (or decorated by pytest-twisted) are left to it.

Waiting for a condition: :func:`tests._support.eventually` / ``aeventually``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from proxaro_scrape.sandbox import Sandbox

T = TypeVar("T")

#: Seconds an async test may run when it has no ``@pytest.mark.timeout(N)``.
ASYNC_TEST_TIMEOUT = 120.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test to completion on a fresh loop in a thread of its own."""
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn) or hasattr(fn, "_pytest_twisted_mark"):
        return None
    if pyfuncitem.get_closest_marker("twisted") is not None:
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    timeout = ASYNC_TEST_TIMEOUT
    marker = pyfuncitem.get_closest_marker("timeout")
    if marker is not None and marker.args:
        timeout = float(marker.args[0])
    run_async(fn(**kwargs), timeout=timeout)
    return True


def run_async(coro: Coroutine[Any, Any, T], timeout: float = ASYNC_TEST_TIMEOUT) -> T:
    """Run ``coro`` to completion with ``asyncio.run`` in a thread of its own.

    Past ``timeout`` seconds its task is cancelled (so that its ``finally`` blocks run and the
    thread ends) and ``TimeoutError`` is raised.
    """
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Task[T]]]
    started = concurrent.futures.Future()

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        started.set_result((asyncio.get_running_loop(), task))  # type: ignore[arg-type]
        return await coro

    def thread_main() -> None:
        try:
            done.set_result(asyncio.run(main()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            done.set_exception(exc)

    thread = threading.Thread(target=thread_main, name="async-test", daemon=True)
    thread.start()
    try:
        return done.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        loop, task = started.result(timeout=1)
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)
        raise TimeoutError(f"the async test did not finish within {timeout:g} s") from None


#: ``make_sandbox(**kwargs)``: a started :class:`Sandbox`, closed at the end of the test.
SandboxFactory = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox() -> Iterator[SandboxFactory]:
    """The one way a test gets a sandbox: ``make_sandbox(seed=1, plan="starter",
    components={"api"})`` starts one (seed 0 unless given) and closes it after the test."""
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> Sandbox:
            kwargs.setdefault("seed", 0)
            return stack.enter_context(Sandbox(**kwargs))

        yield make


@pytest.fixture
def sandbox(make_sandbox: SandboxFactory) -> Sandbox:
    """A whole sandbox (API, gateway, demo site, webhook deliverer) on free loopback ports."""
    return make_sandbox()
