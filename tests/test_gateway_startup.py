"""Start-up costs at most three API calls; ASN listings come only for the countries asked for.

Against the real sandbox on loopback; every call is counted by the sandbox itself
(``api.requests:<METHOD> <route>`` in ``/_sandbox/counters``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from _support import aeventually, eventually

from proxaro_scrape import GatewayManager, Target, TargetError
from proxaro_scrape.gateway import HEALTHY_ASN
from proxaro_scrape.gateway.edge import observe_answer
from proxaro_scrape.sandbox import Sandbox

START = {
    "api.requests:GET /v1/credentials": 1,
    "api.requests:GET /v1/countries": 1,
    "api.requests:GET /v1/usage": 1,
}
ASNS = "api.requests:GET /v1/countries/{code}/asns"
#: Polls far away, so that only what is under test calls the API.
QUIET: dict[str, Any] = {"credentials_poll_interval": 3600, "pool_ttl": None}


def api_calls(sb: Sandbox) -> dict[str, int]:
    got = httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10).json()
    return {k: v for k, v in got.items() if k.startswith("api.requests:")}


def new_calls(sb: Sandbox, before: dict[str, int]) -> dict[str, int]:
    after = api_calls(sb)
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def a_healthy_asn(sb: Sandbox, code: str) -> str:
    asn = next(a for a in sb.world.asns[code] if a.pool_health == "healthy")
    return asn.asn[2:]  # "AS7922" -> "7922", the grammar's form


def test_a_sync_start_makes_three_api_calls(sandbox: Sandbox) -> None:
    before = api_calls(sandbox)
    with GatewayManager(sandbox.api_key, sandbox.api_url, **QUIET) as mgr:
        assert mgr.driver == "thread"
        assert new_calls(sandbox, before) == START
        assert mgr.pool.loaded and dict(mgr.pool.asns) == {}


async def test_an_async_start_makes_three_api_calls(sandbox: Sandbox) -> None:
    before = await asyncio.to_thread(api_calls, sandbox)
    async with GatewayManager(sandbox.api_key, sandbox.api_url, **QUIET) as mgr:
        assert mgr.driver == "task"
        assert await asyncio.to_thread(new_calls, sandbox, before) == START


def test_a_default_target_naming_an_asn_adds_only_its_countrys_listing(
    sandbox: Sandbox,
) -> None:
    before = api_calls(sandbox)
    target = Target(country="de", asn=HEALTHY_ASN)
    with GatewayManager(sandbox.api_key, sandbox.api_url, target=target, **QUIET) as mgr:
        assert new_calls(sandbox, before) == {**START, ASNS: 1}
        assert set(mgr.pool.asns) == {"de"}
        route = mgr.request(f"{sandbox.site_url}/ip").next_route()
        assert route.target.asn is not None and route.target.asn != HEALTHY_ASN


def test_an_asn_request_routes_and_fetches_only_its_countrys_listing(sandbox: Sandbox) -> None:
    asn = a_healthy_asn(sandbox, "us")
    with GatewayManager(sandbox.api_key, sandbox.api_url, **QUIET) as mgr:
        before = api_calls(sandbox)
        url = f"{sandbox.site_url}/ip"
        rr = mgr.request(url, {"country": "us", "asn": asn})  # not cached: sent as it is
        route = rr.next_route()
        assert route.username.endswith(f"-country-us-asn-{asn}")
        with httpx.Client(proxy=route.proxy_url, timeout=10) as client:
            resp = client.get(url)
        assert observe_answer(rr, resp.status_code, resp.headers, tunnel=False).ok
        assert resp.json()["asn"] == f"AS{asn}"
        # ...and the listing of its country comes in the background, once
        eventually(lambda: "us" in mgr.pool.asns)
        for _ in range(20):  # more requests for the same country: cached, nothing fetched
            mgr.request(url, {"country": "us", "asn": asn}).next_route()
        mgr.check_target({"country": "us", "asn": asn})
        assert new_calls(sandbox, before) == {ASNS: 1}
        assert set(mgr.pool.asns) == {"us"}


def test_check_target_fetches_the_listing_it_needs_first(sandbox: Sandbox) -> None:
    with GatewayManager(sandbox.api_key, sandbox.api_url, **QUIET) as mgr:
        before = api_calls(sandbox)
        mgr.check_target({"country": "us"})  # no ASN: nothing to fetch
        mgr.check_target(None)
        assert new_calls(sandbox, before) == {}
        asn = a_healthy_asn(sandbox, "gb")
        assert mgr.check_target({"country": "gb", "asn": asn}).asn == asn
        assert new_calls(sandbox, before) == {ASNS: 1} and set(mgr.pool.asns) == {"gb"}


async def test_acheck_target_awaits_the_listing_on_the_managers_loop(sandbox: Sandbox) -> None:
    async with GatewayManager(sandbox.api_key, sandbox.api_url, **QUIET) as mgr:
        before = await asyncio.to_thread(api_calls, sandbox)
        asn = a_healthy_asn(sandbox, "jp")
        target = await mgr.acheck_target({"country": "jp", "asn": asn})
        assert target.asn == asn and set(mgr.pool.asns) == {"jp"}
        assert await asyncio.to_thread(new_calls, sandbox, before) == {ASNS: 1}
        # the sync form on the manager's own loop never blocks: cached data, background fetch
        with pytest.raises(TargetError, match="not in the pool"):
            mgr.check_target({"country": "jp", "asn": "1"})
        mgr.check_target({"country": "fr", "asn": "1"})  # not cached: asked in the background
        await aeventually(lambda: "fr" in mgr.pool.asns)


def test_four_managers_starting_at_once_stay_far_below_the_rate_limit(sandbox: Sandbox) -> None:
    before = api_calls(sandbox)
    managers = [GatewayManager(sandbox.api_key, sandbox.api_url, **QUIET) for _ in range(4)]
    errors: list[BaseException] = []

    def start(mgr: GatewayManager) -> None:
        try:
            mgr.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        # a 429 would show as a retried call: exactly three each means none came
        assert new_calls(sandbox, before) == {k: 4 * v for k, v in START.items()}
    finally:
        for mgr in managers:
            mgr.close()
