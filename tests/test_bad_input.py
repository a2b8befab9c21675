"""Everything a user can get wrong, in one table: a clear error naming the problem, raised before
anything is sent.

Each row makes one mistake through the public surface (the REST clients, the gateway manager,
``Target``, the client-stack integrations, the webhook receiver, the Scrapy settings) and names
the exception class, the ``param`` it must carry and words its message must contain: the
parameter's own name (or the setting's) among them.  Around every row the counters of both
sandboxes (a Growth account, and a Starter one for ASN targeting) must not move: nothing
reached the API, the gateway or the site.  A bad key never appears in its own error message.

The last rows are the API's mistakes rather than the user's: malformed JSON, a body of the
wrong shape, and non-JSON error pages (an HTML 500, a load balancer's 502 and 429), served by a
tiny loopback aiohttp app; each must end in one clear :class:`~proxaro_scrape.APIError` that
says what came back, after exactly the requests expected (no retry here: ``max_retries=0``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from scrapy.utils.test import get_crawler

from proxaro_scrape import (
    APIError,
    AsyncProxaro,
    ConfigurationError,
    GatewayManager,
    Proxaro,
    ProxaroError,
    RateLimitError,
    Target,
    TargetError,
    WebhookReceiver,
)
from proxaro_scrape.integrations.aiohttp import ProxaroMiddleware
from proxaro_scrape.integrations.httpx import ProxaroTransport
from proxaro_scrape.integrations.requests import ProxaroSession
from proxaro_scrape.integrations.scrapy import ProxaroDownloaderMiddleware
from proxaro_scrape.sandbox import Sandbox
from tests.conftest import SandboxFactory

pytestmark = pytest.mark.timeout(90)

HEX = "0123456789abcdef" * 2
GOOD_KEY = "proxaro_test_" + HEX


@dataclass
class World:
    """What the rows work with: two started managers and the addresses."""

    sb: Sandbox
    starter: Sandbox
    mgr: GatewayManager
    starter_mgr: GatewayManager
    bad_api: str
    #: Paths the bad API was asked for.
    seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.sb.site_url}/ip"


@dataclass(frozen=True)
class Row:
    """One mistake: ``act(world)`` must raise ``error`` with ``param``, its message holding
    ``words`` (all of them, case-insensitive); ``api_requests`` is how many requests the tiny
    API app must see (0 for a user's mistake)."""

    id: str
    act: Callable[[World], Any]
    error: type[BaseException]
    param: str | None
    words: tuple[str, ...]
    api_requests: int = 0
    secret: str | None = None  # must not appear in the message


def row(
    id: str,
    act: Callable[[World], Any],
    error: type[BaseException],
    param: str | None,
    *words: str,
    api_requests: int = 0,
    secret: str | None = None,
) -> Row:
    return Row(id, act, error, param, words, api_requests, secret)


def _crawler_mw(**settings: Any) -> Any:
    """The middleware's verdict on the settings: ``from_crawler`` keeps a wrong setting as
    ``config_error``, which the spider's opening reports (closing it with proxaro_config)."""
    crawler = get_crawler(settings_dict={"PROXARO_API_KEY": GOOD_KEY, **settings})
    mw = ProxaroDownloaderMiddleware.from_crawler(crawler)
    if mw.config_error is not None:
        raise mw.config_error
    return mw


def _httpx_get(w: World, target: Any) -> Any:
    with httpx.Client(transport=ProxaroTransport(w.mgr)) as client:
        return client.get(w.url, extensions={"proxaro": target})


def _requests_get(w: World, target: Any) -> Any:
    with ProxaroSession(w.mgr) as session:
        return session.get(w.url, proxaro=target)


def _bad_api_get(path: str, what: str = "credentials") -> Callable[[World], Any]:
    def act(w: World) -> Any:
        with Proxaro(GOOD_KEY, f"{w.bad_api}/{path}", max_retries=0) as client:
            return client.countries.list() if what == "countries" else client.credentials.get()

    return act


def _manager_start_on(path: str) -> Callable[[World], Any]:
    def act(w: World) -> Any:
        client = Proxaro(GOOD_KEY, f"{w.bad_api}/{path}", max_retries=0)
        try:
            GatewayManager(client=client).start()
        finally:
            client.close()

    return act


async def _async_allowlist_add(w: World, cidr: str) -> Any:
    async with AsyncProxaro(w.sb.api_key, w.sb.api_url) as client:
        return await client.allowlist.add(cidr)


def _client(w: World) -> Proxaro:
    return Proxaro(w.sb.api_key, w.sb.api_url)


def _receiver_on_empty(w: World) -> Any:
    return WebhookReceiver("whsec_test_" + HEX).on("", lambda event: None)


ROWS: list[Row] = [
    # ------------------------------------------------------------------ API keys
    row("key_empty", lambda w: Proxaro(api_key=""), ConfigurationError, "api_key",
        "api_key", "empty"),
    row("key_wrong_prefix", lambda w: Proxaro("sk_live_" + HEX), ConfigurationError, "api_key",
        "api_key", "proxaro_live_ or proxaro_test_", secret="sk_live_" + HEX),
    row("key_short", lambda w: Proxaro("proxaro_test_abc123"), ConfigurationError, "api_key",
        "api_key", "expected 32", secret="proxaro_test_abc123"),
    row("key_whitespace", lambda w: AsyncProxaro(f" {GOOD_KEY}\n"), ConfigurationError,
        "api_key", "api_key", "whitespace", secret=GOOD_KEY),
    row("key_not_hex", lambda w: Proxaro("proxaro_live_" + "Z" * 32), ConfigurationError,
        "api_key", "api_key", "hex", secret="proxaro_live_" + "Z" * 32),
    row("key_manager", lambda w: GatewayManager("proxaro_test_0", w.sb.api_url).start(),
        ConfigurationError, "api_key", "api_key", secret="proxaro_test_0"),
    row("key_env", lambda w: Proxaro(), ConfigurationError, "api_key", "PROXARO_API_KEY",
        secret="proxaro_test_from_env"),
    # ------------------------------------------------------------------ API base URLs
    row("base_url_port_past_65535", lambda w: Proxaro(GOOD_KEY, w.sb.api_url + "0" * 6),
        ConfigurationError, "base_url", "base_url", "1 to 65535"),
    row("base_url_password", lambda w: Proxaro(GOOD_KEY, "https://u:pw-in-url@127.0.0.1"),
        ConfigurationError, "base_url", "base_url", "user or password", secret="pw-in-url"),
    row("base_url_http_off_loopback", lambda w: AsyncProxaro(GOOD_KEY, "http://198.51.100.7"),
        ConfigurationError, "base_url", "base_url", "allow_insecure_http"),
    row("base_url_manager", lambda w: GatewayManager(GOOD_KEY, "http://127.0.0.1:0").start(),
        ConfigurationError, "base_url", "base_url", "port"),
    row("timeout_nan", lambda w: Proxaro(GOOD_KEY, timeout=float("nan")), ConfigurationError,
        "timeout", "timeout", "finite"),
    # ------------------------------------------------------------------ targets
    row("country_unknown", lambda w: w.mgr.request(w.url, {"country": "zz"}), TargetError,
        "country", "country", "'zz'", "not in the proxaro pool"),
    row("country_upper_case", lambda w: Target(country="US"), TargetError, "country",
        "country"),
    row("city_without_country", lambda w: Target(city="berlin"), TargetError, "city", "city",
        "country"),
    row("asn_with_AS_prefix", lambda w: Target(country="us", asn="AS7922"), TargetError, "asn",
        "asn", "'7922'"),
    row("asn_on_starter", lambda w: w.starter_mgr.request(w.url, {"country": "us", "asn": "7922"}),
        TargetError, "asn", "asn", "growth plan"),
    row("exit_class_the_country_lacks",
        lambda w: w.mgr.request(w.url, {"country": "cl", "exit_class": "mobile_5g"}),
        TargetError, "exit_class", "exit_class", "mobile_5g", "residential"),
    row("exit_class_unknown", lambda w: Target(exit_class="wifi"), TargetError, "exit_class",
        "exit class", "wifi"),
    row("session_with_dash", lambda w: Target(session="cart-42"), TargetError, "session",
        "session", "cart-42"),
    row("session_too_long", lambda w: Target(session="s" * 33), TargetError, "session",
        "session", "32"),
    row("sesstime_0", lambda w: Target(session="s1", session_ttl=0), TargetError, "session_ttl",
        "session_ttl", "1440"),
    row("sesstime_1441", lambda w: Target(session="s1", session_ttl=1441), TargetError,
        "session_ttl", "session_ttl", "1441"),
    row("target_unknown_key", lambda w: w.mgr.request(w.url, {"planet": "mars"}), TargetError,
        "planet", "planet", "unknown target key"),
    row("target_httpx", lambda w: _httpx_get(w, {"country": "zz"}), TargetError, "country",
        "country", "'zz'"),
    row("target_requests", lambda w: _requests_get(w, {"session": "a-b"}), TargetError,
        "session", "session"),
    row("target_aiohttp", lambda w: ProxaroMiddleware(w.mgr).using({"country": "usa"}),
        TargetError, "country", "country"),
    row("target_wrong_type", lambda w: ProxaroMiddleware(w.mgr).using("de"), TargetError,
        "target", "target", "str"),
    # ------------------------------------------------------------------ manager options
    row("sticky", lambda w: GatewayManager(GOOD_KEY, sticky="sometimes"), ConfigurationError,
        "sticky", "sticky", "sometimes"),
    row("max_attempts", lambda w: GatewayManager(GOOD_KEY, max_attempts=0), ConfigurationError,
        "max_attempts", "max_attempts"),
    row("poll_interval", lambda w: GatewayManager(GOOD_KEY, credentials_poll_interval=0),
        ConfigurationError, "credentials_poll_interval", "credentials_poll_interval"),
    row("session_ttl", lambda w: GatewayManager(GOOD_KEY, session_ttl=1441), ConfigurationError,
        "session_ttl", "session_ttl", "1441"),
    row("usage_cap_action", lambda w: GatewayManager(GOOD_KEY, usage_cap_action="halt"),
        ConfigurationError, "usage_cap_action", "usage_cap_action", "halt"),
    # ------------------------------------------------------------------ CIDRs and labels
    row("cidr_too_wide", lambda w: _client(w).allowlist.add("10.0.0.0/8"), ConfigurationError,
        "cidr", "cidr", "/24"),
    row("cidr_not_an_address", lambda w: _client(w).allowlist.add("not-an-ip"),
        ConfigurationError, "cidr", "cidr", "not-an-ip"),
    row("cidr_whitespace", lambda w: _client(w).allowlist.add(" 198.51.100.42"),
        ConfigurationError, "cidr", "cidr"),
    row("cidr_ipv6_too_wide", lambda w: _async_allowlist_add(w, "2001:db8::/32"),
        ConfigurationError, "cidr", "cidr", "/48"),
    row("label_too_long", lambda w: _client(w).allowlist.add("198.51.100.42", label="x" * 81),
        ConfigurationError, "label", "label", "80"),
    row("label_not_text", lambda w: _client(w).allowlist.add("198.51.100.42", label=42),  # type: ignore[arg-type]
        ConfigurationError, "label", "label", "str"),
    # ------------------------------------------------------------------ webhooks
    row("webhook_http", lambda w: _client(w).webhooks.create("http://hooks.example/p",
        ["order.paid"]), ConfigurationError, "url", "url", "https"),
    row("webhook_no_host", lambda w: _client(w).webhooks.create("https:///p", ["order.paid"]),
        ConfigurationError, "url", "url", "host"),
    row("events_empty", lambda w: _client(w).webhooks.create("https://hooks.example/p", []),
        ConfigurationError, "events", "events", "empty"),
    row("events_unknown", lambda w: _client(w).webhooks.create("https://hooks.example/p",
        ["order.shipped"]), ConfigurationError, "events", "event", "order.shipped"),
    row("events_a_string", lambda w: _client(w).webhooks.create("https://hooks.example/p",
        "order.paid"), ConfigurationError, "events", "events", "list"),  # type: ignore[arg-type]
    row("webhook_secret_empty", lambda w: WebhookReceiver(""), ConfigurationError, "secret",
        "secret"),
    row("webhook_event_name_empty", _receiver_on_empty, ConfigurationError, "event_type",
        "event_type"),
    # ------------------------------------------------------------------ Scrapy settings
    row("scrapy_max_attempts", lambda w: _crawler_mw(PROXARO_MAX_ATTEMPTS="many"),
        ConfigurationError, "PROXARO_MAX_ATTEMPTS", "PROXARO_MAX_ATTEMPTS"),
    row("scrapy_target", lambda w: _crawler_mw(PROXARO_TARGET=["us"]), ConfigurationError,
        "PROXARO_TARGET", "PROXARO_TARGET"),
    row("scrapy_sticky", lambda w: _crawler_mw(PROXARO_STICKY=1), ConfigurationError,
        "PROXARO_STICKY", "PROXARO_STICKY"),
    row("scrapy_ban_codes", lambda w: _crawler_mw(PROXARO_BAN_STATUS_CODES=403),
        ConfigurationError, "PROXARO_BAN_STATUS_CODES", "PROXARO_BAN_STATUS_CODES"),
    row("scrapy_poll", lambda w: _crawler_mw(PROXARO_CREDENTIALS_POLL_INTERVAL="soon"),
        ConfigurationError, "PROXARO_CREDENTIALS_POLL_INTERVAL",
        "PROXARO_CREDENTIALS_POLL_INTERVAL"),
    row("scrapy_enabled", lambda w: _crawler_mw(PROXARO_ENABLED="maybe"), ConfigurationError,
        "PROXARO_ENABLED", "PROXARO_ENABLED"),
    row("scrapy_key", lambda w: _crawler_mw(PROXARO_API_KEY="proxaro_test_xyz"),
        ConfigurationError, "PROXARO_API_KEY", "PROXARO_API_KEY", secret="proxaro_test_xyz"),
    # ------------------------------------------------------------------ the API's mistakes
    row("api_not_json", _bad_api_get("not-json"), APIError, None, "not json", "/v1/credentials",
        api_requests=1),
    row("api_credentials_unusable", _manager_start_on("wrong-shape"), APIError, None,
        "could not start the gateway manager", "credentials", "port", "password",
        api_requests=1),
    row("api_countries_wrong_shape", _bad_api_get("wrong-shape", "countries"), APIError, None,
        "unexpected shape", "/v1/countries", api_requests=1),
    row("api_deeply_nested", _bad_api_get("nested"), APIError, None, "not json",
        api_requests=1),
    row("api_html_500", _bad_api_get("html-500"), APIError, None, "not the error envelope",
        "text/html", "500", api_requests=1),
    row("api_proxy_502", _bad_api_get("proxy-502"), APIError, None, "not the error envelope",
        "502", api_requests=1),
    row("api_html_429", _bad_api_get("html-429"), RateLimitError, None, "429", api_requests=1),
    row("api_manager_start_html", _manager_start_on("html-500"), APIError, None,
        "could not start the gateway manager", "credentials", "text/html", api_requests=1),
]  # fmt: skip


# ---------------------------------------------------------------------------- the tiny bad API


def bad_api_app(seen: list[str]) -> web.Application:
    """An "API" that answers every mistake an API (or what stands in front of it) can make."""

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        kind = request.match_info["kind"]
        if kind == "not-json":
            return web.Response(text="OK, here are your credentials", content_type="text/plain")
        if kind == "wrong-shape":
            # Credentials without a port or a password; a "list" without data.
            return web.json_response({"object": "credentials", "gateway": "gw.example"})
        if kind == "nested":
            return web.Response(text="[" * 100_000, content_type="application/json")
        if kind == "html-500":
            return web.Response(
                status=500, text="<html><body><h1>Oops</h1></body></html>", content_type="text/html"
            )
        if kind == "proxy-502":
            return web.Response(status=502, text="Bad Gateway", content_type="text/plain")
        if kind == "html-429":
            return web.Response(status=429, text="<html>slow down</html>", content_type="text/html")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{kind}/{tail:.*}", answer)
    return app


@pytest.fixture
def world(sandbox: Sandbox, make_sandbox: SandboxFactory) -> Iterator[World]:
    seen: list[str] = []
    starter = make_sandbox(seed=1, plan="starter", components={"api", "gateway"})
    runner = web.AppRunner(bad_api_app(seen), access_log=None)
    # The bad API runs on the starter sandbox's loop (a running loop in its own thread).
    port = _serve(starter, runner)
    quiet = {"pool_ttl": None, "usage_poll_interval": None, "credentials_poll_interval": 600}
    mgr = GatewayManager(sandbox.api_key, sandbox.api_url, **quiet).start()
    starter_mgr = GatewayManager(starter.api_key, starter.api_url, **quiet).start()
    try:
        # The starter manager learns its plan's ASN scope the documented way, before the
        # rows (one listing, refused): its ASN row is then refused from what it knows, with
        # nothing sent.  No other background call runs: `quiet` turns the polls off and
        # start() prefetches nothing.
        with contextlib.suppress(TargetError):
            starter_mgr.check_target({"country": "us", "asn": "7922"})
        yield World(sandbox, starter, mgr, starter_mgr, f"http://127.0.0.1:{port}", seen)
    finally:
        mgr.close()
        starter_mgr.close()
        _cleanup(starter, runner)


def _serve(sb: Sandbox, runner: web.AppRunner) -> int:
    assert sb._loop is not None

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    return asyncio.run_coroutine_threadsafe(start(), sb._loop).result(timeout=10)


def _cleanup(sb: Sandbox, runner: web.AppRunner) -> None:
    assert sb._loop is not None
    asyncio.run_coroutine_threadsafe(runner.cleanup(), sb._loop).result(timeout=10)


def _counters(sb: Sandbox) -> dict[str, int]:
    # Read on the sandbox's own loop: a copy never races a request being counted.
    return sb.call(lambda: dict(sb.world.counters))


def test_every_mistake_is_named_before_anything_is_sent(
    world: World, monkeypatch: pytest.MonkeyPatch, record_property: Any
) -> None:
    monkeypatch.setenv("PROXARO_API_KEY", "proxaro_test_from_env")
    problems: list[str] = []
    shown: dict[str, str] = {}
    for r in ROWS:
        before = (_counters(world.sb), _counters(world.starter), len(world.seen))
        try:
            result = r.act(world)
            if inspect.iscoroutine(result):
                # On a loop of its own: the main thread's loop belongs to pytest-twisted.
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, result).result(timeout=30)
        except BaseException as exc:  # noqa: BLE001 - every row is checked below
            error: BaseException | None = exc
        else:
            error = None
        after = (_counters(world.sb), _counters(world.starter), len(world.seen))
        if error is None:
            problems.append(f"{r.id}: nothing was raised")
            continue
        text = str(error)
        shown[r.id] = f"{type(error).__name__}: {text}"
        if not isinstance(error, r.error):
            problems.append(f"{r.id}: {type(error).__name__} ({text}), not {r.error.__name__}")
        if not isinstance(error, ProxaroError):
            problems.append(f"{r.id}: {type(error).__name__} is not a ProxaroError")
        if r.param is not None and getattr(error, "param", None) != r.param:
            problems.append(f"{r.id}: param={getattr(error, 'param', None)!r}, not {r.param!r}")
        missing = [w for w in r.words if w.lower() not in text.lower()]
        if missing:
            problems.append(f"{r.id}: the message lacks {missing}: {text!r}")
        if r.secret is not None and r.secret in text + repr(error):
            problems.append(f"{r.id}: the message shows the key")
        if after[:2] != before[:2]:
            moved = {
                k: v - before[0].get(k, 0) for k, v in after[0].items() if v != before[0].get(k, 0)
            }
            problems.append(f"{r.id}: the sandbox counters moved: {moved}")
        if after[2] - before[2] != r.api_requests:
            problems.append(f"{r.id}: {after[2] - before[2]} requests to the bad API")
    for name, text in shown.items():
        print(f"{name:32} {text}")
    record_property("bad_input", "\n".join(f"{k}: {v}" for k, v in shown.items()))
    assert not problems, "\n".join(problems)
    assert len(shown) == len(ROWS)
