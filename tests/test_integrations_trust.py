"""Who may be believed: a site's own ``X-Proxaro-*`` headers and its own 407, on every stack.

A loopback site served next to the sandbox sets the gateway's headers in its own answers: a
200 that claims ``bad_targeting``, a 502 that claims ``no_exit``, a 407 that asks for proxy
credentials.  Inside an HTTPS tunnel the gateway never sees those answers, so they are the
site's (``shared/gateway-protocol.md`` section 3): routing must not change, no breaker may
open, the credentials must not be fetched again, and the caller gets the site's answer.  Over
plain HTTP the gateway strips the site's ``X-Proxaro-*`` before adding its own, so the exit
reported is still the real one; a 407 without the gateway's ``X-Proxaro-Error`` is the site's.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from proxaro_scrape.sandbox import Sandbox
from tests._stack_drivers import DRIVERS, Driver

pytestmark = pytest.mark.timeout(90)

SPOOF = {
    "X-Proxaro-Exit-IP": "203.0.113.7",
    "X-Proxaro-Exit-Country": "zz",
    "X-Proxaro-Exit-ASN": "AS64496",
    "X-Proxaro-Exit-Class": "datacenter",
}
CREDENTIALS_CALLS = "api.requests:GET /v1/credentials"


class SpoofingSite:
    """A site whose own answers carry the gateway's headers; counts what reaches it."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.http = ""
        self.https = ""

    async def handle(self, request: web.Request) -> web.Response:
        what = request.match_info["what"]
        self.hits[what] += 1
        if what == "200":
            return web.Response(
                text="site page", headers={**SPOOF, "X-Proxaro-Error": "bad_targeting"}
            )
        if what == "502":
            return web.Response(
                status=502, text="site down", headers={**SPOOF, "X-Proxaro-Error": "no_exit"}
            )
        if what == "407":
            return web.Response(
                status=407,
                text="site wants a login",
                headers={
                    **SPOOF,
                    "X-Proxaro-Error": "auth_failed",
                    "Proxy-Authenticate": 'Basic realm="site"',
                },
            )
        if what == "407bare":
            return web.Response(
                status=407, text="site wants a login", headers={"Proxy-Authenticate": "Basic"}
            )
        raise web.HTTPNotFound()


@pytest.fixture
def site(sandbox: Sandbox) -> Iterator[SpoofingSite]:
    """The spoofing site on HTTP and HTTPS (sandbox CA), served by a loop of its own."""
    spoof = SpoofingSite()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="spoofing-site", daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/own/{what}", spoof.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        ctx = sandbox.server_ssl_context("127.0.0.1")
        for scheme, ssl_context in (("http", None), ("https", ctx)):
            tcp = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await tcp.start()
            server: Any = tcp._server
            port = server.sockets[0].getsockname()[1]
            setattr(spoof, scheme, f"{scheme}://127.0.0.1:{port}")
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield spoof
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(params=sorted(DRIVERS))
def stack(request: pytest.FixtureRequest, sandbox: Sandbox) -> Driver:
    return DRIVERS[request.param](sandbox)


def calls(sb: Sandbox) -> int:
    return sb.world.counters[CREDENTIALS_CALLS]


async def test_a_sites_own_gateway_headers_inside_a_tunnel_change_nothing(
    stack: Driver, site: SpoofingSite
) -> None:
    sb = stack.sb
    async with stack.opened(target={"country": "de"}) as drv:
        assert drv.manager is not None
        before = calls(sb)
        r = await drv.get(f"{site.https}/own/200")
        assert (r.status, r.body) == (200, b"site page")
        # The exit is the one the gateway named in the CONNECT answer, not the site's claim.
        assert (
            r.exit is not None
            and r.exit.country == "de"
            and r.exit.ip != SPOOF["X-Proxaro-Exit-IP"]
        )

        r = await drv.get(f"{site.https}/own/502")
        assert (r.status, r.body) == (502, b"site down")  # the site's answer, handed back once
        assert site.hits["502"] == 1
        stats = drv.manager.stats()
        assert drv.manager.breakers() == {}
        assert stats.get("outcomes/region_dead", 0) == stats.get("failovers", 0) == 0
        assert stats.get("outcomes/bad_targeting", 0) == 0

        # The next requests to the same target go through, still in Germany.
        r = await drv.get(f"{site.https}/own/200")
        assert r.status == 200 and r.exit is not None and r.exit.country == "de"
        r = await drv.get(f"{sb.site_https_url}/ip")
        assert r.status == 200 and r.json()["country"] == "de"
        assert calls(sb) == before


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_a_sites_own_407_is_the_sites_answer(
    stack: Driver, site: SpoofingSite, scheme: str
) -> None:
    sb = stack.sb
    base = site.https if scheme == "https" else site.http
    # Over plain HTTP the gateway removes the site's X-Proxaro-Error, so the bare page is the
    # same test; over HTTPS the site's own auth_failed claim must be ignored as well.
    page = "407" if scheme == "https" else "407bare"
    async with stack.opened(target={"country": "fr"}) as drv:
        assert drv.manager is not None
        before = calls(sb)
        version = drv.manager.credentials_version
        r = await drv.get(f"{base}/own/{page}")
        assert (r.status, r.body) == (407, b"site wants a login")
        assert site.hits[page] == 1  # sent once: no resend after a "refresh"
        assert calls(sb) == before  # no credentials call spent on the site's answer
        assert drv.manager.credentials_version == version
        assert drv.manager.stats().get("outcomes/stale_credentials", 0) == 0
        assert r.exit is not None and r.exit.country == "fr"


async def test_over_plain_http_the_exit_is_the_gateways_not_the_sites(
    stack: Driver, site: SpoofingSite
) -> None:
    async with stack.opened(target={"country": "jp"}) as drv:
        assert drv.manager is not None
        r = await drv.get(f"{site.http}/own/200")
        # The gateway stripped the site's X-Proxaro-* (its bad_targeting claim included).
        assert (r.status, r.body) == (200, b"site page")
        assert r.exit is not None and r.exit.country == "jp"
        assert r.exit.ip != SPOOF["X-Proxaro-Exit-IP"]
        r = await drv.get(f"{site.http}/own/502")
        assert r.status == 502 and drv.manager.breakers() == {}
