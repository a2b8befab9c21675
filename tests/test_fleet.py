# ruff: noqa: F811 - the redis_server fixture is imported, then named as an argument
"""The fleet in one process: managers on one sandbox and one real Redis (fast tier)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from proxaro_scrape import GatewayManager
from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.sandbox import Sandbox
from tests._redis import RedisServer, redis_server  # noqa: F401 - the fixture
from tests._support import aeventually, eventually

pytestmark = pytest.mark.timeout(120)


def until(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Wait for ``condition()`` (the bound only stops a broken test)."""
    eventually(condition, timeout, interval=0.005)


def credentials_calls(sb: Sandbox) -> int:
    raw = httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10).json()
    return int(raw.get("api.requests:GET /v1/credentials", 0))


@pytest.fixture
def fleet(sandbox: Sandbox, redis_server: RedisServer) -> Iterator[list[GatewayManager]]:
    managers = [
        GatewayManager(sandbox.api_key, sandbox.api_url, redis_url=redis_server.url)
        for _ in range(4)
    ]
    for mgr in managers:
        mgr.start()
    yield managers
    for mgr in managers:
        mgr.close()


def test_redis_holds_no_secret_and_names_the_account_by_a_digest(
    sandbox: Sandbox,
    redis_server: RedisServer,
    fleet: list[GatewayManager],
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    keys = list(client.scan_iter("*"))
    assert keys and all(k.startswith(b"proxaro:") for k in keys)
    password = fleet[0].credentials.password.reveal()  # type: ignore[union-attr]
    for key in keys:
        assert sandbox.api_key.encode() not in key
        kind = client.type(key)
        value = repr(client.get(key) if kind == b"string" else client.dump(key))
        assert password not in value and sandbox.api_key not in value
    assert "****" in repr(fleet[0].fleet) or "redis://127.0.0.1" in repr(fleet[0].fleet)


def test_one_worker_calls_the_api_at_start_and_the_rest_read_redis(
    sandbox: Sandbox, fleet: list[GatewayManager]
) -> None:
    assert credentials_calls(sandbox) == 1
    creds = [m.credentials for m in fleet]
    assert all(c is not None and c.same_as(creds[0]) for c in creds)  # type: ignore[arg-type]
    assert all(m.pool.countries == fleet[0].pool.countries for m in fleet)


def test_a_407_storm_on_every_worker_costs_one_credentials_call(
    sandbox: Sandbox, fleet: list[GatewayManager]
) -> None:
    sandbox.control("grace", seconds=0)
    sandbox.control("rotate")
    before = credentials_calls(sandbox)
    threads = [
        threading.Thread(target=m.refresh_credentials, args=(m.credentials_version,))
        for m in fleet
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert credentials_calls(sandbox) - before <= 2
    # Each refresh returned with the new credentials in use: none took the copy fetched at
    # start (a moment before the rotation) for an answer, to wait for the next poll instead.
    assert [m.credentials_version for m in fleet] == [2, 2, 2, 2]


def test_bans_breakers_and_rotations_reach_the_other_workers(fleet: list[GatewayManager]) -> None:
    a, b = fleet[0], fleet[1]
    # The same key names the same session on every worker, without asking anyone.
    ra = a.request("http://shop.test/", session_key="cart42").next_route()
    rb = b.request("http://shop.test/", session_key="cart42").next_route()
    assert ra.session_id == rb.session_id
    # A ban of that exit rotates the session here, and there.
    rr = a.request("http://shop.test/", session_key="cart42")
    rr.next_route()
    rr.observe(status=403, headers={"X-Proxaro-Exit-Ip": "203.0.113.9"})
    moved = a.request("http://shop.test/", session_key="cart42").next_route().session_id
    assert moved != ra.session_id
    until(
        lambda: (
            b.request("http://shop.test/", session_key="cart42").next_route().session_id == moved
        )
    )
    # A dead region: open here, skipped there.
    rr = a.request("http://shop.test/", target={"country": "de"})
    rr.next_route()
    rr.observe(status=502, headers={"X-Proxaro-Error": "no_exit"})
    until(lambda: b.breakers().get("c:de") == "open")
    route = b.request("http://shop.test/", target={"country": "de"}).next_route()
    assert route.target.country != "de"


def test_a_webhook_received_by_one_worker_reaches_every_worker(fleet: list[GatewayManager]) -> None:
    fleet[0].handle_event(
        {"type": "usage.threshold.80", "data": {"total_bytes": 8, "cap_bytes": 10}}
    )
    until(lambda: all(m.core.usage.level == 80 for m in fleet))


def test_redis_away_changes_nothing_on_the_request_path_and_is_resynced(
    redis_server: RedisServer,
    fleet: list[GatewayManager],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = fleet[0], fleet[1]
    redis_server.stop()
    until(lambda: not a.fleet.up)
    rr = a.request("http://shop.test/", target={"country": "fr"})
    rr.next_route()
    rr.observe(status=502, headers={"X-Proxaro-Error": "no_exit"})  # routing goes on locally
    redis_server.start()
    until(lambda: b.breakers().get("c:fr") == "open")  # a's breaker written at its resync
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) <= len(fleet)  # one per worker and outage at most


def test_a_killed_lock_holder_leaves_nothing_stuck(
    redis_server: RedisServer,
    fleet: list[GatewayManager],
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    for name in client.scan_iter("proxaro:*:lease"):
        assert 0 < client.pttl(name) <= 5_000  # the leader's lease lapses if it dies
    lock = fleet[0].fleet.keys.key("lock", "creds")
    client.set(lock, "a-dead-worker", px=10_000)  # as if its holder were killed mid-fetch
    assert 0 < client.pttl(lock) <= 10_000


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"redis_url": "http://127.0.0.1:6379"}, "redis_url"),
        ({"redis_url": 6379}, "redis_url"),
        ({"redis_url": "redis://127.0.0.1:1/0", "redis_prefix": "a b"}, "redis_prefix"),
        ({"redis_url": "redis://127.0.0.1:1/0", "redis_prefix": ""}, "redis_prefix"),
        ({"redis_url": "redis://127.0.0.1:1/0", "fleet_api_rate": 0}, "fleet_api_rate"),
        ({"redis_url": "redis://127.0.0.1:1/0", "fleet_api_rate": True}, "fleet_api_rate"),
    ],
)
def test_fleet_arguments_are_checked_naming_them(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        GatewayManager("proxaro_test_abc", "http://127.0.0.1:9", **kwargs)  # type: ignore[arg-type]
    assert info.value.param == param


async def test_async_workers_join_the_fleet_and_share_one_refresh(
    sandbox: Sandbox, redis_server: RedisServer
) -> None:
    import asyncio

    managers = [
        GatewayManager(sandbox.api_key, sandbox.api_url, redis_url=redis_server.url)
        for _ in range(3)
    ]
    try:
        for mgr in managers:
            await mgr.astart()
        assert all(m.driver == "task" for m in managers)
        assert await asyncio.to_thread(credentials_calls, sandbox) == 1
        await asyncio.to_thread(sandbox.control, "grace", seconds=0)
        await asyncio.to_thread(sandbox.control, "rotate")
        before = await asyncio.to_thread(credentials_calls, sandbox)
        await asyncio.gather(
            *(m.arefresh_credentials(m.credentials_version) for m in managers for _ in range(2))
        )
        assert await asyncio.to_thread(credentials_calls, sandbox) - before <= 2
        await aeventually(lambda: all(m.credentials_version == 2 for m in managers))
    finally:
        for mgr in managers:
            await mgr.aclose()


def test_the_shared_bucket_spends_the_accounts_budget_once_for_all(
    fleet: list[GatewayManager],
) -> None:
    links = [m.fleet for m in fleet]
    key = links[0].keys.key("bench-bucket")
    # 6 requests a minute, 3 in the bucket: four workers asking together get 3, then wait.
    waits = [int(link._bucket(keys=[key], args=[0.1, 3])) for link in links]
    assert waits[:3] == [0, 0, 0] and waits[3] > 0


def test_when_the_leader_goes_another_worker_polls_for_the_fleet(
    sandbox: Sandbox, redis_server: RedisServer
) -> None:
    import redis

    managers = [
        GatewayManager(sandbox.api_key, sandbox.api_url, redis_url=redis_server.url, pool_ttl=0.2)
        for _ in range(3)
    ]
    try:
        for mgr in managers:
            mgr.start()
        leaders = [m for m in managers if m.fleet.leader]
        assert len(leaders) == 1
        leaders[0].close()  # gives the lease back
        rest = [m for m in managers if m is not leaders[0]]
        until(lambda: sum(m.fleet.leader for m in rest) == 1)
        # A leader killed outright gives nothing back: its lease lapses (a short one here).
        client = redis.Redis.from_url(redis_server.url)
        lease = rest[0].fleet.keys.key("lease")
        for m in rest:
            m.fleet.leader = False
        client.set(lease, "a-killed-worker", px=300)
        until(lambda: client.get(lease) not in (None, b"a-killed-worker"))
        until(lambda: sum(m.fleet.leader for m in rest) == 1)
    finally:
        for mgr in managers:
            mgr.close()
