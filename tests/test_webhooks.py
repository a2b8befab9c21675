"""Webhooks, client side: signatures, event parsing, deduplication, the receiver (HTTPS, ASGI)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import ssl
import threading
from typing import Any

import httpx
import pytest
import trustme

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import (
    ConfigurationError,
    ProxaroError,
    WebhookBodyError,
    WebhookPayloadError,
    WebhookSignatureError,
)
from proxaro_scrape.sandbox.world import World
from proxaro_scrape.webhooks import (
    MANAGER_EVENTS,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    EventDeduplicator,
    WebhookEvent,
    WebhookReceiver,
    compute_signature,
    listen,
    parse_event,
    verify_event,
    verify_signature,
)
from tests._support import eventually

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
        assert usage.cap_bytes is not None and usage.cap_bytes == world.cap_bytes()
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
    release = threading.Event()
    calls: list[str] = []

    def slow(event: WebhookEvent) -> None:
        # A blocking handler (in the worker thread, never on the loop), held until the test
        # has seen the answer: so the answer provably came first, whatever the machine's load.
        release.wait(30)
        calls.append(event.id)

    async def broken(event: WebhookEvent) -> None:
        raise RuntimeError("handler bug")

    receiver = WebhookReceiver(SECRET, {"*": [slow, broken]})
    async with receiver.serve(ssl_context=server_ctx):
        async with httpx.AsyncClient(verify=client_ctx, timeout=10) as http:
            r = await http.post(receiver.url or "", content=BODY, headers=signed(BODY))
            assert r.status_code == 200 and calls == []
            # The loop stays free while the slow handler blocks: it answers another request.
            r = await http.post(receiver.url or "", content=BODY, headers=signed(BODY, OTHER))
            assert r.status_code == 400 and calls == []
            release.set()
            await receiver.drain(10)
    assert calls == ["evt_01"]
    assert receiver.stats()["handler_errors"] == 1


async def test_receiver_with_old_and_new_secret_and_path(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    seen: list[WebhookEvent] = []
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
        # Over the cap: the named 400 every refused body gets (it was 413 before issue 16).
        big = b"x" * (receiver.max_body_bytes + 1)
        r = await http.post("/", content=big, headers=signed(big))
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_payload" and r.json()["reason"] == "too_large"
    await receiver.drain(5)
    assert seen == ["evt_01"]


# ---------------------------------------------------------------------------- hostile bodies
#
# Issue 16 A: whatever the body, correctly signed or not, the receiver answers a named 400,
# never a 500 (a RecursionError from deep nesting used to escape as one), runs no handler and
# leaves the deduplicator and the acceptance counters as they were.  Both sides of every bound.

HEAD = b'{"object":"event","id":"evt_h","type":"order.paid","created_at":"2026-04-22T14:30:00Z"'


def raw_event(**fields: Any) -> bytes:
    """An event body with ``fields`` replaced; a field given as ``...`` is left out."""
    payload: dict[str, Any] = json.loads(event_body("evt_h", "order.paid", object="order"))
    for key, value in fields.items():
        if value is ...:
            payload.pop(key)
        else:
            payload[key] = value
    return json.dumps(payload).encode()


def nested_event(depth: int) -> bytes:
    """An event whose nesting is exactly ``depth`` (the event object is 1, ``data`` is 2)."""
    data: dict[str, Any] = {}
    for _ in range(depth - 2):
        data = {"x": data}
    return raw_event(data=data)


def sized_event(size: int) -> bytes:
    """A valid event of exactly ``size`` bytes (padded inside ``data``)."""
    base = raw_event(data={"pad": ""})
    body = raw_event(data={"pad": "x" * (size - len(base))})
    assert len(body) == size
    return body


CAP = MAX_BODY_BYTES
DEEP = 100_000  # far past the C decoder's recursion limit: the RecursionError path

HOSTILE_BODIES = [
    # too_large: over the cap, checked before the signature and before any parsing
    pytest.param(sized_event(CAP + 1), "too_large", id="cap+1-byte"),
    pytest.param(b"x" * (10 * CAP), "too_large", id="ten-times-the-cap"),
    # not_utf8: json.loads(bytes) would have guessed UTF-16 or UTF-32 and accepted some
    pytest.param(b"\xff\xfe", "not_utf8", id="bare-bom-bytes"),
    pytest.param(event_body().decode().encode("utf-16"), "not_utf8", id="utf-16-event"),
    # ASCII in UTF-32 is valid UTF-8 full of NULs: read as UTF-8, it is simply not JSON.
    pytest.param(event_body().decode().encode("utf-32-le"), "not_json", id="utf-32-event"),
    pytest.param(raw_event(data={"n": "é"}).replace(b"\\u00e9", b"\xe9"), "not_utf8", id="latin-1"),
    pytest.param(HEAD + b',"data":{"s":"\xed\xa0\x80"}}', "not_utf8", id="encoded-surrogate"),
    # not_json
    pytest.param(b"", "not_json", id="empty"),
    pytest.param(b"{nope", "not_json", id="syntax"),
    pytest.param(event_body() + b"x", "not_json", id="trailing-garbage"),
    pytest.param(b"\xef\xbb\xbf" + event_body(), "not_json", id="utf-8-bom"),
    pytest.param(HEAD + b',"data":{"v":NaN}}', "not_json", id="NaN"),
    pytest.param(HEAD + b',"data":{"v":-Infinity}}', "not_json", id="Infinity"),
    pytest.param(HEAD + b',"data":{"v":1e999}}', "not_json", id="float-overflow"),
    pytest.param(HEAD + b',"data":{"v":' + b"9" * 5000 + b"}}", "not_json", id="5000-digits"),
    pytest.param(HEAD + b',"id":"evt_other","data":{}}', "not_json", id="duplicate-id-key"),
    # too_deep
    pytest.param(nested_event(MAX_DEPTH + 1), "too_deep", id="cap+1-levels"),
    pytest.param(HEAD + b',"data":' + b"[" * DEEP + b"]" * DEEP + b"}", "too_deep", id="deep-list"),
    pytest.param(b"[" * DEEP + b"]" * DEEP, "too_deep", id="deep-top-level"),
    pytest.param(
        HEAD + b',"data":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
        "too_deep",
        id="deep-objects",
    ),
    # not_object
    pytest.param(b"[1, 2]", "not_object", id="array"),
    pytest.param(b'"event"', "not_object", id="string"),
    pytest.param(b"3", "not_object", id="number"),
    pytest.param(b"null", "not_object", id="null"),
    pytest.param(b"true", "not_object", id="boolean"),
    pytest.param(raw_event(object="list"), "bad_object", id="object-list"),
    # bad_id
    pytest.param(raw_event(id=...), "bad_id", id="id-missing"),
    pytest.param(raw_event(id=""), "bad_id", id="id-empty"),
    pytest.param(raw_event(id=12), "bad_id", id="id-int"),
    pytest.param(raw_event(id=None), "bad_id", id="id-null"),
    pytest.param(raw_event(id=["evt_1"]), "bad_id", id="id-list"),
    pytest.param(raw_event(id="evt 1"), "bad_id", id="id-space"),
    pytest.param(raw_event(id="evt_1\nforged log line"), "bad_id", id="id-newline"),
    pytest.param(raw_event(id="evt_é"), "bad_id", id="id-non-ascii"),
    pytest.param(raw_event(id="e" * 256), "bad_id", id="id-256-chars"),
    # bad_type
    pytest.param(raw_event(type=...), "bad_type", id="type-missing"),
    pytest.param(raw_event(type=""), "bad_type", id="type-empty"),
    pytest.param(raw_event(type=3), "bad_type", id="type-int"),
    pytest.param(raw_event(type="*"), "bad_type", id="type-wildcard"),
    pytest.param(raw_event(type="order.paid\n"), "bad_type", id="type-newline"),
    pytest.param(raw_event(type="../../etc"), "bad_type", id="type-slashes"),
    pytest.param(raw_event(type="t" * 101), "bad_type", id="type-101-chars"),
    # bad_created_at
    pytest.param(raw_event(created_at=...), "bad_created_at", id="created-missing"),
    pytest.param(raw_event(created_at="yesterday"), "bad_created_at", id="created-word"),
    pytest.param(raw_event(created_at=1713796200), "bad_created_at", id="created-number"),
    pytest.param(
        raw_event(created_at="0001-01-01T00:00:00+01:00"),
        "bad_created_at",
        id="created-before-datetime-min",
    ),
    pytest.param(
        raw_event(created_at="2026-04-22T14:30:00" + "0" * 46),
        "bad_created_at",
        id="created-65-chars",
    ),
    # bad_data
    pytest.param(raw_event(data=...), "bad_data", id="data-missing"),
    pytest.param(raw_event(data=[]), "bad_data", id="data-array"),
    pytest.param(raw_event(data="order"), "bad_data", id="data-string"),
    pytest.param(raw_event(data=None), "bad_data", id="data-null"),
]


def receiver_with_every_kind_of_handler(calls: list[Any]) -> WebhookReceiver:
    receiver = WebhookReceiver(SECRET)

    async def in_loop(event: WebhookEvent) -> None:
        calls.append(("async", event.id))

    receiver.on("*", in_loop)
    receiver.on("*", lambda e: calls.append(("thread", e.id)))
    receiver.on("*", lambda e: calls.append(("inline", e.id)), inline=True)
    receiver.on("order.paid", lambda e: calls.append(("typed", e.id)), inline=True)
    return receiver


@pytest.mark.parametrize(("body", "reason"), HOSTILE_BODIES)
async def test_hostile_body_is_a_named_400_with_nothing_run(body: bytes, reason: str) -> None:
    calls: list[Any] = []
    receiver = receiver_with_every_kind_of_handler(calls)
    # One real event first, so the deduplicator and the counters hold something to keep.
    assert receiver.accept(BODY, GOOD)[0] == 200
    await receiver.drain(5)
    assert len(calls) == 3
    calls.clear()
    before, remembered = receiver.stats(), len(receiver.dedupe)

    status, answer = receiver.accept(body, compute_signature(body, SECRET))

    assert status == 400
    assert answer["error"] == "invalid_payload" and answer["reason"] == reason
    assert 0 < len(answer["message"]) < 200  # names the problem, never echoes the body
    json.dumps(answer)  # what the servers send back must be JSON
    await receiver.drain(5)
    assert calls == []
    after = receiver.stats()
    changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert changed == {"received": 1, "invalid_payload": 1}
    assert len(receiver.dedupe) == remembered and "evt_01" in receiver.dedupe
    await receiver.close()

    # The same verdict as an exception, for receivers in other frameworks.
    with pytest.raises(WebhookBodyError) as info:
        verify_event(body, compute_signature(body, SECRET), SECRET)
    assert info.value.reason == reason
    assert isinstance(info.value, WebhookPayloadError) and isinstance(info.value, ProxaroError)


ACCEPTED_AT_THE_BOUND = [
    pytest.param(sized_event(CAP), id="exactly-the-cap"),
    pytest.param(nested_event(MAX_DEPTH), id="exactly-max-depth"),
    pytest.param(raw_event(id="e" * 255), id="id-255-chars"),
    pytest.param(raw_event(id="evt_!~"), id="id-printable-punctuation"),
    pytest.param(raw_event(type="t" * 100), id="type-100-chars-unknown"),
    pytest.param(raw_event(created_at="2026-04-22T16:30:00+02:00"), id="created-offset"),
    pytest.param(raw_event(created_at="9999-12-31T23:59:59Z"), id="created-datetime-max"),
    pytest.param(raw_event(data={}), id="data-empty"),
    pytest.param(raw_event(data={"n": "é", "big": 10**300, "f": 1e308}), id="utf-8-big-numbers"),
    pytest.param(raw_event(object=...), id="object-absent"),
]


@pytest.mark.parametrize("body", ACCEPTED_AT_THE_BOUND)
async def test_body_at_the_bound_is_accepted(body: bytes) -> None:
    calls: list[Any] = []
    receiver = receiver_with_every_kind_of_handler(calls)
    status, answer = receiver.accept(body, compute_signature(body, SECRET))
    assert (status, answer["duplicate"]) == (200, False)
    await receiver.close()
    assert len(calls) >= 3
    assert parse_event(body).id == answer["id"]


def test_size_is_checked_before_the_signature_and_the_body_after_it() -> None:
    receiver = WebhookReceiver(SECRET)
    huge = b"{" * (CAP + 1)
    assert receiver.accept(huge, None)[1]["reason"] == "too_large"  # unsigned: still too large
    assert receiver.accept(huge, "0" * 64)[1]["reason"] == "too_large"
    deep = b"[" * DEEP
    # A forged body never reaches the parser: its signature is what is wrong with it.
    assert receiver.accept(deep, "0" * 64) == (400, {"error": "invalid_signature"})
    assert receiver.accept(deep, None) == (400, {"error": "missing_signature"})
    small = WebhookReceiver(SECRET, max_body_bytes=len(BODY))
    assert small.accept(BODY, GOOD)[0] == 200
    longer = event_body("evt_longer")
    assert small.accept(longer, compute_signature(longer, SECRET))[1]["reason"] == "too_large"
    with pytest.raises(WebhookBodyError) as info:
        verify_event(huge, "0" * 64, SECRET)  # too large is said before any HMAC over it
    assert info.value.reason == "too_large"
    with pytest.raises(WebhookBodyError):
        parse_event(longer, max_bytes=len(BODY))


def test_a_decoded_dict_is_held_to_the_same_bounds() -> None:
    payload = json.loads(nested_event(MAX_DEPTH + 1))
    with pytest.raises(WebhookBodyError) as info:
        parse_event(payload)
    assert info.value.reason == "too_deep"
    with pytest.raises(WebhookBodyError) as info:
        parse_event({**json.loads(BODY), "type": "*"})
    assert info.value.reason == "bad_type"
    with pytest.raises(WebhookBodyError) as info:
        parse_event(event_body().decode() + "\ud800")  # a str no UTF-8 body decodes to
    assert info.value.reason == "not_utf8"
    assert parse_event(event_body().decode()).id == "evt_01"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_body_bytes": True}, "max_body_bytes"),
        ({"max_body_bytes": "1024"}, "max_body_bytes"),
        ({"max_body_bytes": 1.5}, "max_body_bytes"),
        ({"dedupe_size": 0}, "dedupe_size"),
        ({"dedupe_size": True}, "dedupe_size"),
        ({"path": "hooks"}, "path"),
        ({"path": b"/hooks"}, "path"),
        ({"handlers": [print]}, "handlers"),
        ({"handlers": {"*": 5}}, "handlers"),
        ({"handlers": {"*": [5]}}, "handler"),
        ({"handlers": {"": print}}, "event_type"),
        ({"secret": 5}, "secret"),
        ({"secret": [SECRET, ""]}, "secret"),
    ],
)
def test_receiver_arguments_are_checked_where_given(kwargs: dict[str, Any], param: str) -> None:
    args = {"secret": SECRET, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        WebhookReceiver(**args)
    assert info.value.param == param
    assert SECRET not in str(info.value)


async def test_hostile_bodies_end_to_end_through_the_aiohttp_receiver(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    calls: list[Any] = []
    receiver = receiver_with_every_kind_of_handler(calls)

    async def chunked(total: int) -> Any:  # no Content-Length: the cap holds on the stream
        for _ in range(total // 65536):
            yield b"x" * 65536

    cases = [
        (b"[" * DEEP + b"]" * DEEP, "too_deep"),
        (nested_event(MAX_DEPTH + 1), "too_deep"),
        (event_body().decode().encode("utf-16"), "not_utf8"),
        (b"[1, 2]", "not_object"),
        (raw_event(type="*"), "bad_type"),
        (HEAD + b',"data":{"v":NaN}}', "not_json"),
        (sized_event(CAP + 1), "too_large"),
    ]
    async with receiver.serve("127.0.0.1", 0, ssl_context=server_ctx):
        async with httpx.AsyncClient(verify=client_ctx, timeout=30) as http:
            url = receiver.url or ""
            for body, reason in cases:
                r = await http.post(url, content=body, headers=signed(body))
                assert r.status_code == 400, (reason, r.text)
                assert r.json()["error"] == "invalid_payload" and r.json()["reason"] == reason
            # 4 MiB streamed without a length, unsigned: refused on size, read only to the cap.
            r = await http.post(url, content=chunked(4 * CAP), headers={"X-NB-Signature": "0"})
            assert r.status_code == 400 and r.json()["reason"] == "too_large"
            # The receiver is unharmed: the next real event goes through, on the same client.
            r = await http.post(url, content=BODY, headers=signed(BODY))
            assert r.status_code == 200 and r.json()["duplicate"] is False
        await receiver.drain(5)
    stats = receiver.stats()
    assert stats["invalid_payload"] == len(cases) + 1
    assert stats["accepted"] == 1 and stats["duplicates"] == 0 and len(receiver.dedupe) == 1
    assert sorted(calls) == [("async", "evt_01"), ("inline", "evt_01"), ("thread", "evt_01")]


def test_without_aiohttp_the_core_works_and_the_server_names_the_extra() -> None:
    import subprocess
    import sys

    code = f"""
import asyncio, sys
sys.modules["aiohttp"] = None  # as if it were not installed: `import aiohttp` fails
import proxaro_scrape.webhooks as w
body = {BODY!r}
sig = w.compute_signature(body, "whsec_x")
assert w.verify_signature(body, sig, "whsec_x")
assert w.verify_event(body, sig, "whsec_x").id == "evt_01"
receiver = w.WebhookReceiver("whsec_x")
assert receiver.accept(body, sig)[0] == 200
for call in (receiver.make_app, lambda: asyncio.run(receiver.start())):
    try:
        call()
    except ImportError as exc:
        assert "pip install 'proxaro-scrape[aiohttp]'" in str(exc), exc
    else:
        raise AssertionError("no ImportError")
assert "aiohttp" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


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
        eventually(lambda: ready, message="the listener never said it was ready")
        assert ready[0].startswith("https://127.0.0.1:")
        r = httpx.post(ready[0], content=BODY, headers=signed(BODY), verify=client_ctx)
        assert r.status_code == 200
        r = httpx.post(ready[0], content=BODY, headers=signed(BODY, OTHER), verify=client_ctx)
        assert r.status_code == 400
        eventually(lambda: got)
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
