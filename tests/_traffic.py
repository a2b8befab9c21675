"""Counted traffic for the fault, load and secrets suites: every request must end exactly once.

A :class:`Traffic` runs a few workers that send requests through a stack driver
(``tests/_stack_drivers.py``) until told to stop.  Every request gets an id; its end is one of

- a **response** (the target's answer; for ``POST /echo`` its body must be the echo of *this*
  request's body, so an answer handed to the wrong caller is caught),
- an **explicit failure**: a :class:`~proxaro_scrape.ProxaroError` subclass,
- a **bare exception** (anything else, from deep inside a stack): a bug,
- a **hang** (no end within :data:`HANG_SECONDS`): a bug.

:class:`Tally` holds the figures; :meth:`Tally.check` asserts the invariants (sent = responses +
explicit failures, each id ended once, no bare exception, no hang, no misdelivered body) and
:func:`report` prints the figures (``pytest -s``) and attaches them to the test report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxaro_scrape import ProxaroError
from proxaro_scrape.sandbox import Sandbox
from tests._stack_drivers import UNSET
from tests._support import aeventually

#: A request that has not ended after this long is a hang (the drivers' own timeouts are 15 s).
HANG_SECONDS = 20.0
#: Failure messages kept per tally, to show what the explicit failures said.
SAMPLES = 3


@dataclass(frozen=True)
class Plan:
    """One request to send: ``body`` given → ``POST url`` (an echo checked), else ``GET url``."""

    url: str
    body: bytes | None = None
    target: Any = UNSET
    session: Any = None


def echo_plan(base: str, rid: int, target: Any = UNSET) -> Plan:
    """``POST {base}/echo`` with a body naming ``rid`` (its echo proves whose answer it is)."""
    return Plan(f"{base}/echo", f"rid={rid};".encode() * 8, target)


@dataclass
class Tally:
    """What happened to every request of one run."""

    name: str
    sent: int = 0
    responses: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    bare: list[str] = field(default_factory=list)
    hangs: int = 0
    wrong_body: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    ends: Counter[int] = field(default_factory=Counter)
    phases: dict[str, Counter[str]] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ended(self) -> int:
        """Requests that have ended (any way)."""
        return sum(self.ends.values())

    def start(self) -> int:
        """Count a request as sent and return its id."""
        self.sent += 1
        return self.sent

    def end(self, rid: int, phase: str, what: str) -> None:
        self.ends[rid] += 1
        self.phases.setdefault(phase, Counter())[what] += 1

    def failed(self, exc: BaseException) -> str:
        name = type(exc).__name__
        if isinstance(exc, ProxaroError):
            self.failures[name] += 1
        else:
            self.bare.append(f"{name}: {exc!r}"[:300])
        if os.environ.get("TRAFFIC_DEBUG"):
            import traceback

            traceback.print_exception(exc)
        kept = self.samples.setdefault(name, [])
        if len(kept) < SAMPLES:
            kept.append(str(exc)[:240])
        return name

    def in_phase(self, phase: str) -> Counter[str]:
        """How requests that started in ``phase`` ended (``response`` or an error's name)."""
        return self.phases.get(phase, Counter())

    def check(self, allowed: tuple[type[BaseException], ...] = (ProxaroError,)) -> None:
        """The invariants every run must hold, whatever the fault."""
        assert self.hangs == 0, f"{self.name}: {self.hangs} request(s) never ended"
        assert not self.bare, f"{self.name}: non-Proxaro exceptions escaped: {self.bare[:5]}"
        assert not self.wrong_body, f"{self.name}: answers to other requests: {self.wrong_body}"
        twice = sorted(rid for rid, n in self.ends.items() if n != 1)
        assert not twice, f"{self.name}: requests that ended more than once: {twice[:10]}"
        assert len(self.ends) == self.sent, f"{self.name}: {self.sent - len(self.ends)} lost"
        assert self.sent == self.responses + sum(self.failures.values()), self.figures()
        names = {c.__name__ for c in _subclasses(allowed)}
        unexpected = {k: v for k, v in self.failures.items() if k not in names}
        assert not unexpected, f"{self.name}: unexpected failures {unexpected}: {self.samples}"

    def figures(self) -> dict[str, Any]:
        """The figures, as plain data."""
        return {
            "sent": self.sent,
            "responses": self.responses,
            "explicit_failures": dict(self.failures),
            "bare_exceptions": len(self.bare),
            "hangs": self.hangs,
            "answered_twice": sum(1 for n in self.ends.values() if n > 1),
            "misdelivered": len(self.wrong_body),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "by_phase": {p: dict(c) for p, c in self.phases.items()},
            "seconds": round(self.seconds, 2),
            "failure_samples": self.samples,
        }


def _subclasses(classes: tuple[type[BaseException], ...]) -> set[type[BaseException]]:
    out: set[type[BaseException]] = set()
    todo = list(classes)
    while todo:
        cls = todo.pop()
        if cls not in out:
            out.add(cls)
            todo.extend(cls.__subclasses__())
    return out


class Traffic:
    """Sustained, bounded concurrent traffic through one stack driver.

    ``plan(rid)`` says what request ``rid`` is.  ``concurrency`` workers each send one request
    after the other until :meth:`stop`, or until ``limit`` requests were sent in all.
    ``phase`` (set by the scenario script) labels the requests that start while it holds.
    """

    def __init__(
        self,
        drv: Any,
        tally: Tally,
        plan: Callable[[int], Plan],
        *,
        concurrency: int = 8,
        limit: int = 2000,
    ) -> None:
        self.drv = drv
        self.tally = tally
        self.plan = plan
        self.concurrency = concurrency
        self.limit = limit
        self.phase = "before"
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]

    async def stop(self) -> Tally:
        """Stop sending; wait for every request in flight to end; return the tally."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self.tally.seconds = time.monotonic() - self._t0
        return self.tally

    async def join(self) -> Tally:
        """Wait until ``limit`` requests were sent and every one of them ended."""
        await asyncio.gather(*self._tasks)
        self.tally.seconds = time.monotonic() - self._t0
        return self.tally

    async def run_for(self, seconds: float) -> None:
        """Let traffic flow for ``seconds``."""
        await asyncio.sleep(seconds)

    async def _worker(self) -> None:
        tally = self.tally
        while not self._stop.is_set() and tally.sent < self.limit:
            rid = tally.start()
            await one(self.drv, tally, rid, self.plan(rid), self.phase)


async def one(drv: Any, tally: Tally, rid: int, plan: Plan, phase: str) -> None:
    """Send one planned request through ``drv`` and record how it ended."""
    call: Awaitable[Any]
    if plan.body is not None:
        call = drv.post(plan.url, plan.body, target=plan.target, session=plan.session)
    else:
        call = drv.get(plan.url, target=plan.target, session=plan.session)
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=HANG_SECONDS)
    if not done:
        task.cancel()
        tally.hangs += 1
        tally.end(rid, phase, "hang")
        return
    exc = task.exception()
    if exc is not None:
        tally.end(rid, phase, tally.failed(exc))
        return
    reply = task.result()
    tally.statuses[reply.status] += 1
    if plan.body is not None:
        try:
            echoed = json.loads(reply.body).get("sha256")
        except (ValueError, AttributeError):
            echoed = None
        if echoed != hashlib.sha256(plan.body).hexdigest():
            tally.wrong_body.append(f"rid {rid}: {reply.status} {reply.body[:120]!r}")
    tally.responses += 1
    tally.end(rid, phase, "response")


async def counters(sb: Sandbox) -> Counter[str]:
    """The sandbox's counters now."""
    async with httpx.AsyncClient(timeout=10) as c:
        return Counter((await c.get(f"{sb.api_url}/_sandbox/counters")).json())


def delta(after: Counter[str], before: Counter[str], *prefixes: str) -> dict[str, int]:
    """Counters that moved, limited to names starting with one of ``prefixes``."""
    out = {}
    for name in sorted(set(after) | set(before)):
        if prefixes and not name.startswith(prefixes):
            continue
        moved = after.get(name, 0) - before.get(name, 0)
        if moved:
            out[name] = moved
    return out


def report(record_property: Callable[[str, object], None], name: str, **figures: Any) -> None:
    """Print the figures (``-s`` shows them) and attach them to the test report."""
    text = json.dumps(figures, sort_keys=True, default=str)
    print(f"\n[{name}] {text}")
    record_property(name, text)


def manager_figures(stats: dict[str, int]) -> dict[str, int]:
    """The manager's counters worth reading in a fault report."""
    keep = (
        "requests",
        "logical_requests",
        "retries",
        "successes",
        "failovers",
        "region_dead",
        "breakers_opened",
        "breakers_closed",
        "exhausted",
        "credential_refreshes",
        "credential_refresh_errors",
        "rotations",
        "rotation_events",
        "credentials_version",
        "pool_refreshes",
        "pool_refresh_errors",
        "asn_refresh_errors",
        "usage_errors",
        "usage_cap_reached",
        "sessions_rotated",
    )
    out = {k: stats[k] for k in keep if stats.get(k)}
    out.update({k: v for k, v in stats.items() if k.startswith("outcomes/")})
    return out


# ---------------------------------------------------------------------------- sockets


def _socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def open_tcp_to(port: int) -> int:
    """This process's TCP sockets (held by a file descriptor) whose remote port is ``port``.

    Read from ``/proc/self/fd`` and ``/proc/net/tcp{,6}``: the sandbox runs in this process
    too, so only sockets connected *to* the given port (a client's side) are counted.
    """
    inodes = _socket_inodes()
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            if remote_port == port and parts[9] in inodes:
                count += 1
    return count


async def settle(probe: Callable[[], int], want: int = 0) -> int:
    """Wait until ``probe()`` returns ``want`` (closing is asynchronous); its last value.

    Within :func:`~tests._support.aeventually`'s failure bound; a value, not an assertion, so
    that the caller's report carries the figure either way.
    """
    with contextlib.suppress(AssertionError):
        await aeventually(lambda: probe() == want, interval=0.05)
    return probe()


def next_ids() -> Callable[[], int]:
    """A fresh id counter."""
    return itertools.count(1).__next__
