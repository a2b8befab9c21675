"""What is particular to one client stack: pools and their bounds, direct sends, spellings of
per-request targeting, secrets in reprs and errors, guarded imports, and the aiohttp
mechanism the middleware relies on.  The behaviours every stack shares are in
``test_integrations_e2e.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import sys
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxaro_scrape import AttemptsExhaustedError, GatewayManager, TargetError
from proxaro_scrape.integrations import aiohttp as px_aiohttp
from proxaro_scrape.integrations import httpx as px_httpx
from proxaro_scrape.integrations import requests as px_requests
from proxaro_scrape.sandbox import Sandbox

pytestmark = pytest.mark.timeout(60)


def counters(sb: Sandbox) -> dict[str, int]:
    return dict(httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10).json())


def manager(sb: Sandbox, **kw: Any) -> GatewayManager:
    return GatewayManager(sb.api_key, sb.api_url, **kw)


# ---------------------------------------------------------------------------- aiohttp mechanism


async def test_an_aiohttp_middleware_can_set_the_proxy_of_its_request(sandbox: Sandbox) -> None:
    """The fact the middleware design rests on, checked on plain aiohttp: no Proxaro code."""
    proxy = URL(sandbox.proxy_url())

    auth = aiohttp.encode_basic_auth(proxy.user or "", proxy.password or "")

    async def set_proxy(req: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        if req.is_ssl():  # the CONNECT carries the credentials
            req.update_proxy(proxy.with_user(None), None, {"Proxy-Authorization": auth})
        else:  # the request itself does, in absolute form
            req.update_proxy(proxy.with_user(None), None, None)
            req.headers["Proxy-Authorization"] = auth
        return await handler(req)

    ctx = ssl.create_default_context(cafile=sandbox.ca_cert)
    async with aiohttp.ClientSession(
        middlewares=(set_proxy,), connector=aiohttp.TCPConnector(ssl=ctx)
    ) as session:
        for base in (sandbox.site_url, sandbox.site_https_url):
            async with session.get(f"{base}/ip") as r:
                seen = await r.json()
            assert seen["country"] is not None, base  # an exit, not 127.0.0.1 itself
    assert counters(sandbox)["gateway.tunnels"] == 1


# ---------------------------------------------------------------------------- httpx


class _Recording(httpx.HTTPTransport):
    closed: list[_Recording] = []

    def close(self) -> None:
        _Recording.closed.append(self)
        super().close()


class _RecordingTransport(px_httpx.ProxaroTransport):
    def _transport_class(self) -> Any:
        return _Recording


def test_httpx_tunnel_pools_are_bounded_and_closed_when_idle(sandbox: Sandbox) -> None:
    _Recording.closed.clear()
    ctx = ssl.create_default_context(cafile=sandbox.ca_cert)
    with manager(sandbox) as mgr:
        transport = _RecordingTransport(mgr, verify=ctx, tunnel_pools=2)
        with httpx.Client(transport=transport) as client:
            url = f"{sandbox.site_https_url}/bytes/200000"
            # A response still streaming when its pool is evicted is not cut short.
            with client.stream("GET", url, extensions={"proxaro_session": "s0"}) as streaming:
                for i in range(1, 5):
                    r = client.get(
                        f"{sandbox.site_https_url}/ip", extensions={"proxaro_session": f"s{i}"}
                    )
                    assert r.status_code == 200
                assert len(transport._tunnels) == 2
                assert len(_Recording.closed) == 2  # s1, s2: idle when evicted
                assert len(streaming.read()) == 200000
            assert len(_Recording.closed) == 3  # s0: closed once its response was
        assert len(_Recording.closed) >= 5
    transport.close()  # idempotent


def test_httpx_direct_mounts_and_streaming(sandbox: Sandbox) -> None:
    with manager(sandbox) as mgr:
        transport = px_httpx.ProxaroTransport(mgr)
        before = counters(sandbox)
        with httpx.Client(mounts={"http://": transport, "all://": transport}) as client:
            r = client.get(f"{sandbox.site_url}/ip", extensions={"proxaro": False})
            assert r.json()["ip"] == "127.0.0.1" and px_httpx.exit_of(r) is None
            assert counters(sandbox).get("gateway.requests", 0) == before.get("gateway.requests", 0)
            with client.stream("GET", f"{sandbox.site_url}/stream/50?size=65536") as r:
                # Classified from status and headers; the body is still on the wire.
                assert r.status_code == 200 and not r.is_stream_consumed
                assert px_httpx.exit_of(r) is not None
                assert sum(len(c) for c in r.iter_raw()) == 50 * 65536
        # The same transport mounted twice is closed twice: harmless.
        transport.close()
        with pytest.raises(RuntimeError):
            transport.handle_request(httpx.Request("GET", f"{sandbox.site_url}/ip"))


async def test_httpx_async_direct_and_default_target(sandbox: Sandbox) -> None:
    async with manager(sandbox) as mgr:
        transport = px_httpx.AsyncProxaroTransport(mgr, target={"country": "jp"})
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"{sandbox.site_url}/ip")
            assert r.json()["country"] == "jp"
            r = await client.get(f"{sandbox.site_url}/ip", extensions={"proxaro": False})
            assert r.json()["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("most", "keep", "connections", "kept"),
    [
        (100, 100, [25, 25, 25, 25], [25, 25, 25, 25]),
        (10, 5, [3, 3, 2, 2], [2, 1, 1, 1]),
        (2, 2, [1, 1], [1, 1]),
        (1, None, [1], [None]),
        (None, None, [None] * 4, [None] * 4),
    ],
    ids=["default", "uneven", "two", "one", "unbounded"],
)
def test_httpx_plain_pool_shards_split_the_limits_never_above_them(
    most: int | None, keep: int | None, connections: list[Any], kept: list[Any]
) -> None:
    shards = px_httpx._shard_limits(
        httpx.Limits(max_connections=most, max_keepalive_connections=keep, keepalive_expiry=9)
    )
    assert [x.max_connections for x in shards] == connections
    assert [x.max_keepalive_connections for x in shards] == kept
    assert {x.keepalive_expiry for x in shards} == {9}


async def test_httpx_plain_requests_spread_over_shards_within_the_flight(
    sandbox: Sandbox,
) -> None:
    """A new target per request, 16 in flight: every shard carries its share, and the gateway
    sees no more connections than there are requests in flight (least-loaded shards never
    hold more than their part of it).  A streamed answer holds its shard until closed."""
    flight, total = 16, 160
    async with manager(sandbox) as mgr:
        transport = px_httpx.AsyncProxaroTransport(mgr)
        async with httpx.AsyncClient(transport=transport) as client:
            url = f"{sandbox.site_url}/ip"
            await client.get(url)  # the pools exist
            before = counters(sandbox).get("gateway.connections", 0)
            gate = asyncio.Semaphore(flight)

            async def one(i: int) -> int:
                async with gate:
                    target = {"country": ("us", "de", "fr", "gb")[i % 4], "session": f"k{i}"}
                    r = await client.get(url, extensions={"proxaro": target})
                    return r.status_code

            codes = await asyncio.gather(*(one(i) for i in range(total)))
            opened = counters(sandbox).get("gateway.connections", 0) - before
            shards = transport._plain
            assert shards is not None
            assert codes == [200] * total
            assert opened <= flight
            assert shards.busy == [0, 0, 0, 0]
            used = [len(pool._pool.connections) for pool in shards.pools]
            assert all(used) and sum(used) <= flight + 1  # + the warm-up's
            async with client.stream("GET", f"{sandbox.site_url}/stream/3?size=1024") as r:
                assert sum(shards.busy) == 1  # held while the body is still to be read
                await r.aread()
            assert shards.busy == [0, 0, 0, 0]


# ---------------------------------------------------------------------------- requests


def test_requests_proxy_manager_cache_is_bounded(sandbox: Sandbox) -> None:
    with manager(sandbox) as mgr, px_requests.ProxaroSession(mgr, max_proxy_managers=2) as s:
        for i in range(5):
            r = s.get(
                f"{sandbox.site_https_url}/ip", proxaro_session=f"s{i}", verify=sandbox.ca_cert
            )
            assert r.status_code == 200
        assert len(s.proxaro_adapter.proxy_manager) == 2
        # Plain HTTP shares one manager (the gateway without credentials) for every target.
        for country in ("de", "fr", "jp"):
            assert s.get(f"{sandbox.site_url}/ip", proxaro={"country": country}).status_code == 200
        assert len(s.proxaro_adapter.proxy_manager) == 2


def test_requests_routing_context_with_a_plain_session(sandbox: Sandbox) -> None:
    with manager(sandbox) as mgr, requests.Session() as s:
        adapter = px_requests.ProxaroAdapter(mgr, target={"country": "fr"})
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        assert s.get(f"{sandbox.site_url}/ip").json()["country"] == "fr"
        with px_requests.routing({"country": "de"}, session_key="k"):
            ips = {s.get(f"{sandbox.site_url}/ip").json()["ip"] for _ in range(3)}
            assert len(ips) == 1
        with px_requests.routing(False):
            assert s.get(f"{sandbox.site_url}/ip").json()["ip"] == "127.0.0.1"
        with pytest.raises(TargetError):
            with px_requests.routing({"country": "DE"}):
                pass
        # The environment's proxies are not the gateway's business, nor do they leak into it.
        r = s.get(f"{sandbox.site_url}/ip", proxies={"http": "http://127.0.0.1:9"})
        assert r.json()["country"] == "fr"
        adapter.close()


# ---------------------------------------------------------------------------- secrets


def test_no_secret_in_reprs_or_errors(sandbox: Sandbox) -> None:
    sandbox.control("site", budget=0, ban_window=600, ban_seconds=600)
    with manager(sandbox, max_attempts=2) as mgr:
        creds = mgr.credentials
        assert creds is not None
        password = creds.password.reveal()
        transport = px_httpx.ProxaroTransport(mgr)
        session = px_requests.ProxaroSession(mgr)
        middleware = px_aiohttp.ProxaroMiddleware(mgr, target={"country": "us"})
        for obj in (
            transport,
            px_httpx.AsyncProxaroTransport(mgr),
            session.proxaro_adapter,
            middleware,
        ):
            assert password not in repr(obj)
        with httpx.Client(transport=transport) as client:
            with pytest.raises(AttemptsExhaustedError) as info:
                client.get(f"{sandbox.site_url}/ip")
            assert password not in str(info.value) and password not in repr(info.value)
        with pytest.raises(AttemptsExhaustedError) as info2:
            session.get(f"{sandbox.site_url}/ip")
        assert password not in str(info2.value)
        session.close()


def _gateway_open(sb: Sandbox) -> int:
    """Connections the sandbox gateway holds open (its own counters)."""
    c = sb.world.counters
    return c["gateway.connections"] - c["gateway.connections_closed"]


@pytest.mark.parametrize("bounded", [True, False])
async def test_aiohttp_idle_tunnels_are_bounded_per_username(
    sandbox: Sandbox, bounded: bool
) -> None:
    """Every new sticky key opens a tunnel of its own; ProxaroConnector keeps the idle tunnels
    of at most ``max_tunnel_keys`` usernames (aiohttp's own connector keeps them all until its
    keep-alive expiry: shown beside it)."""
    ctx = ssl.create_default_context(cafile=sandbox.ca_cert)
    connector = (
        px_aiohttp.ProxaroConnector(ssl=ctx, max_tunnel_keys=4)
        if bounded
        else aiohttp.TCPConnector(ssl=ctx)
    )
    async with manager(sandbox) as mgr:
        proxaro = px_aiohttp.ProxaroMiddleware(mgr)
        async with aiohttp.ClientSession(connector=connector, middlewares=(proxaro,)) as session:
            tunnels = sandbox.world.counters["gateway.tunnels"]
            for i in range(24):
                mw = proxaro.using(session_key=f"key{i}")
                async with session.get(f"{sandbox.site_https_url}/ip", middlewares=(mw,)) as r:
                    assert r.status == 200
                    if bounded:  # the CONNECT answer names the exit
                        exit = px_aiohttp.exit_of(r)
                        assert exit is not None and exit.ip == (await r.json())["ip"]
            assert sandbox.world.counters["gateway.tunnels"] - tunnels == 24
            idle = sum(len(v) for k, v in connector._conns.items() if k.is_ssl)
            if bounded:
                assert idle <= 4
                # The gateway sees the evicted tunnels close (on the loops' next turns).
                for _ in range(500):
                    if _gateway_open(sandbox) <= 4:
                        break
                    await asyncio.sleep(0.01)
                assert _gateway_open(sandbox) <= 4
            else:
                assert idle == 24 and _gateway_open(sandbox) == 24


def test_aiohttp_errors_are_scrubbed_of_the_connect_headers() -> None:
    headers = CIMultiDict({"Host": "shop:443", "Proxy-Authorization": "Basic c2VjcmV0"})
    info = aiohttp.RequestInfo(
        URL("https://shop/"), "CONNECT", CIMultiDictProxy(headers), URL("https://shop/")
    )
    exc = aiohttp.ClientHttpProxyError(info, (), status=407, message="no")
    assert "c2VjcmV0" in repr(exc)
    px_aiohttp._scrub(exc)
    assert "c2VjcmV0" not in repr(exc) and exc.request_info.headers["Host"] == "shop:443"


# ---------------------------------------------------------------------------- imports


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("httpx", "httpx", "httpx"),
        ("requests", "requests", "requests"),
        ("aiohttp", "aiohttp", "aiohttp"),
    ],
)
def test_a_missing_framework_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, framework: str, extra: str
) -> None:
    name = f"proxaro_scrape.integrations.{module}"
    monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, framework, None)  # import fails as if not installed
    with pytest.raises(ImportError) as info:
        importlib.import_module(name)
    assert f'pip install "proxaro-scrape[{extra}]"' in str(info.value)


def test_an_untrusted_target_certificate_fails_once(sandbox) -> None:
    # Every exit presents the same certificate: retrying through new sessions cannot help, so
    # the client's own TLS error is raised after one tunnel.
    from proxaro_scrape import GatewayManager
    from proxaro_scrape.integrations.httpx import ProxaroTransport

    before = sandbox.world.counters["gateway.tunnels"]
    with GatewayManager(sandbox.api_key, sandbox.api_url) as mgr:
        with httpx.Client(transport=ProxaroTransport(mgr)) as client:  # system CAs only
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                client.get(f"{sandbox.site_https_url}/ip")
        assert mgr.stats().get("outcomes/connection_error", 0) == 0
    assert sandbox.world.counters["gateway.tunnels"] - before == 1


async def test_aiohttp_drops_a_connection_back_in_the_pool_only_while_it_is_idle(
    sandbox: Sandbox,
) -> None:
    """A failed answer's connection is not to be reused; aiohttp may have handed it back to
    the pool already (a short body), and another request may have taken it since: it is closed
    only while idle, never under the request that holds it."""
    _close_if_idle = px_aiohttp._close_if_idle

    async with aiohttp.ClientSession() as session:
        connector = session.connector
        async with session.get(f"{sandbox.site_url}/ip") as r:
            await r.read()
        ((_, idle),) = connector._conns.items()  # type: ignore[union-attr]
        waiting = idle[0][0]
        assert _close_if_idle(connector, waiting) is True
        assert not waiting.is_connected() and not connector._conns  # type: ignore[union-attr]
        # A connection in use (a body still streaming in) is not in the pool: left alone.
        async with session.get(f"{sandbox.site_url}/stream/20?delay_ms=20") as busy:
            held = busy._protocol
            assert held is not None
            assert _close_if_idle(connector, held) is False
            assert held.is_connected()
            assert len(await busy.read()) > 0


async def test_aiohttp_reading_a_connection_that_closed_under_it_is_a_lost_connection() -> None:
    """aiohttp's own ``ClientResponse.start`` on a connection whose protocol is gone (the
    gateway closed while a streamed body was being written) raises AttributeError; the edge
    takes that, and only that, for a lost connection."""
    import contextlib
    import types

    _lost_connection = px_aiohttp._lost_connection
    response = types.SimpleNamespace(_timer=contextlib.nullcontext())
    closed = types.SimpleNamespace(protocol=None)
    with pytest.raises(AttributeError) as inside:
        await aiohttp.ClientResponse.start(response, closed)  # type: ignore[arg-type]
    assert _lost_connection(inside.value)
    with pytest.raises(AttributeError) as ours:
        closed.protocol.read()  # type: ignore[attr-defined]
    assert not _lost_connection(ours.value)
    assert not _lost_connection(aiohttp.ClientConnectionError("not an AttributeError"))
