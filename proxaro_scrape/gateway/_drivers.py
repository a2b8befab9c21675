"""The drivers: the only code that does the jobs' I/O, once per concurrency model.

:func:`drive` runs a :mod:`~proxaro_scrape.gateway._jobs` job to completion with a blocking
client, :func:`adrive` with an awaiting one.  :class:`ThreadDriver` (a daemon thread) and
:class:`TaskDriver` (an asyncio task on the running loop: no thread, no framework timer, so it
runs under Scrapy's asyncio reactor too) loop the same way: run what the schedule says is due,
then sleep until the next due time or until woken.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from proxaro_scrape.gateway._jobs import Job, Jobs

__all__ = ["TaskDriver", "ThreadDriver", "adrive", "drive"]

T = TypeVar("T")


def drive(job: Job[T], client: Any) -> T:
    """Run ``job`` with a blocking client: each call it yields is made, its answer sent back
    (or its exception thrown in), until the job returns."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = job.send(answer) if error is None else job.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            answer, error = call.bind(client)(*call.args), None
        except Exception as exc:  # noqa: BLE001 - the job decides what a failure means
            answer, error = None, exc


async def adrive(job: Job[T], client: Any) -> T:
    """Async twin of :func:`drive`: the same job, each call awaited on an async client."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = job.send(answer) if error is None else job.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            answer, error = await call.bind(client)(*call.args), None
        except Exception as exc:  # noqa: BLE001 - the job decides what a failure means
            answer, error = None, exc


class ThreadDriver:
    """Runs the due jobs in a daemon thread; ``run_job(name)`` does one (blocking)."""

    def __init__(self, jobs: Jobs, run_job: Callable[[str], None]) -> None:
        self._jobs = jobs
        self._run_job = run_job
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="proxaro-gateway-manager", daemon=True
        )

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self) -> None:
        """Make the thread look at the schedule now (from any thread)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (a job in flight finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the schedule is read: a wake-up from now on is never lost.
            self._wake.clear()
            for name in self._jobs.due():
                if self._stop.is_set():
                    return
                self._run_job(name)
            self._wake.wait(self._jobs.sleep_for())


class TaskDriver:
    """Runs the due jobs in an asyncio task on the current loop; ``run_job(name)`` awaits one."""

    def __init__(self, jobs: Jobs, run_job: Callable[[str], Awaitable[None]]) -> None:
        self._jobs = jobs
        self._run_job = run_job
        self.loop = asyncio.get_running_loop()
        self._awake = asyncio.Event()
        self.task = self.loop.create_task(self._run(), name="proxaro-gateway-manager")

    def wake(self) -> None:
        """Make the task look at the schedule now (from any thread; a closed loop is ignored)."""
        if _running_loop() is self.loop:
            self._awake.set()
            return
        try:
            self.loop.call_soon_threadsafe(self._awake.set)
        except RuntimeError:  # the loop is closed: nothing to wake
            pass

    def cancel(self) -> None:
        """Cancel the task (from any thread)."""
        if self.task.done():
            return
        if _running_loop() is self.loop:
            self.task.cancel()
        elif self.loop.is_running():
            self.loop.call_soon_threadsafe(self.task.cancel)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end (on its own loop)."""
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        awake = self._awake
        while True:
            awake.clear()  # before the schedule is read: a wake-up from now on is never lost
            for name in self._jobs.due():
                await self._run_job(name)
            try:
                await asyncio.wait_for(awake.wait(), timeout=self._jobs.sleep_for())
            except asyncio.TimeoutError:
                pass


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
