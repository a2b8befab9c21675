"""The sandbox delivers webhooks: signed, to subscribers, retried on world time, loopback only."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import pytest
import trustme
from aiohttp import web

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.delivery import (
    WebhookDeliverer,
    _LoopbackResolver,
    encode_event,
    loopback_refusal,
    retry_delay,
)
from proxaro_scrape.sandbox.world import WebhookAttempt, WebhookEndpoint, World
from proxaro_scrape.webhooks import WebhookEvent, WebhookReceiver, verify_signature
from tests._support import aeventually, refused_port
from tests.conftest import SandboxFactory

SECRET = "whsec_test_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    """Only the deliverer: endpoints go straight into the world."""
    return make_sandbox(components={"webhooks"})


def register(sb: Sandbox, url: str, events: list[str], secret: str = SECRET) -> str:
    world = sb.world

    def add() -> str:
        ep = WebhookEndpoint(
            world.new_id("wh"), url, events, None, secret, world.clock.now(), world.account.id
        )
        world.webhooks.append(ep)
        return ep.id

    return sb.call(add)


def attempts(sb: Sandbox, webhook_id: str | None = None) -> list[WebhookAttempt]:
    return sb.call(lambda: [a for a in sb.world.attempts if webhook_id in (None, a.webhook_id)])


class Recorder:
    """A raw HTTPS endpoint: keeps every request, answers the queued statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes, str]] = []
        self.statuses = list(statuses or [])
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body, request.path))
        status = self.statuses.pop(0) if self.statuses else 200
        if status in (301, 302, 307):
            return web.Response(status=status, headers={"Location": "https://example.com/"})
        return web.Response(status=status)

    async def start(self, ctx: ssl.SSLContext, port: int = 0, path: str = "/hook") -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=ctx)
        await site.start()
        self.url = f"https://127.0.0.1:{self.runner.addresses[0][1]}{path}"
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- pure parts


def test_backoff_schedule_is_exponential_capped_and_within_24h() -> None:
    delays = [retry_delay(n) for n in range(1, 16)]
    assert delays[:4] == [30, 60, 120, 240]
    assert max(delays) == 4 * 3600
    assert all(b >= a for a, b in zip(delays, delays[1:]))
    # How many attempts fit in 24 h: the last one within the horizon.
    t, n = 0.0, 1
    while t + retry_delay(n) <= 86400:
        t += retry_delay(n)
        n += 1
    assert 10 <= n <= 20


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://127.0.0.1:8443/hook", True),
        ("https://127.9.8.7/hook", True),
        ("https://[::1]:9000/", True),
        ("https://localhost:9000/", True),
        ("https://LOCALHOST:9000/", True),
        ("http://127.0.0.1:8443/hook", False),
        ("https://ops.example.com/hooks/nb", False),
        ("https://192.0.2.1/hook", False),  # TEST-NET-1: never reached
        ("https://8.8.8.8/hook", False),
        ("https://127.0.0.1.nip.io/hook", False),
        ("https://localhost.example.com/", False),
        ("https://127.1/", False),
        ("https://[::ffff:8.8.8.8]/", False),
        ("https://127.0.0.1:99999/", False),
        ("not a url", False),
    ],
)
def test_loopback_refusal(url: str, allowed: bool) -> None:
    assert (loopback_refusal(url) is None) is allowed


async def test_resolver_answers_localhost_only_without_asking_anyone() -> None:
    resolver = _LoopbackResolver()
    (res,) = await resolver.resolve("localhost", 443)
    assert res["host"] == "127.0.0.1" and res["port"] == 443
    with pytest.raises(OSError):
        await resolver.resolve("example.com", 443)


def test_body_is_the_compact_payload() -> None:
    world = World(seed=0)
    ev = world.emit("order.paid", {"object": "order", "id": "ord_1"})
    body = encode_event(ev)
    assert json.loads(body) == ev.payload()
    assert b" " not in body


# ---------------------------------------------------------------------------- end to end


async def test_every_event_type_delivered_signed_to_subscribers(sb: Sandbox) -> None:
    ctx = sb.server_ssl_context()
    all_rec, paid_rec = Recorder(), Recorder()
    received: list[WebhookEvent] = []
    receiver = WebhookReceiver(SECRET)
    receiver.on("*", received.append, inline=True)
    await all_rec.start(ctx)
    await paid_rec.start(ctx)
    try:
        async with receiver.serve(ssl_context=ctx):
            hook_all = register(sb, all_rec.url, ["*"])
            register(sb, paid_rec.url, ["order.paid", "usage.threshold.80"], "whsec_test_other")
            hook_rcv = register(sb, receiver.url or "", ["*"])
            emitted = []
            for type_ in protocol.WEBHOOK_EVENTS:
                ev = sb.call(sb.world.emit, type_, {"object": "thing", "id": f"x_{type_}"})
                emitted.append(ev)
            n = len(emitted)
            await aeventually(lambda: len(all_rec.requests) == n and len(received) == n)
            await aeventually(lambda: len(paid_rec.requests) == 2)
            await receiver.drain(5)

            by_id = {ev.id: ev for ev in emitted}
            for headers, body, path in all_rec.requests:
                assert path == "/hook"
                assert headers["Content-Type"] == "application/json"
                assert verify_signature(body, headers[protocol.SIGNATURE_HEADER], SECRET)
                payload = json.loads(body)
                assert body == encode_event(by_id[payload["id"]])
                assert payload == by_id[payload["id"]].payload()
            assert {json.loads(b)["type"] for _, b, _ in all_rec.requests} == set(
                protocol.WEBHOOK_EVENTS
            )
            assert sorted(json.loads(b)["type"] for _, b, _ in paid_rec.requests) == [
                "order.paid",
                "usage.threshold.80",
            ]
            for headers, body, _ in paid_rec.requests:
                sig = headers[protocol.SIGNATURE_HEADER]
                assert verify_signature(body, sig, "whsec_test_other")
                assert not verify_signature(body, sig, SECRET)
            # Deliveries run concurrently: no order is promised, only each event once.
            assert sorted(e.id for e in received) == sorted(e.id for e in emitted)
            assert all(e.known for e in received)

            # The deliverer records an attempt after it has read the answer: wait for that.
            await aeventually(
                lambda: len(attempts(sb, hook_all)) == n and len(attempts(sb, hook_rcv)) == n
            )
            await aeventually(lambda: sb.world.counters["webhooks.attempts"] == 2 * n + 2)
            recorded = attempts(sb, hook_all)
            assert len(recorded) == n and all(a.ok and a.status == 200 for a in recorded)
            assert all(a.attempt == 1 and a.next_retry_at is None for a in recorded)
            assert len(attempts(sb, hook_rcv)) == n
            assert sb.world.counters["webhooks.attempts"] == 2 * n + 2
    finally:
        await all_rec.close()
        await paid_rec.close()


async def test_down_receiver_is_retried_with_backoff_until_up(sb: Sandbox) -> None:
    ctx = sb.server_ssl_context()
    port = free_port()
    got: list[str] = []
    receiver = WebhookReceiver(SECRET)
    receiver.on("*", lambda e: got.append(e.id), inline=True)
    hook = register(sb, f"https://127.0.0.1:{port}/hooks", ["credentials.rotated"])
    sb.call(sb.world.rotate_credentials)
    ev = sb.world.events[-1]

    await aeventually(lambda: len(attempts(sb, hook)) == 1)
    first = attempts(sb, hook)[0]
    assert not first.ok and first.status is None and "connection" in (first.error or "")
    assert first.next_retry_at == pytest.approx(first.attempted_at + 30)

    # The retry waits in the queue until it is due in world time (once the first attempt's
    # task has ended, it is all that is pending)...
    await aeventually(lambda: sb.call(lambda: sb.deliverer.pending) == 1)
    sb.call(sb.world.clock.advance, 30)
    await aeventually(lambda: len(attempts(sb, hook)) == 2)
    second = attempts(sb, hook)[1]
    assert second.attempt == 2 and not second.ok
    # ...and not a moment before (world time, so a slow machine cannot blur it).
    assert second.attempted_at >= first.attempted_at + 30
    assert second.next_retry_at == pytest.approx(second.attempted_at + 60)

    async with receiver.serve("127.0.0.1", port, ssl_context=ctx):
        sb.call(sb.world.clock.advance, 60)
        await aeventually(lambda: len(attempts(sb, hook)) == 3)
        await aeventually(lambda: got == [ev.id])
        third = attempts(sb, hook)[2]
        assert third.ok and third.status == 200 and third.next_retry_at is None
        # Delivered: no further attempt however far the clock goes (nothing is queued).
        await aeventually(lambda: sb.call(lambda: sb.deliverer.pending) == 0)
        sb.call(sb.world.clock.advance, 86400)
        assert sb.call(lambda: sb.deliverer.pending) == 0
        assert len(attempts(sb, hook)) == 3
    assert sb.world.counters["webhooks.attempts"] == 3
    assert sb.world.counters["webhooks.delivered"] == 1


async def test_non_2xx_and_redirects_are_retried(sb: Sandbox) -> None:
    rec = Recorder(statuses=[500, 302, 404, 200])
    await rec.start(sb.server_ssl_context())
    try:
        hook = register(sb, rec.url, ["*"])
        sb.call(sb.world.emit, "order.paid", {"object": "order", "id": "ord_1"})
        for n in range(1, 5):
            await aeventually(lambda n=n: len(attempts(sb, hook)) == n)  # type: ignore[misc]
            if n < 4:
                sb.call(sb.world.clock.advance, retry_delay(n))
        got = attempts(sb, hook)
        assert [a.status for a in got] == [500, 302, 404, 200]
        assert [a.ok for a in got] == [False, False, False, True]
        assert got[0].error == "HTTP 500"
        assert [a.attempt for a in got] == [1, 2, 3, 4]
        # The same bytes every time, so the receiver can deduplicate by id.
        assert len({body for _, body, _ in rec.requests}) == 1
        assert len(rec.requests) == 4  # the redirect was not followed
    finally:
        await rec.close()


async def test_gives_up_after_24_hours(sb: Sandbox) -> None:
    with refused_port() as port:
        await _gives_up_after_24_hours(sb, port)


async def _gives_up_after_24_hours(sb: Sandbox, port: int) -> None:
    hook = register(sb, f"https://127.0.0.1:{port}/", ["*"])
    sb.call(sb.world.emit, "order.expired", {"object": "order", "id": "ord_2"})
    await aeventually(lambda: len(attempts(sb, hook)) == 1)
    for _ in range(40):
        nxt = attempts(sb, hook)[-1].next_retry_at
        if nxt is None:
            break
        count = len(attempts(sb, hook))
        sb.call(sb.world.clock.advance, nxt - sb.world.clock.now() + 1)
        await aeventually(lambda count=count: len(attempts(sb, hook)) == count + 1)  # type: ignore[misc]
    got = attempts(sb, hook)
    assert got[-1].next_retry_at is None and not any(a.ok for a in got)
    created = sb.world.events[-1].created_at
    assert all(a.attempted_at <= created + 86400 + 5 for a in got)
    assert got[-1].attempted_at > created + 12 * 3600  # it really kept trying for hours
    gaps = [b.attempted_at - a.attempted_at for a, b in zip(got, got[1:])]
    assert gaps[0] == pytest.approx(31, abs=1) and gaps[1] == pytest.approx(61, abs=1)
    assert sb.world.counters["webhooks.abandoned"] == 1
    # Abandoned: nothing is queued (once the last attempt's task has ended), so no attempt
    # comes however far the clock goes.
    await aeventually(lambda: sb.call(lambda: sb.deliverer.pending) == 0)
    sb.call(sb.world.clock.advance, 7 * 86400)
    assert sb.call(lambda: sb.deliverer.pending) == 0
    assert len(attempts(sb, hook)) == len(got)


async def test_non_loopback_endpoint_fails_without_connecting(sb: Sandbox) -> None:
    far = register(sb, "https://ops.example.com/hooks/nb", ["*"])
    lan = register(sb, "https://192.0.2.3:8443/hooks", ["order.paid"])  # TEST-NET-1
    sb.call(sb.world.emit, "order.paid", {"object": "order", "id": "ord_1"})
    await aeventually(lambda: len(attempts(sb)) == 2)
    for hook in (far, lan):
        (att,) = attempts(sb, hook)
        assert not att.ok and att.status is None
        assert "loopback" in (att.error or "")
        assert att.next_retry_at is not None  # still retried, as a real outage would be
    sb.call(sb.world.clock.advance, 30)
    await aeventually(lambda: len(attempts(sb)) == 4)
    # Not even an HTTP client was made: nothing could have connected or resolved.
    assert sb.deliverer._session is None
    assert sb.world.counters["webhooks.attempts"] == 4


async def test_untrusted_certificate_is_a_failed_attempt(sb: Sandbox) -> None:
    stranger = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger.issue_cert("127.0.0.1").configure_cert(ctx)
    rec = Recorder()
    await rec.start(ctx)
    try:
        hook = register(sb, rec.url, ["*"])
        sb.call(sb.world.emit, "allowlist.updated", {"object": "allowlist_entry", "id": "al_1"})
        await aeventually(lambda: len(attempts(sb, hook)) == 1)
        (att,) = attempts(sb, hook)
        assert not att.ok and "TLS" in (att.error or "")
        assert rec.requests == []
    finally:
        await rec.close()


async def test_retry_is_signed_with_the_secret_of_the_attempt_time(sb: Sandbox) -> None:
    rec = Recorder(statuses=[503])
    await rec.start(sb.server_ssl_context())
    try:
        hook = register(sb, rec.url, ["*"])
        sb.call(sb.world.emit, "order.paid", {"object": "order", "id": "ord_1"})
        await aeventually(lambda: len(rec.requests) == 1)
        new = "whsec_test_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"

        def rotate() -> None:
            next(e for e in sb.world.webhooks if e.id == hook).secret = new

        sb.call(rotate)
        sb.call(sb.world.clock.advance, 30)
        await aeventually(lambda: len(rec.requests) == 2)
        (h1, b1, _), (h2, b2, _) = rec.requests
        assert verify_signature(b1, h1[protocol.SIGNATURE_HEADER], SECRET)
        assert verify_signature(b2, h2[protocol.SIGNATURE_HEADER], new)
        assert not verify_signature(b2, h2[protocol.SIGNATURE_HEADER], SECRET)
    finally:
        await rec.close()


async def test_other_accounts_endpoints_get_nothing(sb: Sandbox) -> None:
    rec = Recorder()
    await rec.start(sb.server_ssl_context())
    try:

        def add() -> None:
            w = sb.world
            w.webhooks.append(
                WebhookEndpoint(
                    w.new_id("wh"), rec.url, ["*"], None, SECRET, 0.0, w.other_account.id
                )
            )

        sb.call(add)
        sb.call(sb.world.emit, "order.paid", {"object": "order", "id": "ord_1"})
        # The event is queued on the loop as it is emitted: for no endpoint here.
        assert sb.call(lambda: sb.deliverer.pending) == 0
        sb.call(sb.world.clock.advance, 3600)
        assert rec.requests == [] and attempts(sb) == []
    finally:
        await rec.close()


async def test_close_cancels_pending_work_quickly() -> None:
    with refused_port() as refused:
        await _close_cancels_pending_work_quickly(refused)


async def _close_cancels_pending_work_quickly(refused: int) -> None:
    world = World(seed=0)
    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    deliverer = WebhookDeliverer(world, client)
    deliverer.start()
    world.webhooks.append(
        WebhookEndpoint(
            "wh_1", f"https://127.0.0.1:{refused}/", ["*"], None, SECRET, 0.0, world.account.id
        )
    )
    world.emit("order.paid", {"object": "order", "id": "ord_1"})
    # The attempt is recorded, its retry queued, and then its task ends: wait for all three.
    await aeventually(lambda: len(world.attempts) == 1 and deliverer.pending == 1)
    assert deliverer.pending == 1  # the retry waits (due in 30 s)
    # It does not wait for the retry, due in 30 s: the bound is a failure bound, far from it.
    await asyncio.wait_for(deliverer.close(), timeout=20)
    assert deliverer.pending == 0
    world.emit("order.paid", {"object": "order", "id": "ord_2"})  # ignored once closed
    world.clock.advance(3600)
    assert deliverer.pending == 0 and len(world.attempts) == 1
