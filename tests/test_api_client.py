"""Every method of Proxaro and AsyncProxaro against the real sandbox API on loopback.

Each test runs twice, sync and async, with the same assertions (see ``_api_support.Driver``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from _api_support import Driver, counters, driver_fixture

from proxaro_scrape import (
    Account,
    AsyncProxaro,
    Credentials,
    Page,
    Proxaro,
    RotatedCredentials,
    protocol,
)
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import ConflictError, InvalidRequestError, NotFoundError
from proxaro_scrape.sandbox import Sandbox
from tests._support import eventually
from tests.conftest import SandboxFactory


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api"})


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, sb: Sandbox) -> Iterator[Driver]:
    yield from driver_fixture(request, sb)


def aware(value: Any) -> bool:
    return isinstance(value, datetime) and value.utcoffset() is not None


# ---------------------------------------------------------------------------- account, usage


def test_account_get(api: Driver, sb: Sandbox) -> None:
    account = api(lambda c: c.account.get())
    assert isinstance(account, Account)
    assert account.object == "account"
    assert account.id == sb.world.account.id
    assert account.email == "ops@example.com"
    assert aware(account.created_at)
    assert account.plan.id == "growth" and account.plan.status == "active"
    assert aware(account.plan.current_period_end)


def test_usage_get_by_class_and_country(api: Driver, sb: Sandbox) -> None:
    usage = api(lambda c: c.usage.get())
    assert usage.object == "usage"
    assert aware(usage.period_start) and aware(usage.period_end)
    assert usage.period_start < usage.period_end
    assert usage.total_bytes == sb.world.used_bytes() > 0
    assert usage.cap_bytes == sb.world.cap_bytes()
    assert 0 < usage.fraction_used < 1
    assert {row.exit_class for row in usage.breakdown} >= {"residential", "isp"}
    assert sum(row.bytes for row in usage.breakdown) == usage.total_bytes

    by_country = api(lambda c: c.usage.get(group_by="country"))
    assert {row.country for row in by_country.breakdown} >= {"us", "de"}
    assert all(row.exit_class is None for row in by_country.breakdown)


def test_usage_periods(api: Driver, sb: Sandbox) -> None:
    current = api(lambda c: c.usage.get(period="current"))
    previous = api(lambda c: c.usage.get(period="previous"))
    assert previous.period_end < current.period_start
    month = f"{previous.period_start.year:04d}-{previous.period_start.month:02d}"
    same = api(lambda c: c.usage.get(period=month, group_by="class"))
    assert same.total_bytes == previous.total_bytes
    assert same.period_start == previous.period_start


# ---------------------------------------------------------------------------- orders


def _my_orders(sb: Sandbox, status: str | None = None) -> list[str]:
    def read() -> list[str]:
        world = sb.world
        mine = [
            o
            for o in world.orders
            if o.account_id == world.account.id and (status is None or o.status == status)
        ]
        mine.sort(key=lambda o: (o.created_at, o.id), reverse=True)
        return [o.id for o in mine]

    return sb.call(read)


def test_orders_iterate_every_page_without_gap_or_duplicate(api: Driver, sb: Sandbox) -> None:
    expected = _my_orders(sb)
    assert len(expected) > 12  # enough history for many pages
    orders = api.items(lambda c: c.orders.list(limit=3))
    assert [o.id for o in orders] == expected  # newest first, nothing twice, nothing missing
    assert all(aware(o.created_at) for o in orders)
    assert all(isinstance(o.amount_usd, float) for o in orders)
    paid = [o for o in orders if o.status == "paid"]
    assert paid and all(aware(o.paid_at) for o in paid)

    pages = api.pages(lambda c: c.orders.list(limit=5))
    assert len(pages) == -(-len(expected) // 5)
    assert all(isinstance(p, Page) for p in pages)
    assert [len(p) for p in pages[:-1]] == [5] * (len(pages) - 1)
    assert all(p.has_more and p.next_cursor for p in pages[:-1])
    assert not pages[-1].has_more and pages[-1].next_cursor is None
    assert [o.id for p in pages for o in p] == expected


def test_orders_status_filter_and_default_limit(api: Driver, sb: Sandbox) -> None:
    paid = api.items(lambda c: c.orders.list(status="paid"))
    assert [o.id for o in paid] == _my_orders(sb, "paid")
    assert {o.status for o in paid} == {"paid"}
    first = api(lambda c: c.orders.list_page())
    assert len(first) == min(25, len(_my_orders(sb)))  # the reference's default


def test_orders_list_page_with_cursor(api: Driver, sb: Sandbox) -> None:
    first = api(lambda c: c.orders.list_page(limit=4))
    second = api(lambda c: c.orders.list_page(limit=4, cursor=first.next_cursor))
    assert [o.id for o in [*first, *second]] == _my_orders(sb)[:8]
    # A paginator may also start from a cursor: pages stay reachable either way.
    with pytest.raises(InvalidRequestError) as err:
        api(lambda c: c.orders.list_page(cursor="c_not-a-cursor"))
    assert err.value.param == "cursor" and err.value.status == 400


# ---------------------------------------------------------------------------- plans


def test_plans_without_a_key(api: Driver, sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROXARO_API_KEY", raising=False)
    keyless = api.client(api_key=None)
    assert not keyless.has_key and not keyless.is_test
    plans = api(lambda c: c.plans.list(), keyless)
    assert [p.id for p in plans] == ["starter", "growth", "scale", "network"]
    growth = plans[1]
    assert growth.name == "Growth" and growth.price_usd == 99 and growth.bandwidth_gb == 25
    assert plans[3].price_usd is None and plans[3].bandwidth_gb is None
    status = api(lambda c: c.status(), keyless)
    assert status.status == "ok"


# ---------------------------------------------------------------------------- credentials


def test_credentials_get_and_rotate(api: Driver, sb: Sandbox) -> None:
    cred = api(lambda c: c.credentials.get())
    assert isinstance(cred, Credentials)
    world_cred = sb.world.credentials
    assert isinstance(cred.password, Secret)
    assert cred.password.reveal() == world_cred.password
    assert world_cred.password not in repr(cred) and world_cred.password not in str(cred)
    assert cred.username == world_cred.username
    assert cred.gateway == "127.0.0.1" and isinstance(cred.port, int)
    assert cred.bandwidth_gb_cap == 25 and cred.bandwidth_gb_used is not None
    assert aware(cred.expires_at)

    old = cred.password.reveal()
    rotated = api(lambda c: c.credentials.rotate())
    assert isinstance(rotated, RotatedCredentials)
    assert rotated.id == cred.id and aware(rotated.rotated_at)
    assert rotated.password.reveal() == sb.world.credentials.password != old
    assert rotated.password.reveal() not in repr(rotated)
    again = api(lambda c: c.credentials.get())
    assert again.password == rotated.password


# ---------------------------------------------------------------------------- sessions


def test_sessions_paginate_and_filter(api: Driver, sb: Sandbox) -> None:
    sb.control("sessions", add=230)
    sessions = api.items(lambda c: c.sessions.list(limit=40))
    assert len(sessions) == 230
    assert len({s.id for s in sessions}) == 230
    started = [s.started_at for s in sessions]
    assert started == sorted(started, reverse=True) and all(aware(t) for t in started)
    assert all(s.exit_class in protocol.EXIT_CLASSES for s in sessions)
    assert all(s.bytes_recv > 0 and s.exit_ip and s.exit_asn.startswith("AS") for s in sessions)
    pages = api.pages(lambda c: c.sessions.list(limit=100))
    assert [len(p) for p in pages] == [100, 100, 30]

    residential = api.items(lambda c: c.sessions.list(exit_class="residential"))
    assert residential
    assert {s.exit_class for s in residential} == {"residential"}
    assert len(residential) == sum(1 for s in sessions if s.exit_class == "residential")
    page = api(lambda c: c.sessions.list_page(limit=7))
    assert len(page) == 7 and page.has_more


# ---------------------------------------------------------------------------- countries


def test_countries_and_asns(api: Driver, sb: Sandbox) -> None:
    countries = api(lambda c: c.countries.list())
    assert [c.code for c in countries] == list(sb.world.countries)
    us = next(c for c in countries if c.code == "us")
    assert us.name == "United States" and us.continent == "North America"
    assert "residential" in us.exit_classes
    assert us.cities_available > 0 and us.estimated_pool_size > 0
    assert us.pool_health == "healthy"

    sb.control("country", code="de", pool_health="down")
    de = next(c for c in api(lambda c: c.countries.list()) if c.code == "de")
    assert de.pool_health == "down"

    asns = api(lambda c: c.countries.asns("us"))
    assert [a.asn for a in asns] == [a.asn for a in sb.world.asns["us"]]
    assert all(a.org and a.exit_class and a.pool_health for a in asns)
    sb.control("asn", asn=asns[0].asn, pool_health="degraded")
    # Codes are sent lowercase, as the API writes them.
    again = api(lambda c: c.countries.asns("US"))
    assert again[0].pool_health == "degraded"


# ---------------------------------------------------------------------------- allowlist


def test_allowlist_add_list_remove(api: Driver, sb: Sandbox) -> None:
    assert api(lambda c: c.allowlist.list()) == []  # another account's entry is not shown
    v4 = api(lambda c: c.allowlist.add("198.51.100.42/32", label="primary crawler"))
    assert v4.object == "allowlist_entry" and v4.cidr == "198.51.100.42/32"
    assert v4.label == "primary crawler" and aware(v4.created_at)
    net = api(lambda c: c.allowlist.add("203.0.113.0/24", label="x" * 80))
    v6 = api(lambda c: c.allowlist.add("2001:db8:1::/48"))
    assert v6.label is None
    listed = api(lambda c: c.allowlist.list())
    assert [e.id for e in listed] == [v4.id, net.id, v6.id]

    with pytest.raises(ConflictError) as err:
        api(lambda c: c.allowlist.add("198.51.100.42/32"))
    assert err.value.status == 409 and err.value.param == "cidr"

    deleted = api(lambda c: c.allowlist.remove(v4.id))
    assert deleted.deleted is True and deleted.id == v4.id
    assert [e.id for e in api(lambda c: c.allowlist.list())] == [net.id, v6.id]
    with pytest.raises(NotFoundError):
        api(lambda c: c.allowlist.remove(v4.id))
    theirs = sb.world.allowlist[0]
    assert theirs.account_id != sb.world.account.id
    with pytest.raises(NotFoundError):
        api(lambda c: c.allowlist.remove(theirs.id))


# ---------------------------------------------------------------------------- webhooks


def test_webhooks_create_list_rotate(api: Driver, sb: Sandbox) -> None:
    hook = api(
        lambda c: c.webhooks.create(
            "https://127.0.0.1:9/hooks", ["order.paid", "usage.threshold.80"], label="ops"
        )
    )
    assert hook.object == "webhook" and hook.url == "https://127.0.0.1:9/hooks"
    assert hook.events == ["order.paid", "usage.threshold.80"] and hook.label == "ops"
    assert isinstance(hook.secret, Secret) and hook.secret.reveal().startswith("whsec_")
    assert hook.secret.reveal() not in repr(hook)
    assert aware(hook.created_at)

    everything = api(lambda c: c.webhooks.create("https://127.0.0.1:9/all", ["*"]))
    listed = api(lambda c: c.webhooks.list())
    assert [h.id for h in listed] == [hook.id, everything.id]
    assert all(h.secret is None for h in listed)  # secrets are only shown on creation

    rotated = api(lambda c: c.webhooks.rotate_secret(hook.id))
    assert rotated.id == hook.id and isinstance(rotated.secret, Secret)
    assert rotated.secret != hook.secret
    assert api.items(lambda c: c.webhooks.attempts(hook.id)) == []
    with pytest.raises(NotFoundError):
        api(lambda c: c.webhooks.rotate_secret("wh_doesnotexist"))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_webhook_attempts_are_delivery_receipts(kind: str, make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox(components={"api", "webhooks"})
    driver = Driver(kind, sandbox)
    try:
        # Nothing listens on port 9: every delivery fails, and each attempt is a receipt.
        hook = driver(lambda c: c.webhooks.create("https://127.0.0.1:9/h", ["order.paid"]))
        sandbox.control("event", type="order.paid")
        attempts = eventually(
            lambda: driver.items(lambda c: c.webhooks.attempts(hook.id, limit=1)),
            interval=0.05,
            message="the sandbox deliverer recorded no attempt",
        )
        first = attempts[-1]
        assert first.webhook_id == hook.id and first.event_type == "order.paid"
        assert first.ok is False and first.attempt == 1 and aware(first.attempted_at)
        page = driver(lambda c: c.webhooks.attempts_page(hook.id))
        assert [a.id for a in page] == [a.id for a in attempts]
    finally:
        driver.close()


# ---------------------------------------------------------------------------- status and headers


def test_status(api: Driver) -> None:
    status = api(lambda c: c.status())
    assert status.object == "status" and status.status == "ok"
    assert "time" in status.extra  # an additive field, kept


def test_rate_limit_view(api: Driver) -> None:
    assert api.c.rate_limit is None
    api(lambda c: c.account.get())
    first = api.c.rate_limit
    assert first.limit == 300 and first.remaining == 299
    assert aware(first.reset) and first.seconds_until_reset() <= 61
    api(lambda c: c.account.get())
    assert api.c.rate_limit.remaining == 298


def test_headers_sent_version_and_key_only_where_needed(
    api: Driver, sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[httpx.Request] = []

    def hook(request: httpx.Request) -> None:
        seen.append(request)

    async def ahook(request: httpx.Request) -> None:
        seen.append(request)

    if api.kind == "sync":
        http: Any = httpx.Client(event_hooks={"request": [hook]})
    else:
        http = httpx.AsyncClient(event_hooks={"request": [ahook]})
    client = api.client(http_client=http)
    api(lambda c: c.account.get(), client)
    api(lambda c: c.plans.list(), client)
    me, plans = seen
    assert me.headers["X-API-Version"] == protocol.DEFAULT_API_VERSION
    assert me.headers["Authorization"] == f"Bearer {sb.api_key}"
    assert me.headers["User-Agent"].startswith("proxaro-scrape/")
    assert plans.headers["X-API-Version"] == protocol.DEFAULT_API_VERSION
    assert "Authorization" not in plans.headers  # the public catalog never sees the key
    # A caller's own httpx client is not closed by ours.
    if api.kind == "sync":
        client.close()
        assert not http.is_closed
        http.close()
    else:
        api.run(client.aclose())
        assert not http.is_closed
        api.run(http.aclose())

    pinned = api.client(api_version="2030-01-01")
    with pytest.raises(InvalidRequestError) as err:
        api(lambda c: c.account.get(), pinned)
    assert err.value.param == "X-API-Version"


# ---------------------------------------------------------------------------- config and lifecycle


def test_config_from_environment(api: Driver, sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXARO_API_KEY", sb.api_key)
    monkeypatch.setenv("PROXARO_BASE_URL", sb.api_url + "/")
    client = api.client(api_key=None, base_url=None)
    assert client.base_url == sb.api_url and client.is_test and client.has_key
    assert api(lambda c: c.account.get(), client).id == sb.world.account.id
    # Arguments win over the environment.
    monkeypatch.setenv("PROXARO_BASE_URL", "http://127.0.0.1:9")
    assert api.client(api_key=None).base_url == sb.api_url
    monkeypatch.delenv("PROXARO_BASE_URL")
    assert api.client(api_key=None, base_url=None).base_url == protocol.DEFAULT_BASE_URL
    assert sb.api_key not in repr(client)


def test_sync_context_manager_closes_httpx(sb: Sandbox) -> None:
    with Proxaro(sb.api_key, sb.api_url) as client:
        client.account.get()
        assert not client._http.is_closed
    assert client._http.is_closed


async def test_async_context_manager_closes_httpx(sb: Sandbox) -> None:
    async with AsyncProxaro(sb.api_key, sb.api_url) as client:
        await client.account.get()
        async for _ in client.orders.list(limit=50):
            pass
        assert not client._http.is_closed
    assert client._http.is_closed


def test_every_endpoint_counted_once(api: Driver, sb: Sandbox) -> None:
    """One call, one request: nothing is fetched twice or behind the caller's back."""
    sb.control("reset_counters")
    api(lambda c: c.account.get())
    api(lambda c: c.usage.get())
    api(lambda c: c.credentials.get())
    api(lambda c: c.countries.list())
    api(lambda c: c.countries.asns("us"))
    got = counters(sb)
    assert got["api.requests"] == 5
    assert got["api.requests:GET /v1/countries/{code}/asns"] == 1
