"""Stale and replayed webhook events, end to end: sandbox → receiver → manager.

A signature proves who wrote an event, not when: a correctly signed ``usage.threshold.100``
about a past period, past the 24 h of retries, or older than the manager's last usage reading
must leave routing alone under ``usage_cap_action="stop"``, and a fresh one must stop it.  Old
``credentials.rotated`` events, however many, cost at most one credentials call.  (The decision
table itself is ``test_gateway_events.py``.)
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx

from proxaro_scrape import AsyncProxaro, GatewayManager
from proxaro_scrape.errors import UsageCapError
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.webhooks import SIGNATURE_HEADER, WebhookReceiver, compute_signature
from tests._support import aeventually

CREDENTIALS_CALLS = "api.requests:GET /v1/credentials"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def previous_period(now: datetime) -> str:
    first = now.replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")


class Hook:
    """A webhook endpoint registered with the sandbox, its receiver attached to ``mgr``."""

    def __init__(self, sandbox: Sandbox, mgr: GatewayManager, secret: str, port: int) -> None:
        self.sandbox, self.mgr, self.secret, self.port = sandbox, mgr, secret, port
        self.receiver = self.new_receiver()

    def new_receiver(self) -> WebhookReceiver:
        receiver = WebhookReceiver(self.secret)
        receiver.attach(self.mgr)
        return receiver

    async def emit(self, type_: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sandbox emits (and signs, and delivers) one event; wait until it was handled."""
        handled = self.receiver.stats()["handled"]
        body: dict[str, Any] = {"type": type_} if data is None else {"type": type_, "data": data}
        payload = await self.sandbox.acontrol("event", **body)
        await aeventually(lambda: self.receiver.stats()["handled"] > handled, timeout=10)
        await self.receiver.drain(5)
        return dict(payload)

    async def replay(self, payload: dict[str, Any]) -> None:
        """POST ``payload``, correctly signed, straight to the receiver (as a replayer would)."""
        raw = json.dumps(payload).encode()
        handled = self.receiver.stats()["handled"]
        async with httpx.AsyncClient(verify=self.sandbox.client_ssl_context()) as http:
            resp = await http.post(
                f"https://127.0.0.1:{self.port}/",
                content=raw,
                headers={SIGNATURE_HEADER: compute_signature(raw, self.secret)},
            )
        assert resp.status_code == 200 and resp.json()["duplicate"] is False
        await aeventually(lambda: self.receiver.stats()["handled"] > handled, timeout=10)
        await self.receiver.drain(5)


@asynccontextmanager
async def hooked(sandbox: Sandbox, **options: Any) -> AsyncIterator[Hook]:
    """A started manager (``options``) with a registered, served, attached receiver."""
    port = free_port()
    mgr = GatewayManager(
        sandbox.api_key,
        sandbox.api_url,
        credentials_poll_interval=3600,
        pool_ttl=3600,
        **{"usage_poll_interval": None, **options},
    )
    async with AsyncProxaro(api_key=sandbox.api_key, base_url=sandbox.api_url) as api:
        made = await api.webhooks.create(f"https://127.0.0.1:{port}/", ["*"])
        assert made.secret is not None
        hook = Hook(sandbox, mgr, made.secret.reveal(), port)
    await mgr.astart()
    try:
        async with hook.receiver.serve("127.0.0.1", port, ssl_context=sandbox.server_ssl_context()):
            yield hook
    finally:
        await mgr.aclose()


async def routes(sandbox: Sandbox, mgr: GatewayManager) -> bool:
    """Does the manager still route?  (And the route really carries a request.)"""
    try:
        route = mgr.request(f"{sandbox.site_url}/").next_route()
    except UsageCapError:
        return False
    async with httpx.AsyncClient(proxy=route.proxy_url, timeout=10) as http:
        assert (await http.get(f"{sandbox.site_url}/")).status_code == 200
    return True


async def test_an_old_cap_event_leaves_routing_working_and_a_fresh_one_stops_it(
    sandbox: Sandbox,
) -> None:
    async with hooked(sandbox, usage_cap_action="stop") as hook:
        mgr = hook.mgr
        now = sandbox.world.clock.datetime()
        cap = sandbox.world.cap_bytes()
        # 1. Signed and delivered by the sandbox, but about last month's usage.
        await hook.emit(
            "usage.threshold.100",
            {"object": "usage", "period": previous_period(now), "total_bytes": cap,
             "cap_bytes": cap, "threshold": 100},
        )  # fmt: skip
        assert await routes(sandbox, mgr)
        # 2. This month's, correctly signed, but two days old: past Proxaro's 24 h of retries.
        old = now - timedelta(days=2)
        await hook.replay(
            {"object": "event", "id": "evt_replayed_1", "type": "usage.threshold.100",
             "created_at": iso(old), "data": {"object": "usage", "total_bytes": cap,
                                               "cap_bytes": cap, "threshold": 100}}
        )  # fmt: skip
        assert await routes(sandbox, mgr)
        assert mgr.stats().get("usage_cap_reached", 0) == 0
        # 3. A fresh one, this period: routing stops.
        await hook.emit("usage.threshold.100")
        assert not await routes(sandbox, mgr)
        assert mgr.stats()["usage_cap_reached"] == 1
    assert hook.receiver.stats()["handler_errors"] == 0


async def test_a_cap_event_replayed_after_the_plan_grew_does_not_stop_routing_again(
    sandbox: Sandbox,
) -> None:
    async with hooked(sandbox, usage_cap_action="stop", usage_poll_interval=1) as hook:
        mgr = hook.mgr
        # The world's usage really reaches the cap (it fires the 80 % and 100 % events), so the
        # usage polls, one a second, agree with the event instead of re-arming the guard.
        handled = hook.receiver.stats()["handled"]
        await sandbox.acontrol("usage", to_percent=100)
        await aeventually(lambda: hook.receiver.stats()["handled"] >= handled + 2)
        await hook.receiver.drain(5)
        first = next(
            e.payload() for e in reversed(sandbox.world.events) if e.type == "usage.threshold.100"
        )
        assert not await routes(sandbox, mgr)
        # The plan grows (25 → 100 GB): the next usage reading re-arms the guard.
        polls = mgr.stats()["usage_polls"]
        await sandbox.acontrol("plan", plan="scale")
        await aeventually(lambda: mgr.stats()["usage_polls"] > polls + 1, timeout=15)
        assert await routes(sandbox, mgr)
        # The receiver restarts (its deduplicator is empty) and the old delivery comes again.
        await hook.receiver.close()
        hook.receiver = hook.new_receiver()
        await hook.receiver.start("127.0.0.1", hook.port, ssl_context=sandbox.server_ssl_context())
        await hook.replay(first)
        assert await routes(sandbox, mgr)
        assert mgr.stats()["usage_cap_reached"] == 1


async def test_replayed_rotations_cost_at_most_one_credentials_call(sandbox: Sandbox) -> None:
    async with hooked(sandbox) as hook:
        mgr = hook.mgr
        version = mgr.credentials_version
        calls = sandbox.world.counters[CREDENTIALS_CALLS]
        now = sandbox.world.clock.datetime()
        for n in range(20):  # twenty distinct old rotations (distinct ids: dedupe cannot help)
            at = iso(now - timedelta(hours=3, minutes=n))
            await hook.replay(
                {"object": "event", "id": f"evt_old_rotation_{n}", "type": "credentials.rotated",
                 "created_at": at, "data": {"object": "credentials", "id": "cred_x",
                                             "rotated_at": at}}
            )  # fmt: skip
        # The first one (nothing newer held yet) asks for one refresh, in the background.
        await aeventually(lambda: sandbox.world.counters[CREDENTIALS_CALLS] > calls, timeout=5)
        assert sandbox.world.counters[CREDENTIALS_CALLS] - calls <= 1
        assert mgr.credentials_version == version  # nothing rolled back, nothing condemned
        assert await routes(sandbox, mgr)
        assert mgr.stats()["rotation_events"] == 1
