"""Every client-stack integration, every behaviour, against the real sandbox.

Each test is written once and runs on httpx (sync and async), requests and aiohttp through
the drivers in ``tests/_stack_drivers.py``.  Nothing is mocked: the sandbox's API, gateway and
demo shop run on loopback, and the figures asserted come from the sandbox's own counters.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from proxaro_scrape import AttemptsExhaustedError, RequestNotReplayableError, TargetError
from proxaro_scrape.sandbox import Sandbox
from tests._stack_drivers import DRIVERS, STREAM, STREAM_BYTES, Driver, Reply
from tests._support import aeventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=sorted(DRIVERS))
def stack(request: pytest.FixtureRequest, sandbox: Sandbox) -> Driver:
    return DRIVERS[request.param](sandbox)


async def counters(sb: Sandbox) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as c:
        return dict((await c.get(f"{sb.api_url}/_sandbox/counters")).json())


async def run_many(calls: list[Any], concurrency: int) -> list[Reply | BaseException]:
    sem = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> Reply | BaseException:
        async with sem:
            try:
                return await call()  # type: ignore[no-any-return]
            except Exception as exc:  # noqa: BLE001 - counted by the caller
                return exc

    return await asyncio.gather(*(one(c) for c in calls))


def bases(sb: Sandbox) -> list[str]:
    return [sb.site_url, sb.site_https_url]


def healthy_asn(sb: Sandbox, country: str) -> tuple[str, str]:
    a = next(a for a in sb.world.asns[country] if a.pool_health == "healthy")
    return a.asn, a.exit_class


# ---------------------------------------------------------------------------- targeting


async def test_targeting_reaches_the_site(stack: Driver) -> None:
    sb = stack.sb
    asn, asn_class = healthy_asn(sb, "us")
    async with stack.opened() as drv:
        for base in bases(sb):
            r = await drv.get(f"{base}/ip", target={"country": "de"})
            seen = r.json()
            assert r.status == 200 and seen["country"] == "de"
            # Over HTTP from the answer, over HTTPS from the CONNECT answer: every stack.
            assert r.exit is not None and r.exit.ip == seen["ip"], base
            assert r.exit.country == "de"
            r = await drv.get(f"{base}/ip", target={"country": "us", "exit_class": "mobile_4g"})
            assert (r.json()["country"], r.json()["exit_class"]) == ("us", "mobile_4g")
            r = await drv.get(f"{base}/ip", target={"country": "us", "asn": asn[2:]})
            assert (r.json()["asn"], r.json()["exit_class"]) == (asn, asn_class)
        # The default target (the manager's: any exit) still goes through the gateway.
        r = await drv.get(f"{sb.site_url}/ip")
        assert r.json()["country"] is not None


async def test_sticky_keeps_one_exit_and_rotating_changes_it(stack: Driver) -> None:
    sb = stack.sb
    async with stack.opened() as drv:
        for base in bases(sb):
            sticky = {
                (await drv.get(f"{base}/ip", target={"country": "us"}, session="cart42")).json()[
                    "ip"
                ]
                for _ in range(4)
            }
            assert len(sticky) == 1, base
        # Rotating over plain HTTP: the gateway picks a new exit per request, even on one
        # keep-alive connection.
        rotating = {
            (await drv.get(f"{sb.site_url}/ip", target={"country": "us"})).json()["ip"]
            for _ in range(8)
        }
        assert len(rotating) >= 3
        # A sticky target given as a Target(session=...) works the same.
        ids = {
            (await drv.get(f"{sb.site_url}/ip", target={"country": "gb", "session": "s1"})).json()[
                "ip"
            ]
            for _ in range(3)
        }
        assert len(ids) == 1


# ---------------------------------------------------------------------------- bans and failover


async def test_ban_moves_to_a_new_exit_then_succeeds(stack: Driver) -> None:
    sb = stack.sb
    await sb.acontrol("site", budget=3, ban_window=600, ban_seconds=600)
    async with stack.opened() as drv:
        first = [
            (await drv.get(f"{sb.site_url}/ip", session="shop")).json()["ip"] for _ in range(3)
        ]
        assert len(set(first)) == 1
        r = await drv.get(f"{sb.site_url}/ip", session="shop")  # 429 on that exit: banned
        assert r.status == 200 and r.json()["ip"] != first[0]
        assert drv.manager is not None and drv.manager.stats()["bans"] == 1
        # HTTPS, rotating: a kept-alive tunnel keeps its exit, so a ban must drop the tunnel;
        # otherwise the retry would meet the same banned exit again.
        for _ in range(8):
            r = await drv.get(f"{sb.site_https_url}/ip", target={"country": "us"})
            assert r.status == 200
        assert drv.manager.stats()["bans"] >= 2


async def test_region_down_fails_over_then_recovers(stack: Driver) -> None:
    sb = stack.sb
    europe = {c for c, x in sb.world.countries.items() if x.continent == "Europe"}
    async with stack.opened(breaker_base_backoff=0.2, breaker_max_backoff=0.4) as drv:
        assert drv.manager is not None
        await sb.acontrol("country", code="de", pool_health="down")
        for base in bases(sb):
            r = await drv.get(f"{base}/ip", target={"country": "de"})
            assert r.status == 200
            country = r.json()["country"]
            assert country != "de" and country in europe, base
        assert drv.manager.stats()["failovers"] >= 1
        await sb.acontrol("country", code="de", pool_health="healthy")
        for base in bases(sb):
            url = f"{base}/ip"

            async def de_is_back() -> bool:
                r = await drv.get(url, target={"country": "de"})
                return bool(r.json()["country"] == "de")

            await aeventually(de_is_back, interval=0.1, message=f"{base}: de never came back")


async def test_budget_spent_raises_the_manager_error(stack: Driver) -> None:
    sb = stack.sb
    await sb.acontrol("site", budget=0, ban_window=600, ban_seconds=600)  # every exit banned
    async with stack.opened(max_attempts=3) as drv:
        for base in bases(sb):
            with pytest.raises(AttemptsExhaustedError) as info:
                await drv.get(f"{base}/ip", target={"country": "us"})
            assert len(info.value.tried) == 3
            assert all("ban" in line for line in info.value.tried)


# ---------------------------------------------------------------------------- credentials


async def test_407_refreshes_and_resends_once(stack: Driver) -> None:
    sb = stack.sb
    async with stack.opened() as drv:
        await drv.get(f"{sb.site_https_url}/ip", target={"country": "us"})  # a tunnel, kept
        await sb.acontrol("grace", seconds=0)
        await sb.acontrol("rotate")
        before = await counters(sb)
        r = await drv.get(f"{sb.site_url}/ip", target={"country": "us"})
        assert r.status == 200
        # A new tunnel (a new username): its CONNECT meets the 407 now that the grace is over.
        r = await drv.get(f"{sb.site_https_url}/ip", target={"country": "fr"})
        assert r.json()["country"] == "fr"
        after = await counters(sb)
        calls = "api.requests:GET /v1/credentials"
        assert after[calls] - before.get(calls, 0) == 1  # one refresh served both
        assert after["gateway.errors:auth_failed"] - before.get(
            "gateway.errors:auth_failed", 0
        ) in (
            1,
            2,
        )


async def test_rotation_under_concurrent_load_fails_nothing(stack: Driver) -> None:
    sb = stack.sb
    await sb.acontrol("grace", seconds=0.3)
    async with stack.opened() as drv:
        manager = drv.manager
        assert manager is not None
        failures: list[BaseException | int] = []
        stop = asyncio.Event()
        done = [0]

        async def worker(i: int) -> None:
            n = 0
            while not stop.is_set() and n < 200:
                base = sb.site_https_url if (i + n) % 3 == 0 else sb.site_url
                country = ("us", "de", "fr", "gb")[(i + n) % 4]
                try:
                    r = await drv.get(f"{base}/ip", target={"country": country})
                    if r.status != 200:
                        failures.append(r.status)
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    failures.append(exc)
                n += 1
                done[0] += 1

        workers = [asyncio.create_task(worker(i)) for i in range(6)]
        await aeventually(lambda: done[0] >= 30)
        await sb.acontrol("rotate")
        # The grace ends in world time, not after however long a loaded machine takes.
        await sb.acontrol("clock", advance=1)
        rotated_at = done[0]
        await aeventually(
            lambda: manager.stats().get("rotations") == 1 and done[0] >= rotated_at + 30,
            message=lambda: f"rotations {manager.stats().get('rotations')}, {done[0]} requests",
        )
        stop.set()
        await asyncio.gather(*workers)
        assert failures == []
        seen = await counters(sb)
        assert seen.get("gateway.errors:auth_failed", 0) >= 1  # the old password was refused
        assert manager.stats()["rotations"] == 1


# ---------------------------------------------------------------------------- secrets


async def test_no_credential_reaches_the_target(stack: Driver) -> None:
    sb = stack.sb
    http, https = sb.site_url, sb.site_https_url
    other_http = http.replace("127.0.0.1", "localhost")
    other_https = https.replace("127.0.0.1", "localhost")

    def via(start: str, to: str) -> str:
        return f"{start}/redirect?to={quote(to, safe='')}"

    urls = [
        f"{http}/headers",
        f"{https}/headers",
        via(http, f"{http}/headers"),  # same host
        via(http, f"{other_http}/headers"),  # other host
        via(http, f"{https}/headers"),  # HTTP -> HTTPS
        via(https, f"{http}/headers"),  # HTTPS -> HTTP
        via(https, f"{other_https}/headers"),  # HTTPS -> HTTPS, other host
        via(https, f"{https}/headers"),  # HTTPS -> HTTPS, same host
    ]
    async with stack.opened() as drv:
        assert drv.manager is not None
        creds = drv.manager.credentials
        assert creds is not None
        password = creds.password.reveal()
        for url in urls:
            r = await drv.get(url, target={"country": "us"})
            assert r.status == 200, url
            headers = r.json()["headers"]
            assert not [k for k in headers if k.lower().startswith("proxy-")], (url, headers)
            assert not [v for v in headers.values() if password in v or creds.username in v]


# ---------------------------------------------------------------------------- before sending


async def test_bad_targets_raise_before_anything_is_sent(stack: Driver) -> None:
    sb = stack.sb
    async with stack.opened() as drv:
        before = await counters(sb)
        for bad in (
            {"country": "zz"},  # not in the pool
            {"country": "US"},  # syntax: lower case
            {"city": "berlin"},  # a city needs a country
            {"country": "cl", "exit_class": "mobile_5g"},  # a class the country lacks
            {"planet": "mars"},  # not a key
            "de",  # not a target at all
        ):
            for base in bases(sb):
                with pytest.raises(TargetError):
                    await drv.get(f"{base}/ip", target=bad)
        after = await counters(sb)
        for name in ("gateway.connections", "gateway.requests", "gateway.tunnels", "site.requests"):
            assert after.get(name, 0) == before.get(name, 0), name


# ---------------------------------------------------------------------------- bodies


async def test_a_body_is_resent_after_a_ban_and_a_stream_is_refused(stack: Driver) -> None:
    sb = stack.sb
    await sb.acontrol("site", budget=1, ban_window=600, ban_seconds=600)
    payload = b"proxaro" * 3000
    async with stack.opened() as drv:
        assert drv.manager is not None
        r = await drv.post(f"{sb.site_url}/echo", payload, session="cart")
        assert r.json()["bytes"] == len(payload)
        r = await drv.post(f"{sb.site_url}/echo", payload, session="cart")  # banned, resent
        assert r.status == 200 and r.json()["bytes"] == len(payload)
        assert drv.manager.stats()["bans"] == 1
        r = await drv.post(f"{sb.site_url}/echo", STREAM, session="other")
        assert r.json()["bytes"] == len(STREAM_BYTES)
        # A one-shot stream meets a 407 (the gateway refuses it before the site sees it): it
        # cannot be sent again, and says so instead of sending an empty body.
        await sb.acontrol("grace", seconds=0)
        await sb.acontrol("rotate")
        with pytest.raises(RequestNotReplayableError) as info:
            await drv.post(f"{sb.site_url}/echo", STREAM, session="third")
        # The gateway answers 407 and closes; an async client may still be writing the body
        # and see the connection drop instead.  Either way, nothing is sent again.
        assert info.value.kind in ("stale_credentials", "connection_error")
        r = await drv.post(f"{sb.site_url}/echo", payload, session="fourth")  # bytes: resent
        assert r.json()["bytes"] == len(payload)


# ---------------------------------------------------------------------------- connections


async def test_connections_stay_within_the_concurrency(stack: Driver) -> None:
    sb = stack.sb
    concurrency, n = 8, 160
    countries = ["us", "de", "fr", "gb", "jp", "ca", "nl", "br"]
    async with stack.opened() as drv:
        await sb.acontrol("reset_counters")
        calls = [
            (
                lambda i=i: drv.get(
                    f"{sb.site_url}/robots.txt",
                    target={"country": countries[i % len(countries)], "session": f"n{i}"},
                )
            )
            for i in range(n)
        ]
        replies = await run_many(calls, concurrency)
        assert all(isinstance(r, Reply) and r.status == 200 for r in replies)
        seen = await counters(sb)
        assert seen["gateway.requests"] >= n
        assert seen["gateway.connections"] <= concurrency, seen


async def test_an_is_ban_hook_sees_status_headers_and_body(stack: Driver) -> None:
    sb = stack.sb
    seen: list[tuple[int, bool]] = []

    def is_ban(status: int, headers: Any, body: Any) -> bool:
        # A "ban" only the body tells: the site's /status/299 page says "status 299".
        seen.append((status, headers is not None))
        return body is not None and b"status 299" in bytes(body)

    async with stack.opened(is_ban=is_ban, max_attempts=2) as drv:
        for base in bases(sb):
            r = await drv.get(f"{base}/status/200")
            assert r.status == 200 and r.body == b"status 200\n"
            with pytest.raises(AttemptsExhaustedError):
                await drv.get(f"{base}/status/299")
    assert (299, True) in seen
