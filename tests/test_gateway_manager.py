"""GatewayManager end to end against the real sandbox (API + gateway + demo site).

httpx plays the client stack: every request goes through the route the manager hands out, and
every answer goes back through ``rr.observe``.  Counters come from the sandbox itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import httpx
import pytest

from proxaro_scrape import (
    APIConnectionError,
    GatewayManager,
    Proxaro,
    ServiceUnavailableError,
    Target,
    TargetError,
    UsageCapError,
)
from proxaro_scrape.errors import GatewayAuthError
from proxaro_scrape.gateway import HEALTHY_ASN, Route
from proxaro_scrape.sandbox import Sandbox
from tests._support import aeventually, eventually

CREDENTIALS_CALLS = "api.requests:GET /v1/credentials"


# ---------------------------------------------------------------------------- helpers


def counters(sb: Sandbox) -> dict[str, int]:
    return dict(httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10).json())


def manager(sb: Sandbox, **kw: Any) -> GatewayManager:
    return GatewayManager(sb.api_key, sb.api_url, **kw)


class Sender:
    """httpx clients per proxy URL (so keep-alive works), closed at the end."""

    def __init__(self) -> None:
        self.clients: dict[str, httpx.Client] = {}
        self.lock = threading.Lock()

    def get(self, route: Route, url: str) -> httpx.Response:
        with self.lock:
            client = self.clients.get(route.proxy_url)
            if client is None:
                client = self.clients[route.proxy_url] = httpx.Client(
                    proxy=route.proxy_url, timeout=10
                )
        return client.get(url)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


class ASender:
    def __init__(self) -> None:
        self.clients: dict[str, httpx.AsyncClient] = {}

    async def get(self, route: Route, url: str) -> httpx.Response:
        client = self.clients.get(route.proxy_url)
        if client is None:
            client = self.clients[route.proxy_url] = httpx.AsyncClient(
                proxy=route.proxy_url, timeout=10
            )
        return await client.get(url)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def fetch(
    mgr: GatewayManager, sender: Sender, url: str, target: Any = None, session_key: Any = None
) -> tuple[httpx.Response, list[Route]]:
    """One logical request, driven exactly as an integration drives it."""
    rr = mgr.request(url, target, session_key)
    routes = []
    while True:
        route = rr.next_route()
        routes.append(route)
        try:
            resp = sender.get(route, url)
        except httpx.HTTPError as exc:
            outcome = rr.observe(exception=exc)
        else:
            outcome = rr.observe(status=resp.status_code, headers=resp.headers)
        if outcome.ok:
            return resp, routes
        if not outcome.retry:
            assert outcome.error is not None
            raise outcome.error
        if outcome.refresh:
            mgr.refresh_credentials(route.credentials_version)


async def afetch(
    mgr: GatewayManager, sender: ASender, url: str, target: Any = None
) -> tuple[httpx.Response, list[Route]]:
    rr = mgr.request(url, target)
    routes = []
    while True:
        route = rr.next_route()
        routes.append(route)
        try:
            resp = await sender.get(route, url)
        except httpx.HTTPError as exc:
            outcome = rr.observe(exception=exc)
        else:
            outcome = rr.observe(status=resp.status_code, headers=resp.headers)
        if outcome.ok:
            return resp, routes
        if not outcome.retry:
            assert outcome.error is not None
            raise outcome.error
        if outcome.refresh:
            await mgr.arefresh_credentials(route.credentials_version)


# ---------------------------------------------------------------------------- basics


def test_targeting_reaches_the_site_and_sticky_keeps_one_exit(sandbox: Sandbox) -> None:
    rotating = Sender()
    with manager(sandbox) as mgr:
        url = f"{sandbox.site_url}/ip"
        spread = {fetch(mgr, rotating, url, {"country": "us"})[0].json()["ip"] for _ in range(6)}
        assert len(spread) > 1  # sticky off: a new exit per request
    rotating.close()
    sender = Sender()
    with manager(sandbox, target={"country": "de"}, sticky="domain") as mgr:
        try:
            url = f"{sandbox.site_url}/ip"
            seen = [fetch(mgr, sender, url)[0].json() for _ in range(4)]
            assert {s["country"] for s in seen} == {"de"}
            assert len({s["ip"] for s in seen}) == 1  # one sticky session, one exit
            jp = fetch(mgr, sender, url, {"country": "jp", "exit_class": "residential"})[0]
            assert (jp.json()["country"], jp.json()["exit_class"]) == ("jp", "residential")
            us = {fetch(mgr, sender, url, {"country": "us"})[0].json()["ip"] for _ in range(6)}
            assert len(us) == 1  # sticky per (domain, target): its own session
        finally:
            sender.close()
        stats = mgr.stats()
    assert stats["requests/country/de"] == 4 and stats["requests/country/jp"] == 1
    assert stats["successes"] == 11 and stats["exits_used"] == 3
    assert not any(sandbox.world.credentials.password in k for k in stats)


def test_a_ban_gives_a_new_exit_then_success(sandbox: Sandbox) -> None:
    sandbox.control("site", budget=2, ban_window=60, ban_seconds=30)
    sender = Sender()
    with manager(sandbox, target={"country": "us"}, sticky="domain") as mgr:
        try:
            url = f"{sandbox.site_url}/ip"
            first = [fetch(mgr, sender, url) for _ in range(2)]
            ips = {r.json()["ip"] for r, _ in first}
            assert len(ips) == 1
            resp, routes = fetch(mgr, sender, url)  # third: the exit is over budget → ban
            assert resp.status_code == 200 and len(routes) >= 2
            assert resp.json()["ip"] not in ips
            assert routes[0].session_id != routes[-1].session_id
        finally:
            sender.close()
        stats = mgr.stats()
    assert stats["bans"] >= 1 and stats["sessions_rotated"] >= 1


def test_every_bad_target_raises_before_anything_is_sent(sandbox: Sandbox) -> None:
    with manager(sandbox) as mgr:
        # ASN listings are fetched on demand: check_target gets the ones these targets need
        for code in ("de", "jp"):
            with pytest.raises(TargetError):
                mgr.check_target({"country": code, "asn": "1"})
        assert set(mgr.pool.asns) == {"de", "jp"}
        before = counters(sandbox)
        bad: list[Any] = [
            {"country": "US"},
            {"country": "xx"},
            {"country": "uk"},
            {"city": "paris"},
            {"country": "fr", "exit_class": "mobile_5g"},
            {"country": "us", "asn": "AS7922"},
            {"country": "de", "asn": "1"},
            {"country": "jp", "asn": "7922"},  # a US ASN
            {"country": "de", "session": "has-dash"},
            {"session_ttl": 5},
            {"continent": "Atlantis"},
            {"colour": "blue"},
            "us",
        ]
        for target in bad:
            with pytest.raises(TargetError):
                mgr.request(f"{sandbox.site_url}/ip", target)
            with pytest.raises(TargetError):
                mgr.check_target(target)
        after = counters(sandbox)
    # nothing sent, and nothing asked of the API either: every listing needed was cached
    assert after == before


def test_asn_targeting_on_starter_is_refused_with_the_reason() -> None:
    with Sandbox(seed=0, plan="starter") as sb:
        with manager(sb) as mgr:
            assert mgr.pool.asn_allowed is None  # not asked at start: no target names an ASN
            target = {"country": "us", "asn": "7922"}
            with pytest.raises(TargetError, match="Growth") as info:
                mgr.check_target(target)  # one ASN listing, refused: scope_required
            assert info.value.param == "asn" and mgr.pool.asn_allowed is False
            with pytest.raises(TargetError, match="Growth"):
                mgr.request(f"{sb.site_url}/ip", target)


def test_healthy_asn_selector_through_the_gateway(sandbox: Sandbox) -> None:
    sender = Sender()
    with manager(sandbox) as mgr:
        try:
            url = f"{sandbox.site_url}/ip"
            target = Target(country="us", exit_class="residential", asn=HEALTHY_ASN)
            assert "us" not in mgr.pool.asns  # not at start: nothing named an ASN then
            assert mgr.check_target(target) == target
            assert "us" in mgr.pool.asns
            healthy = {a.asn for a in mgr.pool.asns["us"] if a.pool_health == "healthy"}
            resp, routes = fetch(mgr, sender, url, target)
            assert routes[-1].target.asn in healthy
            assert resp.json()["asn"] == f"AS{routes[-1].target.asn}"
        finally:
            sender.close()


# ---------------------------------------------------------------------------- credentials


def run_traffic(
    mgr: GatewayManager,
    url: str,
    stop: threading.Event,
    done: list[tuple[float, int]],
    workers: int = 3,
) -> list[BaseException]:
    """Sustained bounded traffic: ``workers`` loops until ``stop`` (at most 400 requests each),
    each answered request appended to ``done`` as (when, credentials version)."""
    failed: list[BaseException] = []
    sender = Sender()

    def loop() -> None:
        for _ in range(400):
            if stop.is_set():
                return
            try:
                _, routes = fetch(mgr, sender, url)
                done.append((time.monotonic(), routes[-1].credentials_version))
            except Exception as exc:  # a failed logical request
                failed.append(exc)
            time.sleep(0.02)

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    stop.wait(60)
    for t in threads:
        t.join(30)
    sender.close()
    return failed


def test_rotation_by_api_mid_traffic_loses_nothing(sandbox: Sandbox) -> None:
    sandbox.control("grace", seconds=2)
    with manager(sandbox, target={"country": "gb"}) as mgr:
        stop = threading.Event()
        done: list[tuple[float, int]] = []
        result: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: result.update(
                failed=run_traffic(mgr, f"{sandbox.site_url}/ip", stop, done)
            )
        )
        runner.start()
        eventually(lambda: len(done) >= 5, message="traffic before the rotation")
        with Proxaro(sandbox.api_key, sandbox.api_url) as client:
            client.credentials.rotate()  # the old password lapses 2 world seconds later
        before = len(done)
        # The grace ends in world time: move the clock past it instead of waiting.
        sandbox.control("clock", advance=3)
        eventually(
            lambda: sum(1 for _, v in done[before:] if v == 2) > 10,
            message="traffic with the new credentials after the grace",
        )
        stop.set()
        runner.join(60)
        stats = mgr.stats()
    assert result["failed"] == []
    assert all(v == 1 for _, v in done[:5])
    assert stats["rotations"] == 1 and stats["credentials_version"] == 2


async def test_rotation_mid_traffic_async_loses_nothing(sandbox: Sandbox) -> None:
    await sandbox.acontrol("grace", seconds=2)
    async with manager(sandbox) as mgr:
        sender = ASender()
        failures: list[BaseException] = []
        versions: list[int] = []
        stop = asyncio.Event()

        async def worker() -> None:
            for _ in range(400):
                if stop.is_set():
                    return
                try:
                    _, routes = await afetch(mgr, sender, f"{sandbox.site_url}/ip")
                    versions.append(routes[-1].credentials_version)
                except Exception as exc:
                    failures.append(exc)
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(worker()) for _ in range(3)]
        await aeventually(lambda: len(versions) >= 5, message="traffic before the rotation")
        await sandbox.acontrol("rotate")
        before = len(versions)
        await sandbox.acontrol("clock", advance=3)  # past the 2 s grace, in world time
        await aeventually(
            lambda: versions[before:].count(2) > 10,
            message="traffic with the new credentials after the grace",
        )
        stop.set()
        await asyncio.gather(*tasks)
        await sender.aclose()
    assert failures == []
    assert 1 in versions and 2 in versions


async def test_a_407_storm_makes_exactly_one_credentials_call(sandbox: Sandbox) -> None:
    async with manager(sandbox) as mgr:
        await sandbox.acontrol("grace", seconds=0)
        before = counters(sandbox)
        await sandbox.acontrol("rotate")  # the current password is refused from now on
        sender = ASender()
        url = f"{sandbox.site_url}/ip"
        results = await asyncio.gather(*(afetch(mgr, sender, url) for _ in range(100)))
        await sender.aclose()
        after = counters(sandbox)
        stats = mgr.stats()
    assert all(resp.status_code == 200 for resp, _ in results)
    assert sum(1 for _, routes in results if len(routes) == 2) >= 90  # almost all met the 407
    assert after[CREDENTIALS_CALLS] - before.get(CREDENTIALS_CALLS, 0) == 1
    assert stats["outcomes/stale_credentials"] >= 90


def test_a_407_storm_from_threads_makes_exactly_one_credentials_call(sandbox: Sandbox) -> None:
    with manager(sandbox) as mgr:
        sandbox.control("grace", seconds=0)
        url = f"{sandbox.site_url}/ip"
        sender = Sender()
        fetch(mgr, sender, url)  # warm: one keep-alive client per proxy URL
        before = counters(sandbox)
        sandbox.control("rotate")
        barrier = threading.Barrier(50)

        def one(_: int) -> int:
            barrier.wait(10)
            return len(fetch(mgr, sender, url)[1])

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            attempts = list(pool.map(one, range(50)))
        sender.close()
        after = counters(sandbox)
    # Every request got through, on the old password's 407 and a retry, or (a thread the
    # machine started late, after the refresh) on the new password at once; the storm, however
    # many threads it caught, cost one credentials call.
    assert set(attempts) <= {1, 2} and 2 in attempts, attempts
    assert after[CREDENTIALS_CALLS] - before.get(CREDENTIALS_CALLS, 0) == 1


async def test_expired_credentials_do_not_turn_407s_into_an_api_storm(sandbox: Sandbox) -> None:
    # The API keeps answering with the credentials already held (they expired): every request
    # fails explicitly, and the 407s cost a couple of credentials calls, not one each.
    async with manager(sandbox) as mgr:
        await sandbox.acontrol("expire_credentials")
        before = counters(sandbox)
        sender = ASender()
        url = f"{sandbox.site_url}/ip"
        results = await asyncio.gather(
            *(afetch(mgr, sender, url) for _ in range(60)), return_exceptions=True
        )
        await sender.aclose()
        after = counters(sandbox)
    assert all(isinstance(r, GatewayAuthError) for r in results), results[:3]
    assert after[CREDENTIALS_CALLS] - before.get(CREDENTIALS_CALLS, 0) <= 3


def test_refresh_is_a_no_op_when_newer_credentials_are_in(sandbox: Sandbox) -> None:
    with manager(sandbox) as mgr:
        before = counters(sandbox)[CREDENTIALS_CALLS]
        assert mgr.refresh_credentials(0) is False  # version 1 is newer than 0
        assert counters(sandbox)[CREDENTIALS_CALLS] == before
        sandbox.control("rotate")
        assert mgr.refresh_credentials(1) is True and mgr.credentials_version == 2
        assert mgr.refresh_credentials(1) is False
        assert counters(sandbox)[CREDENTIALS_CALLS] == before + 1


def test_an_api_503_storm_while_routing_continues(sandbox: Sandbox) -> None:
    sender = Sender()
    with manager(sandbox, credentials_poll_interval=0.3) as mgr:
        try:
            url = f"{sandbox.site_url}/ip"
            sandbox.control("faults", statuses=[503] * 40)
            ok = 0
            # Route on while the polls fail: every request answers until a failed poll shows
            # (the client's own retries, honouring Retry-After, make one take a while).
            for _ in range(5000):
                assert fetch(mgr, sender, url)[0].status_code == 200
                ok += 1
                if ok > 10 and mgr.stats().get("credential_refresh_errors"):
                    break
            else:
                pytest.fail("no failed credentials poll in 5,000 requests")
            assert mgr.credentials is not None  # ...and the last good credentials served
            sandbox.control("faults", clear=True)
            refreshes = mgr.stats()["credential_refreshes"]
            # the backoff is capped by the poll interval: recovers within a few seconds
            eventually(lambda: mgr.stats()["credential_refreshes"] > refreshes)
        finally:
            sender.close()
    assert ok > 10


def test_api_down_at_start_is_a_clear_error(sandbox: Sandbox) -> None:
    sandbox.control("faults", statuses=[503] * 10)
    mgr = manager(sandbox)
    with pytest.raises(ServiceUnavailableError, match="could not start the gateway manager"):
        mgr.start()
    assert not mgr._clients.open and mgr.driver is None  # nothing left open
    mgr.close()
    sandbox.control("faults", clear=True)
    dead = GatewayManager(sandbox.api_key, "http://127.0.0.1:9")
    with pytest.raises(APIConnectionError, match="could not start the gateway manager"):
        dead.start()
    dead.close()


def test_credentials_rotated_event_is_taken_in_before_any_poll(sandbox: Sandbox) -> None:
    # The poll is an hour away: only the event can bring the new credentials in.
    with manager(sandbox, credentials_poll_interval=3600) as mgr:
        sandbox.control("rotate")
        mgr.handle_event({"type": "credentials.rotated", "data": {"id": "cred_x"}})
        eventually(lambda: mgr.credentials_version == 2, message="the event's refresh")
        route = mgr.request(f"{sandbox.site_url}/ip").next_route()
        assert route.password == sandbox.world.credentials.password
        assert mgr.stats()["rotation_events"] == 1


async def test_credentials_rotated_event_async_driver(sandbox: Sandbox) -> None:
    class Event:
        type = "credentials.rotated"
        data: dict[str, Any] = {}

    async with manager(sandbox) as mgr:
        await sandbox.acontrol("rotate")
        # from another thread, as a webhook receiver on another loop would
        await asyncio.to_thread(mgr.handle_event, Event())
        await aeventually(lambda: mgr.credentials_version == 2, message="the event's refresh")


def test_credentials_are_refreshed_ahead_of_expiry(sandbox: Sandbox) -> None:
    with manager(sandbox) as mgr:
        sandbox.control("expire_credentials", in_seconds=62)
        mgr.refresh_credentials()  # learns the new expires_at: the next poll is due in ~2 s
        before = counters(sandbox)[CREDENTIALS_CALLS]
        eventually(lambda: counters(sandbox)[CREDENTIALS_CALLS] > before, interval=0.2)


# ---------------------------------------------------------------------------- failover


def test_a_region_down_fails_over_and_returns_when_healed(sandbox: Sandbox) -> None:
    sender = Sender()
    with manager(
        sandbox,
        target={"country": "de", "exit_class": "residential"},
        breaker_base_backoff=0.3,
        breaker_max_backoff=0.6,
    ) as mgr:
        try:
            url = f"{sandbox.site_url}/ip"
            assert fetch(mgr, sender, url)[0].json()["country"] == "de"
            sandbox.control("country", code="de", pool_health="down")
            europe = {c.code for c in mgr.pool.by_continent("Europe")}
            for _ in range(5):
                resp, _ = fetch(mgr, sender, url)
                assert resp.json()["country"] in europe - {"de"}
            assert mgr.stats()["failovers"] >= 5
            sandbox.control("country", code="de", pool_health="healthy")

            def back() -> bool:
                return bool(fetch(mgr, sender, url)[0].json()["country"] == "de")

            eventually(back, interval=0.1)
        finally:
            sender.close()
        assert mgr.stats()["breakers_closed"] >= 1


def test_the_pool_view_keeps_traffic_away_from_a_down_region(sandbox: Sandbox) -> None:
    sender = Sender()
    with manager(sandbox, target={"country": "fr"}, pool_ttl=0.3) as mgr:
        try:
            url = f"{sandbox.site_url}/ip"
            sandbox.control("country", code="fr", pool_health="down")
            eventually(lambda: mgr.pool.countries["fr"].pool_health == "down")
            resp, routes = fetch(mgr, sender, url)
            assert len(routes) == 1 and resp.json()["country"] != "fr"  # no attempt wasted
            sandbox.control("country", code="fr", pool_health="healthy")
            eventually(lambda: mgr.pool.countries["fr"].pool_health == "healthy")
            assert fetch(mgr, sender, url)[0].json()["country"] == "fr"
        finally:
            sender.close()


def test_the_session_lru_bound_holds(sandbox: Sandbox) -> None:
    sender = Sender()
    with manager(sandbox, session_lru_size=20) as mgr:
        try:
            url = f"{sandbox.site_url}/ip"
            for i in range(60):
                fetch(mgr, sender, url, session_key=f"user{i}")
            assert mgr.stats()["sessions"] == 20
            for i in range(1000):  # routing only: a thousand more keys, still 20 sessions
                mgr.request(url, session_key=f"more{i}").next_route()
            assert mgr.stats()["sessions"] == 20
        finally:
            sender.close()


# ---------------------------------------------------------------------------- usage guard


def test_usage_cap_stop_refuses_routing_and_tells_once(sandbox: Sandbox) -> None:
    calls: list[int] = []
    with manager(sandbox, usage_cap_action="stop") as mgr:
        mgr.on_usage_cap(lambda: calls.append(1))
        mgr.request(f"{sandbox.site_url}/ip")  # fine below the cap
        sandbox.control("usage", to_percent=100)
        mgr.handle_event({"type": "usage.threshold.100", "data": {}})
        mgr.handle_event({"type": "usage.threshold.100", "data": {}})  # at-least-once delivery
        with pytest.raises(UsageCapError):
            mgr.request(f"{sandbox.site_url}/ip")
    assert calls == [1]


def test_usage_poll_warns_at_80_percent(sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    sandbox.control("usage", to_percent=85)
    with caplog.at_level("WARNING", logger="proxaro_scrape.gateway"):
        with manager(sandbox, usage_poll_interval=0.2) as mgr:
            eventually(lambda: "80 %" in caplog.text)
            mgr.request(f"{sandbox.site_url}/ip")  # warn: routing goes on
    assert caplog.text.count("80 %") == 1


# ---------------------------------------------------------------------------- drivers


async def test_async_start_with_the_api_down_is_a_clear_error(sandbox: Sandbox) -> None:
    await sandbox.acontrol("faults", statuses=[503] * 10)
    mgr = manager(sandbox)
    with pytest.raises(ServiceUnavailableError, match="could not start the gateway manager"):
        await mgr.astart()
    assert not mgr._clients.open and mgr.driver is None
    await sandbox.acontrol("faults", clear=True)
    async with mgr:  # and it starts once the API answers again
        assert mgr.credentials_version == 1


async def test_async_driver_routes_and_closes(sandbox: Sandbox) -> None:
    mgr = manager(sandbox, target={"country": "jp"}, pool_ttl=0.2)
    await mgr.astart()
    assert mgr.driver == "task"  # a task, no thread
    sender = ASender()
    resp, _ = await afetch(mgr, sender, f"{sandbox.site_url}/ip")
    assert resp.json()["country"] == "jp"
    # the pool refresh runs in the background task
    await aeventually(lambda: mgr.stats().get("pool_refreshes", 0) >= 1)
    await sender.aclose()
    await mgr.aclose()
    assert mgr.driver is None


def test_manager_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxaro_scrape import ConfigurationError

    monkeypatch.delenv("PROXARO_API_KEY", raising=False)
    with pytest.raises(ConfigurationError) as info:
        GatewayManager()
    assert info.value.param == "api_key"
    with pytest.raises(Exception, match="start"):
        GatewayManager("proxaro_test_" + "0" * 32).request("http://x/")
