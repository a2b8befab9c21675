"""Webhooks, client side: signatures, event parsing, deduplication, the receiver (HTTPS, ASGI)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import ssl
import threading
import time
from typing import Any

import httpx
import pytest
import trustme

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import (
    ConfigurationError,
    ProxaroError,
    WebhookPayloadError,
    WebhookSignatureError,
)
from proxaro_scrape.sandbox.world import World
from proxaro_scrape.webhooks import (
    MANAGER_EVENTS,
    EventDeduplicator,
    WebhookEvent,
    WebhookReceiver,
    compute_signature,
    listen,
    parse_event,
    verify_event,
    verify_signature,
)

SECRET = "whsec_test_0123456789abcdef0123456789abcdef"
OTHER = "whsec_test_ffffffffffffffffffffffffffffffff"


def event_body(event_id: str = "evt_01", type_: str = "credentials.rotated", **data: Any) -> bytes:
    payload = {
        "object": "event",
        "id": event_id,
        "type": type_,
        "created_at": "2026-04-22T14:30:00Z",
        "data": data
        or {"object": "credentials", "id": "cred_1", "rotated_at": "2026-04-22T14:30:00Z"},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------- verify_signature

BODY = event_body()
GOOD = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_known_vector() -> None:
    # RFC 4231-style check against the well-known HMAC-SHA256 of the fox sentence.
    body = b"The quick brown fox jumps over the lazy dog"
    expected = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    assert compute_signature(body, "key") == expected
    assert verify_signature(body, expected, "key")


@pytest.mark.parametrize(
    ("body", "header", "secret", "ok"),
    [
        pytest.param(BODY, GOOD, SECRET, True, id="good"),
        pytest.param(BODY, GOOD, Secret(SECRET), True, id="good-Secret"),
        pytest.param(bytearray(BODY), GOOD, SECRET, True, id="good-bytearray"),
        pytest.param(BODY.decode(), GOOD, SECRET, True, id="str-body-utf8-like-node"),
        pytest.param(BODY + b" ", GOOD, SECRET, False, id="tampered-body-appended"),
        pytest.param(BODY.replace(b"cred_1", b"cred_2"), GOOD, SECRET, False, id="tampered"),
        pytest.param(BODY, GOOD, OTHER, False, id="wrong-secret"),
        pytest.param(BODY, "", SECRET, False, id="empty-header"),
        pytest.param(BODY, GOOD[:32], SECRET, False, id="short-header"),
        pytest.param(BODY, GOOD[:-1], SECRET, False, id="one-char-short"),
        pytest.param(BODY, GOOD + "0", SECRET, False, id="long-header"),
        pytest.param(BODY, "z" * 64, SECRET, False, id="non-hex"),
        pytest.param(BODY, "é" * 64, SECRET, False, id="non-ascii"),
        pytest.param(BODY, "\udcff" * 64, SECRET, False, id="lone-surrogates"),
        # The Node snippet compares the hex strings, so upper case does not verify.
        pytest.param(BODY, GOOD.upper(), SECRET, False, id="uppercase-hex"),
        pytest.param(BODY, "sha256=" + GOOD, SECRET, False, id="prefixed"),
        pytest.param(BODY, " " + GOOD, SECRET, False, id="leading-space"),
        pytest.param(BODY, None, SECRET, False, id="none-header"),
        pytest.param(BODY, GOOD.encode(), SECRET, False, id="bytes-header"),
        pytest.param(BODY, 12345, SECRET, False, id="int-header"),
        pytest.param(BODY, GOOD, "", False, id="empty-secret"),
        pytest.param(BODY, GOOD, None, False, id="none-secret"),
        pytest.param(BODY, GOOD, b"secret", False, id="bytes-secret"),
        pytest.param(None, GOOD, SECRET, False, id="none-body"),
        pytest.param(12, GOOD, SECRET, False, id="int-body"),
    ],
)
def test_verify_signature_table(body: Any, header: Any, secret: Any, ok: bool) -> None:
    assert verify_signature(body, header, secret) is ok


def test_verify_signature_never_raises_on_garbage() -> None:
    rng = random.Random(0)
    junk: list[Any] = [None, 0, 1.5, b"", "", [], {}, object(), "\x00" * 64, "é", Secret("x")]
    for _ in range(300):
        args = [rng.choice(junk + [BODY, GOOD, SECRET]) for _ in range(3)]
        assert verify_signature(*args) in (True, False)


def test_compute_signature_refuses_empty_secret() -> None:
    with pytest.raises(ConfigurationError) as info:
        compute_signature(b"{}", "")
    assert info.value.param == "secret"


def test_verify_event() -> None:
    event = verify_event(BODY, GOOD, SECRET)
    assert event.id == "evt_01"
    assert verify_event(BODY, GOOD, [OTHER, Secret(SECRET)]).id == "evt_01"
    with pytest.raises(WebhookSignatureError):
        verify_event(BODY, None, SECRET)
    with pytest.raises(WebhookSignatureError):
        verify_event(BODY, GOOD, OTHER)
    bad = b"not json"
    with pytest.raises(WebhookPayloadError):
        verify_event(bad, compute_signature(bad, SECRET), SECRET)
    assert issubclass(WebhookSignatureError, ProxaroError)


def test_signature_error_messages_hold_no_secret() -> None:
    with pytest.raises(WebhookSignatureError) as info:
        verify_event(BODY, "0" * 64, SECRET)
    assert SECRET not in str(info.value)
    receiver = WebhookReceiver(SECRET)
    assert SECRET not in repr(receiver)


# ---------------------------------------------------------------------------- parsing


def test_parse_matches_the_sandbox_payload_for_every_event_type() -> None:
    world = World(seed=0)
    world.rotate_credentials()
    world.add_usage("residential", "us", world.cap_bytes() or 0)  # 80 and 100 at once
    world.emit(
        "order.paid",
        {
            "object": "order",
            "id": "ord_1",
            "plan_id": "growth",
            "amount_usd": 99.0,
            "status": "paid",
            "payment_method": "card",
            "created_at": "2026-04-01T09:11:44Z",
            "paid_at": "2026-04-01T09:12:08Z",
        },
    )
    world.emit("order.expired", {"object": "order", "id": "ord_2", "status": "expired"})
    world.emit(
        "allowlist.updated",
        {"object": "allowlist_entry", "id": "al_1", "cidr": "198.51.100.42/32", "label": None},
    )
    by_type = {}
    for ev in world.events:
        body = json.dumps(ev.payload(), separators=(",", ":")).encode()
        parsed = parse_event(body)
        assert parsed.payload == ev.payload()
        assert parsed.id == ev.id and parsed.id.startswith("evt_")
        assert parsed.type == ev.type and parsed.known
        assert abs(parsed.created_at.timestamp() - int(ev.created_at)) < 1
        assert parsed.created_at.tzinfo is not None
        by_type[ev.type] = parsed
    assert set(by_type) == set(protocol.WEBHOOK_EVENTS)

    rotated = by_type["credentials.rotated"].credentials
    assert rotated is not None and rotated.id == world.credentials.id
    assert rotated.rotated_at is not None
    assert "password" not in by_type["credentials.rotated"].data
    assert by_type["credentials.rotated"].usage is None

    for pct in (80, 100):
        usage = by_type[f"usage.threshold.{pct}"].usage
        assert usage is not None and usage.threshold == pct
        assert usage.cap_bytes == world.cap_bytes()
        assert usage.total_bytes is not None and usage.total_bytes >= usage.cap_bytes * pct / 100

    order = by_type["order.paid"].order
    assert order is not None and order.id == "ord_1" and order.amount_usd == 99.0
    assert order.paid_at is not None and order.paid_at.minute == 12
    assert by_type["order.expired"].order is not None
    entry = by_type["allowlist.updated"].allowlist
    assert entry is not None and entry.cidr == "198.51.100.42/32" and not entry.deleted
    assert by_type["allowlist.updated"].order is None


def test_allowlist_removal_view() -> None:
    body = event_body(
        "evt_9", "allowlist.updated", object="allowlist_entry", id="al_1", deleted=True
    )
    change = parse_event(body).allowlist
    assert change is not None and change.deleted and change.id == "al_1"


def test_unknown_type_tolerated_and_flagged() -> None:
    event = parse_event(event_body("evt_x", "invoice.created", object="invoice", id="in_1"))
    assert not event.known
    assert event.type == "invoice.created"
    assert event.data["id"] == "in_1"
    assert event.order is None and event.usage is None


def test_parse_keeps_unknown_fields_and_accepts_offsets() -> None:
    payload = json.loads(event_body())
    payload["livemode"] = False
    payload["created_at"] = "2026-04-22T16:30:00+02:00"
    event = parse_event(json.dumps(payload).encode())
    assert event.payload["livemode"] is False
    assert event.created_at.hour == 16 and event.created_at.utcoffset() is not None
    assert event.created_at.timestamp() == parse_event(event_body()).created_at.timestamp()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"event"',
        b'{"object": "event"}',
        b'{"object": "list", "id": "evt_1", "type": "order.paid", '
        b'"created_at": "2026-04-22T14:30:00Z", "data": {}}',
        b'{"id": "", "type": "order.paid", "created_at": "2026-04-22T14:30:00Z", "data": {}}',
        b'{"id": "evt_1", "type": 3, "created_at": "2026-04-22T14:30:00Z", "data": {}}',
        b'{"id": "evt_1", "type": "order.paid", "created_at": "yesterday", "data": {}}',
        b'{"id": "evt_1", "type": "order.paid", "data": {}}',
        b'{"id": "evt_1", "type": "order.paid", "created_at": "2026-04-22T14:30:00Z", "data": []}',
        b'{"id": "evt_1", "type": "order.paid", "created_at": "2026-04-22T14:30:00Z"}',
        b"\xff\xfe",
    ],
)
def test_parse_rejects_malformed(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError):
        parse_event(body)


# ---------------------------------------------------------------------------- dedupe


def test_dedupe_is_bounded_lru() -> None:
    d = EventDeduplicator(maxsize=3)
    assert [d.seen(x) for x in ("a", "b", "c")] == [False, False, False]
    assert d.seen("a")  # refreshes "a": now "b" is the oldest
    assert not d.seen("d")  # evicts "b"
    assert len(d) == 3
    assert "b" not in d and "a" in d and "c" in d and "d" in d
    assert not d.seen("b")  # forgotten, so handled again
    d.forget("b")
    assert "b" not in d
    with pytest.raises(ConfigurationError):
        EventDeduplicator(0)


def test_dedupe_bound_holds_under_many_ids_and_threads() -> None:
    d = EventDeduplicator(maxsize=1000)
    firsts: list[int] = []

    def work() -> None:
        firsts.append(sum(not d.seen(f"evt_{i}") for i in range(5000)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(d) == 1000
    assert sum(firsts) >= 5000  # each id was new at least once across the threads


# ---------------------------------------------------------------------------- receiver (HTTPS)


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        protocol.SIGNATURE_HEADER: compute_signature(body, secret),
        "Content-Type": "application/json",
    }


async def test_receiver_end_to_end_over_https(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    got_async: list[WebhookEvent] = []
    got_sync: list[tuple[str, str]] = []
    loop_thread = threading.get_ident()

    receiver = WebhookReceiver(SECRET)

    @receiver.on("credentials.rotated")
    async def on_rotated(event: WebhookEvent) -> None:
        got_async.append(event)

    def everything(event: WebhookEvent) -> None:
        # Plain functions run off the loop, in the receiver's worker thread.
        assert threading.get_ident() != loop_thread
        got_sync.append((event.id, event.type))

    receiver.on("*", everything)

    async with receiver.serve("127.0.0.1", 0, ssl_context=server_ctx):
        assert receiver.url is not None and receiver.url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(verify=client_ctx, timeout=10) as http:
            url = receiver.url

            # Missing, forged and tampered signatures: 400, no handler.
            r = await http.post(url, content=BODY, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and r.json()["error"] == "missing_signature"
            r = await http.post(url, content=BODY, headers=signed(BODY, OTHER))
            assert r.status_code == 400 and r.json()["error"] == "invalid_signature"
            tampered = BODY.replace(b"cred_1", b"cred_X")
            r = await http.post(url, content=tampered, headers=signed(BODY))
            assert r.status_code == 400 and r.json()["error"] == "invalid_signature"
            r = await http.post(
                url, content=BODY, headers={protocol.SIGNATURE_HEADER: GOOD.upper()}
            )
            assert r.status_code == 400
            # Valid signature over something that is not an event.
            junk = b'{"hello": "world"}'
            r = await http.post(url, content=junk, headers=signed(junk))
            assert r.status_code == 400 and r.json()["error"] == "invalid_payload"
            not_json = b"{nope"
            r = await http.post(url, content=not_json, headers=signed(not_json))
            assert r.status_code == 400 and r.json()["error"] == "invalid_payload"
            await receiver.drain(5)
            assert got_async == [] and got_sync == []

            # A good one, then the same event again: handled once.
            r = await http.post(url + "hooks/nb", content=BODY, headers=signed(BODY))
            assert r.status_code == 200
            assert r.json() == {"received": True, "id": "evt_01", "duplicate": False}
            r = await http.post(url, content=BODY, headers=signed(BODY))
            assert r.status_code == 200 and r.json()["duplicate"] is True

            other = event_body("evt_02", "order.paid", object="order", id="ord_1")
            r = await http.post(url, content=other, headers=signed(other))
            assert r.status_code == 200

            r = await http.get(url)
            assert r.status_code == 405
            await receiver.drain(5)

    assert [e.id for e in got_async] == ["evt_01"]
    assert got_sync == [("evt_01", "credentials.rotated"), ("evt_02", "order.paid")]
    stats = receiver.stats()
    assert stats["missing_signature"] == 1
    assert stats["invalid_signature"] == 3
    assert stats["invalid_payload"] == 2
    assert stats["accepted"] == 2 and stats["duplicates"] == 1
    assert stats["handled"] == 3 and stats["handler_errors"] == 0
    assert receiver.url is None


async def test_receiver_answers_before_slow_or_failing_handlers(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    done = threading.Event()
    calls: list[str] = []

    def slow(event: WebhookEvent) -> None:
        time.sleep(1.5)  # a blocking handler: in the worker thread, never on the loop
        calls.append(event.id)
        done.set()

    async def broken(event: WebhookEvent) -> None:
        raise RuntimeError("handler bug")

    receiver = WebhookReceiver(SECRET, {"*": [slow, broken]})
    async with receiver.serve(ssl_context=server_ctx):
        async with httpx.AsyncClient(verify=client_ctx, timeout=10) as http:
            t0 = time.monotonic()
            r = await http.post(receiver.url or "", content=BODY, headers=signed(BODY))
            assert r.status_code == 200
            assert time.monotonic() - t0 < 1.0
            # The loop stays free while the slow handler runs.
            t1 = time.monotonic()
            await asyncio.sleep(0.05)
            assert time.monotonic() - t1 < 0.5
            await receiver.drain(10)
    assert calls == ["evt_01"] and done.is_set()
    assert receiver.stats()["handler_errors"] == 1


async def test_receiver_with_old_and_new_secret_and_path(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    seen: list[str] = []
    receiver = WebhookReceiver([OTHER, SECRET], path="/hooks/nb")
    receiver.on("*", seen.append, inline=True)
    async with receiver.serve(ssl_context=server_ctx):
        base = (receiver.url or "").removesuffix("/hooks/nb")
        async with httpx.AsyncClient(verify=client_ctx, timeout=10) as http:
            r = await http.post(base + "/hooks/nb", content=BODY, headers=signed(BODY, OTHER))
            assert r.status_code == 200
            b2 = event_body("evt_2")
            r = await http.post(base + "/hooks/nb", content=b2, headers=signed(b2, SECRET))
            assert r.status_code == 200
            r = await http.post(base + "/elsewhere", content=b2, headers=signed(b2))
            assert r.status_code == 404
            receiver.set_secrets(SECRET)
            b3 = event_body("evt_3")
            r = await http.post(base + "/hooks/nb", content=b3, headers=signed(b3, OTHER))
            assert r.status_code == 400
            await receiver.drain(5)
    assert [e.id for e in seen] == ["evt_01", "evt_2"]


async def test_unknown_type_goes_to_wildcard_handlers(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    seen: list[WebhookEvent] = []
    receiver = WebhookReceiver(SECRET)
    receiver.on("*", seen.append, inline=True)
    receiver.on("order.paid", lambda e: pytest.fail("wrong handler"), inline=True)
    body = event_body("evt_u", "invoice.created", object="invoice")
    async with receiver.serve(ssl_context=server_ctx):
        async with httpx.AsyncClient(verify=client_ctx, timeout=10) as http:
            r = await http.post(receiver.url or "", content=body, headers=signed(body))
            assert r.status_code == 200
        await receiver.drain(5)
    assert [e.type for e in seen] == ["invoice.created"] and not seen[0].known
    assert receiver.stats()["unknown_types"] == 1


def test_receiver_refuses_bad_configuration() -> None:
    with pytest.raises(ConfigurationError):
        WebhookReceiver("")
    with pytest.raises(ConfigurationError):
        WebhookReceiver([])
    with pytest.raises(ConfigurationError):
        WebhookReceiver(SECRET).on("", print)
    with pytest.raises(ConfigurationError):
        WebhookReceiver(SECRET).attach(object())


# ---------------------------------------------------------------------------- ASGI


async def test_asgi_app() -> None:
    seen: list[str] = []
    receiver = WebhookReceiver(SECRET)
    receiver.on("*", lambda e: seen.append(e.id), inline=True)
    transport = httpx.ASGITransport(app=receiver.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="https://hooks.test") as http:
        r = await http.post("/", content=BODY, headers=signed(BODY))
        assert r.status_code == 200 and r.json()["duplicate"] is False
        r = await http.post("/", content=BODY, headers=signed(BODY))
        assert r.json()["duplicate"] is True
        r = await http.post("/", content=BODY, headers=signed(BODY, OTHER))
        assert r.status_code == 400 and r.json()["error"] == "invalid_signature"
        r = await http.post("/", content=BODY)
        assert r.status_code == 400 and r.json()["error"] == "missing_signature"
        r = await http.get("/")
        assert r.status_code == 405
        big = b"x" * (receiver.max_body_bytes + 1)
        r = await http.post("/", content=big, headers=signed(big))
        assert r.status_code == 413
    await receiver.drain(5)
    assert seen == ["evt_01"]


# ---------------------------------------------------------------------------- wiring


class FakeManager:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def handle_event(self, event: Any) -> None:
        self.events.append((event.type, dict(event.data)))


async def test_attach_forwards_manager_events_only(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    manager = FakeManager()
    receiver = WebhookReceiver(SECRET)
    receiver.attach(manager)
    async with receiver.serve(ssl_context=server_ctx):
        async with httpx.AsyncClient(verify=client_ctx, timeout=10) as http:
            for i, type_ in enumerate(protocol.WEBHOOK_EVENTS):
                body = event_body(f"evt_{i}", type_, object="x", id=f"x_{i}")
                r = await http.post(receiver.url or "", content=body, headers=signed(body))
                assert r.status_code == 200
        await receiver.drain(5)
    assert [t for t, _ in manager.events] == [
        t for t in protocol.WEBHOOK_EVENTS if t in MANAGER_EVENTS
    ]
    assert set(MANAGER_EVENTS) == {
        "credentials.rotated",
        "usage.threshold.80",
        "usage.threshold.100",
        "allowlist.updated",
    }


# ---------------------------------------------------------------------------- listen (CLI)


def test_listen_runs_until_stopped(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    ready: list[str] = []
    got: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=listen,
        args=(SECRET,),
        kwargs={
            "ssl_context": server_ctx,
            "on_event": lambda e: got.append(f"{e.id} {e.type}"),
            "on_ready": ready.append,
            "stop": stop,
        },
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not ready and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready and ready[0].startswith("https://127.0.0.1:")
        r = httpx.post(ready[0], content=BODY, headers=signed(BODY), verify=client_ctx)
        assert r.status_code == 200
        r = httpx.post(ready[0], content=BODY, headers=signed(BODY, OTHER), verify=client_ctx)
        assert r.status_code == 400
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert got == ["evt_01 credentials.rotated"]


# ---------------------------------------------------------------------------- public surface


def test_public_api_is_pinned() -> None:
    import proxaro_scrape
    import proxaro_scrape.webhooks as webhooks

    assert webhooks.__all__ == [
        "MANAGER_EVENTS",
        "SIGNATURE_HEADER",
        "WEBHOOK_EVENTS",
        "AllowlistChange",
        "CredentialsRotated",
        "EventDeduplicator",
        "OrderChange",
        "UsageThreshold",
        "WebhookEvent",
        "WebhookReceiver",
        "alisten",
        "compute_signature",
        "listen",
        "parse_event",
        "verify_event",
        "verify_signature",
    ]
    for name in (
        "EventDeduplicator",
        "WebhookEvent",
        "WebhookReceiver",
        "compute_signature",
        "parse_event",
        "verify_event",
        "verify_signature",
    ):
        assert getattr(proxaro_scrape, name) is getattr(webhooks, name)
        assert name in proxaro_scrape.__all__
    for name in ("WebhookError", "WebhookPayloadError", "WebhookSignatureError"):
        assert name in proxaro_scrape.__all__


def test_import_pulls_in_no_http_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, proxaro_scrape.webhooks\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'scrapy', 'requests')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
