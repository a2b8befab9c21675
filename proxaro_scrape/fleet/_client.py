"""The REST client as the fleet's background jobs see it: one for all, through Redis.

The manager's jobs yield their API calls as data (:class:`~proxaro_scrape.gateway._jobs.Call`)
and a driver binds each to a client.  Bound to a :class:`FleetClient` (or its async twin), a
call first asks the fleet (:meth:`~proxaro_scrape.fleet._fleet.Fleet.before`): the answer may
already be in Redis (fresh credentials, the leader's pool view or usage reading), or another
worker may be fetching it (then this one waits for its result); only otherwise does the real
client call the API, after taking a token from the account's shared rate-limit bucket, and the
answer is written back for the others (:meth:`~proxaro_scrape.fleet._fleet.Fleet.after`).
None of this is on the request path: only background jobs and refreshes call the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxaro_scrape.fleet._fleet import Fleet
    from proxaro_scrape.gateway._jobs import Call

__all__ = ["AsyncFleetClient", "FleetClient"]


class FleetClient:
    """A blocking REST client behind the fleet (see the module docstring)."""

    def __init__(self, fleet: Fleet, client: Any) -> None:
        self._fleet = fleet
        self._client = client

    def bind_call(self, call: Call) -> Callable[..., Any]:
        """The function a driver calls for ``call``."""
        fleet, real = self._fleet, call.bind(self._client)

        def run(*args: Any) -> Any:
            plan = fleet.before(call)
            if plan.cached:
                return plan.value
            try:
                answer = real(*args)
            except BaseException:
                fleet.failed(plan)
                raise
            fleet.after(call, plan, answer)
            return answer

        return run


class AsyncFleetClient:
    """The async twin: the fleet's Redis work runs in a worker thread, the call is awaited."""

    def __init__(self, fleet: Fleet, client: Any) -> None:
        self._fleet = fleet
        self._client = client

    def bind_call(self, call: Call) -> Callable[..., Awaitable[Any]]:
        """The coroutine function a driver awaits for ``call``."""
        fleet, real = self._fleet, call.bind(self._client)

        async def run(*args: Any) -> Any:
            plan = await asyncio.to_thread(fleet.before, call)
            if plan.cached:
                return plan.value
            try:
                answer = await real(*args)
            except BaseException:
                await asyncio.to_thread(fleet.failed, plan)
                raise
            await asyncio.to_thread(fleet.after, call, plan, answer)
            return answer

        return run
