"""Webhooks end to end: endpoints registered through the API, events from the sandbox, verified."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from aiohttp import web

from proxaro_scrape import AsyncProxaro, protocol
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.webhooks import WebhookEvent, WebhookReceiver, verify_signature
from tests._support import aeventually
from tests.conftest import SandboxFactory


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api", "webhooks"})


def client(sb: Sandbox) -> AsyncProxaro:
    return AsyncProxaro(api_key=sb.api_key, base_url=sb.api_url)


async def receipts(api: AsyncProxaro, webhook_id: str) -> list[Any]:
    """Every delivery receipt of an endpoint, oldest first."""
    got = [a async for a in api.webhooks.attempts(webhook_id)]
    return sorted(got, key=lambda a: (a.attempted_at, a.attempt))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_every_event_type_and_an_api_rotation_arrive_verified(sb: Sandbox) -> None:
    ctx = sb.server_ssl_context()
    received: list[WebhookEvent] = []
    only_100: list[WebhookEvent] = []
    async with client(sb) as api:
        # The secret is only known once the endpoint exists: register, then serve on that port.
        port, port_100 = free_port(), free_port()
        hook = await api.webhooks.create(f"https://127.0.0.1:{port}/hooks/nb", ["*"])
        hook_100 = await api.webhooks.create(
            f"https://localhost:{port_100}/", ["usage.threshold.100"], label="cap"
        )
        assert hook.secret is not None and hook.secret.reveal().startswith("whsec_test_")
        assert hook_100.secret is not None
        receiver = WebhookReceiver(hook.secret)
        receiver.on("*", received.append, inline=True)
        receiver_100 = WebhookReceiver(hook_100.secret)
        receiver_100.on("*", only_100.append, inline=True)
        async with receiver.serve("127.0.0.1", port, ssl_context=ctx):
            async with receiver_100.serve("127.0.0.1", port_100, ssl_context=ctx):
                sent = []
                for type_ in protocol.WEBHOOK_EVENTS:
                    sent.append(await sb.acontrol("event", type=type_))
                rotated = await api.credentials.rotate()
                await aeventually(lambda: len(received) == len(sent) + 1 and len(only_100) == 1)
                # Nothing more comes: the deliverer has nothing queued nor in flight.
                await aeventually(lambda: sb.call(lambda: sb.deliverer.pending) == 0)
                assert len(received) == len(sent) + 1 and len(only_100) == 1

        # Exactly what the sandbox emitted, verified by the receiver, each once (deliveries
        # run concurrently, so in no promised order).
        by_id = {e.id: e for e in received}
        assert len(by_id) == len(received)
        assert all(by_id[p["id"]].payload == p for p in sent)
        (last,) = [e for e in received if e.id not in {p["id"] for p in sent}]
        assert last.type == "credentials.rotated"
        assert last.credentials is not None and last.credentials.id == rotated.id
        assert "password" not in json.dumps(dict(last.data))
        assert all(e.known for e in received)
        by_type = {e.type: e for e in received if e is not last}
        assert set(by_type) == set(protocol.WEBHOOK_EVENTS)
        order = by_type["order.paid"].order
        assert order is not None and order.status == "paid" and order.id
        usage = by_type["usage.threshold.80"].usage
        assert usage is not None and usage.threshold == 80 and usage.cap_bytes
        entry = by_type["allowlist.updated"].allowlist
        assert entry is not None and entry.action == "added" and entry.cidr
        assert [e.type for e in only_100] == ["usage.threshold.100"]
        assert receiver.stats()["accepted"] == len(sent) + 1

        # The receipts.
        got_receipts = await receipts(api, hook.id)
        assert len(got_receipts) == len(sent) + 1
        assert all(a.ok and a.status == 200 and a.attempt == 1 for a in got_receipts)
        assert {a.event_id for a in got_receipts} == {e.id for e in received}
        assert len(await receipts(api, hook_100.id)) == 1
        listed = await api.webhooks.list()
        assert {h.id for h in listed} == {hook.id, hook_100.id}
        assert all(h.secret is None for h in listed)  # secrets only on creation and rotation
    assert sb.world.counters["webhooks.attempts"] == len(sent) + 2


async def test_down_receiver_is_retried_with_backoff_and_succeeds_once_up(sb: Sandbox) -> None:
    ctx = sb.server_ssl_context()
    port = free_port()
    got: list[str] = []
    async with client(sb) as api:
        hook = await api.webhooks.create(f"https://127.0.0.1:{port}/", ["order.paid"])
        assert hook.secret is not None
        event = await sb.acontrol("event", type="order.paid")

        first = await aeventually(lambda: receipts(api, hook.id))
        assert len(first) == 1 and not first[0].ok and first[0].status is None
        assert first[0].event_id == event["id"] and first[0].error
        assert first[0].next_retry_at is not None
        gap = (first[0].next_retry_at - first[0].attempted_at).total_seconds()
        assert gap == pytest.approx(30, abs=1)

        await sb.acontrol("clock", advance=31)

        async def two() -> Any:
            got_ = await receipts(api, hook.id)
            return got_ if len(got_) == 2 else None

        second = (await aeventually(two))[1]
        assert second.attempt == 2 and not second.ok
        assert second.next_retry_at is not None
        gap = (second.next_retry_at - second.attempted_at).total_seconds()
        assert gap == pytest.approx(60, abs=1)  # doubled

        receiver = WebhookReceiver(hook.secret)
        receiver.on("*", lambda e: got.append(e.id), inline=True)
        async with receiver.serve("127.0.0.1", port, ssl_context=ctx):
            # Speed the world up instead of advancing it: 60 world s in half a real second.
            await sb.acontrol("clock", speed=120)
            await aeventually(lambda: got == [event["id"]])
            await sb.acontrol("clock", speed=1)
        got_receipts = await receipts(api, hook.id)
    assert [a.attempt for a in got_receipts] == [1, 2, 3]
    assert [a.ok for a in got_receipts] == [False, False, True]
    assert got_receipts[-1].status == 200 and got_receipts[-1].next_retry_at is None
    assert {a.event_id for a in got_receipts} == {event["id"]}


async def test_rotating_the_secret_signs_with_the_new_one_only(sb: Sandbox) -> None:
    captured: list[tuple[bytes, str]] = []

    async def handle(request: web.Request) -> web.Response:
        captured.append((await request.read(), request.headers[protocol.SIGNATURE_HEADER]))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sb.server_ssl_context())
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        async with client(sb) as api:
            hook = await api.webhooks.create(url, ["order.expired", "allowlist.updated"])
            old = hook.secret
            await sb.acontrol("event", type="order.expired")
            await aeventually(lambda: len(captured) == 1)
            rotated = await api.webhooks.rotate_secret(hook.id)
            new = rotated.secret
            assert old is not None and new is not None and old != new
            await api.allowlist.add("198.51.100.42/32", label="crawler")  # a real event
            await aeventually(lambda: len(captured) == 2)
            got_receipts = await receipts(api, hook.id)
    finally:
        await runner.cleanup()
    (body1, sig1), (body2, sig2) = captured
    assert verify_signature(body1, sig1, old)
    assert not verify_signature(body1, sig1, new)
    assert verify_signature(body2, sig2, new)
    assert not verify_signature(body2, sig2, old)
    assert json.loads(body2)["type"] == "allowlist.updated"
    assert all(a.ok and a.status == 204 for a in got_receipts)


async def test_non_loopback_endpoint_is_accepted_but_never_connected(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def spy(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    async with client(sb) as api:
        hook = await api.webhooks.create("https://ops.example.com/hooks/nb", ["*"])
        await sb.acontrol("event", type="usage.threshold.80")

        first = await aeventually(lambda: receipts(api, hook.id))
        assert len(first) == 1 and not first[0].ok and first[0].status is None
        assert "loopback" in (first[0].error or "")
        await sb.acontrol("clock", advance=31)

        async def two() -> Any:
            got = await receipts(api, hook.id)
            return got if len(got) == 2 else None

        second = (await aeventually(two))[1]
        assert not second.ok and second.attempt == 2
    assert not any("example.com" in h for h in looked_up)
    assert sb.deliverer._session is None  # no HTTP client was ever needed
