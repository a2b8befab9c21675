"""Webhooks drive the gateway manager: a rotation made through the API is in use within 1 s."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx

from proxaro_scrape import AsyncProxaro, GatewayManager
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.webhooks import WebhookReceiver
from tests._support import aeventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Traffic:
    """Light, bounded traffic through the manager: ``workers`` loops, at most ``limit`` requests."""

    def __init__(self, mgr: GatewayManager, url: str, workers: int = 2, limit: int = 400) -> None:
        self.mgr, self.url, self.workers, self.limit = mgr, url, workers, limit
        self.sent: list[tuple[float, str, int]] = []  # (when, password, status)
        self.failures: list[BaseException] = []
        self.kinds: list[str] = []
        self._stop = asyncio.Event()
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for client in self._clients.values():
            await client.aclose()

    def _client(self, proxy_url: str) -> httpx.AsyncClient:
        if proxy_url not in self._clients:
            self._clients[proxy_url] = httpx.AsyncClient(proxy=proxy_url, timeout=10)
        return self._clients[proxy_url]

    async def _worker(self) -> None:
        while not self._stop.is_set() and len(self.sent) < self.limit:
            try:
                await self._one()
            except Exception as exc:  # a logical request that failed
                self.failures.append(exc)
            await asyncio.sleep(0.02)

    async def _one(self) -> None:
        rr = self.mgr.request(self.url)
        while True:
            route = rr.next_route()
            # When the route was chosen (not when its answer came): what orders it against a
            # switch of credentials.
            routed = time.monotonic()
            try:
                resp = await self._client(route.proxy_url).get(self.url)
            except Exception as exc:
                outcome = rr.observe(exception=exc)
            else:
                self.sent.append((routed, route.password.reveal(), resp.status_code))
                outcome = rr.observe(status=resp.status_code, headers=resp.headers)
            self.kinds.append(outcome.kind)
            if outcome.kind == "success":
                return
            if not outcome.retry:
                assert outcome.error is not None
                raise outcome.error
            if outcome.refresh:
                await self.mgr.arefresh_credentials(route.credentials_version)


async def test_rotation_through_the_api_is_used_before_any_poll(sandbox: Sandbox) -> None:
    port = free_port()
    mgr = GatewayManager(
        api_key=sandbox.api_key,
        base_url=sandbox.api_url,
        # Polling alone would take an hour: only the webhook can make it in time.
        credentials_poll_interval=3600,
        pool_ttl=3600,
        usage_poll_interval=None,
    )
    async with AsyncProxaro(api_key=sandbox.api_key, base_url=sandbox.api_url) as api:
        hook = await api.webhooks.create(f"https://127.0.0.1:{port}/proxaro", ["*"])
        assert hook.secret is not None
        receiver = WebhookReceiver(hook.secret)
        receiver.attach(mgr)
        await mgr.astart()
        try:
            async with receiver.serve("127.0.0.1", port, ssl_context=sandbox.server_ssl_context()):
                old = mgr.credentials
                assert old is not None
                traffic = Traffic(mgr, f"{sandbox.site_url}/")
                traffic.start()
                await aeventually(lambda: len(traffic.sent) >= 5)

                rotated = await api.credentials.rotate()
                # Timestamps order the traffic around the switch; nothing bounds the time.
                t0 = time.monotonic()
                new_password = rotated.password

                def switched_to_new() -> bool:
                    creds: Any = mgr.credentials
                    return creds is not None and creds.password == new_password

                # The poll is an hour away: only the webhook can make this happen.
                await aeventually(switched_to_new, message="the rotation never reached the manager")
                t1 = time.monotonic()
                route = mgr.request(f"{sandbox.site_url}/").next_route()
                assert route.password == new_password and route.password != old.password
                await aeventually(lambda: sum(when > t1 for when, _, _ in traffic.sent) >= 5)
                await traffic.stop()
                await receiver.drain(5)
        finally:
            await mgr.aclose()

    assert traffic.failures == []
    assert traffic.sent and all(status == 200 for _, _, status in traffic.sent)
    assert set(traffic.kinds) == {"success"}  # not one 407, not one retry
    assert sandbox.world.counters["gateway.errors:auth_failed"] == 0
    before = [pw for when, pw, _ in traffic.sent if when < t0]
    after = [pw for when, pw, _ in traffic.sent if when > t1]
    assert before and set(before) == {old.password.reveal()}
    assert after and set(after) == {new_password.reveal()}
    assert receiver.stats()["accepted"] >= 1 and receiver.stats()["handler_errors"] == 0


async def test_rotation_reaches_a_sync_manager_from_the_receivers_loop(sandbox: Sandbox) -> None:
    """The manager's thread driver, poked from the receiver's loop (another thread)."""
    port = free_port()
    mgr = GatewayManager(
        api_key=sandbox.api_key,
        base_url=sandbox.api_url,
        credentials_poll_interval=3600,
        pool_ttl=3600,
        usage_poll_interval=None,
    )
    await asyncio.to_thread(mgr.start)
    try:
        async with AsyncProxaro(api_key=sandbox.api_key, base_url=sandbox.api_url) as api:
            hook = await api.webhooks.create(f"https://127.0.0.1:{port}/", ["credentials.rotated"])
            assert hook.secret is not None
            receiver = WebhookReceiver(hook.secret)
            receiver.attach(mgr)
            async with receiver.serve("127.0.0.1", port, ssl_context=sandbox.server_ssl_context()):
                version = mgr.credentials_version
                rotated = await api.credentials.rotate()
                # The poll is an hour away: only the webhook can make this happen.
                await aeventually(
                    lambda: mgr.credentials_version != version,
                    message="the rotation never reached the manager",
                )
                route = mgr.request(f"{sandbox.site_url}/").next_route()
    finally:
        await asyncio.to_thread(mgr.close)
    assert route.password == rotated.password
    async with httpx.AsyncClient(proxy=route.proxy_url, timeout=10) as http:
        assert (await http.get(f"{sandbox.site_url}/")).status_code == 200
