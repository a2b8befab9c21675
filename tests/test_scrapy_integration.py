"""The Scrapy integration, end to end: real crawls through the sandbox gateway to the demo shop.

Every crawl runs in-process with ``CrawlerRunner`` on the asyncio reactor (pytest-twisted,
``--reactor=asyncio``); the sandbox runs in its own thread, so a callback may turn a sandbox
control (a blocking call) in the middle of a crawl.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler, CrawlerRunner
from scrapy.exceptions import NotConfigured
from scrapy.utils.test import get_crawler

from proxaro_scrape import Proxaro, SourceNotAllowedError, Target
from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.integrations.scrapy import (
    MIDDLEWARE_PRIORITY,
    ProxaroAddon,
    ProxaroDownloaderMiddleware,
    ProxaroGaveUp,
)
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.site import PAGE_SIZE, catalogue

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scrapy_shop"


# ---------------------------------------------------------------------------- helpers


def settings_for(sb: Sandbox, **extra: Any) -> dict[str, Any]:
    """Fast crawl settings with the add-on, pointed at the sandbox."""
    return {
        "ADDONS": {ProxaroAddon: 0},
        "PROXARO_API_KEY": sb.api_key,
        "PROXARO_BASE_URL": sb.api_url,
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "MEMUSAGE_ENABLED": False,
        "CONCURRENT_REQUESTS": 32,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "LOG_LEVEL": "INFO",
        **extra,
    }


class Collect(scrapy.Spider):
    """Fetch ``requests`` (url, meta) and record what came back, or what failed."""

    name = "collect"

    def __init__(
        self,
        requests: list[tuple[str, dict[str, Any]]],
        on_response: Callable[[Collect, scrapy.http.Response], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.to_fetch = requests
        self.on_response = on_response
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, BaseException] = {}
        self.answers = 0

    async def start(self) -> Any:
        for url, meta in self.to_fetch:
            yield scrapy.Request(
                url, meta=dict(meta), callback=self.parse, errback=self.failed, dont_filter=True
            )

    def parse(self, response: scrapy.http.Response) -> None:
        self.answers += 1
        assert response.url not in self.results, f"{response.url} reached the callback twice"
        try:
            body: Any = json.loads(response.text)
        except ValueError:
            body = response.text
        self.results[response.url] = {
            "status": response.status,
            "body": body,
            "exit_ip": _h(response, "X-Proxaro-Exit-IP"),
            "exit_country": _h(response, "X-Proxaro-Exit-Country"),
        }
        if self.on_response is not None:
            self.on_response(self, response)

    def failed(self, failure: Any) -> None:
        self.errors[failure.request.url] = failure.value


def _h(response: scrapy.http.Response, name: str) -> str | None:
    value = response.headers.get(name)
    return value.decode() if value is not None else None


async def crawl(spidercls: type[scrapy.Spider], settings: Any, **kwargs: Any) -> Crawler:
    runner = CrawlerRunner(settings)
    crawler = runner.create_crawler(spidercls)
    await runner.crawl(crawler, **kwargs)
    return crawler


def urls(base: str, path: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    sep = "&" if "?" in path else "?"
    return [(f"{base}{path}{sep}n={i}", {}) for i in range(n)]


def proxaro_stats(crawler: Crawler) -> dict[str, Any]:
    stats = crawler.stats
    assert stats is not None
    return {k: v for k, v in stats.get_stats().items() if k.startswith("proxaro/")}


def example_spider() -> type[scrapy.Spider]:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    from shop.spiders.products import ProductsSpider

    return ProductsSpider


# ---------------------------------------------------------------------------- the example spider


@pytest_twisted.ensureDeferred
async def test_example_spider_fetches_every_page_of_the_shop_once(sandbox: Sandbox) -> None:
    spidercls = example_spider()
    from shop.run import project_settings

    products = len(catalogue(sandbox.world.seed))
    catalog = {"products": products, "pages": -(-products // PAGE_SIZE)}
    sandbox.control("reset_counters")
    settings = project_settings(**settings_for(sandbox))
    crawler = await crawl(spidercls, settings, site_url=sandbox.site_url)
    spider = crawler.spider
    assert spider is not None
    assert spider.failures == []  # type: ignore[attr-defined]
    assert spider.product_ids == set(range(1, catalog["products"] + 1))  # type: ignore[attr-defined]
    assert spider.listing_pages == catalog["pages"]  # type: ignore[attr-defined]
    assert spider.product_pages == catalog["products"]  # type: ignore[attr-defined]
    # Exactly once: the site saw one request per page, no retry, no duplicate.
    pages = catalog["pages"] + catalog["products"]
    assert sandbox.world.counters["site.requests"] == pages
    stats = proxaro_stats(crawler)
    assert stats["proxaro/requests"] == pages
    mw = ProxaroDownloaderMiddleware.of(crawler)
    assert mw is not None and mw.manager.stats()["requests"] == pages
    assert stats.get("proxaro/retries", 0) == 0
    # The spider's target (de) and the per-request overrides (fr, us), sticky per domain.
    by_country = spider.pages_by_country  # type: ignore[attr-defined]
    assert set(by_country) == {"de", "fr", "us"}
    assert by_country["fr"] == len([p for p in range(1, products + 1) if p % 3 == 1])
    assert by_country["us"] == len([p for p in range(1, products + 1) if p % 3 == 2])
    assert len(spider.exit_ips) == 3  # type: ignore[attr-defined]  # one exit per (site, target)
    assert stats["proxaro/requests/country/de"] == by_country["de"]


# ---------------------------------------------------------------------------- targeting


class Spiderless(Collect):
    name = "spiderless"


class German(Collect):
    name = "german"
    proxaro_target = {"country": "de"}


class Dutch(Collect):
    name = "dutch"
    custom_settings = {"PROXARO_TARGET": {"country": "nl"}}


@pytest_twisted.ensureDeferred
async def test_ip_shows_the_country_of_each_targeting_level(sandbox: Sandbox) -> None:
    ip = f"{sandbox.site_url}/ip"
    settings = settings_for(sandbox, PROXARO_TARGET={"country": "us"})
    runner = CrawlerRunner(settings)
    level_settings = runner.create_crawler(Spiderless)
    level_spider = runner.create_crawler(German)
    a = runner.crawl(level_settings, requests=urls(ip, "", 4))
    b = runner.crawl(
        level_spider,
        requests=[
            *urls(ip, "?spider=1", 4),
            (f"{ip}?request=jp", {"proxaro": {"country": "jp"}}),
            (f"{ip}?request=target", {"proxaro": Target(country="br")}),
        ],
    )
    level_custom = runner.create_crawler(Dutch)
    c = runner.crawl(level_custom, requests=urls(ip, "?custom=1", 2))
    await a
    await b
    await c
    third = level_custom.spider
    assert isinstance(third, Collect)
    assert {r["body"]["country"] for r in third.results.values()} == {"nl"}
    first, second = level_settings.spider, level_spider.spider
    assert isinstance(first, Collect) and isinstance(second, Collect)
    assert not first.errors and not second.errors
    assert {r["body"]["country"] for r in first.results.values()} == {"us"}
    spider_level = [r for u, r in second.results.items() if "spider=1" in u]
    assert {r["body"]["country"] for r in spider_level} == {"de"}
    assert second.results[f"{ip}?request=jp"]["body"]["country"] == "jp"
    assert second.results[f"{ip}?request=target"]["body"]["country"] == "br"
    # The exit the site saw is the one the gateway named.
    for r in [*first.results.values(), *second.results.values()]:
        assert r["body"]["ip"] == r["exit_ip"]
        assert r["body"]["country"] == r["exit_country"]


@pytest_twisted.ensureDeferred
async def test_https_goes_through_a_tunnel_with_the_target(sandbox: Sandbox) -> None:
    ip = f"{sandbox.site_https_url}/ip"
    crawler = await crawl(
        Collect, settings_for(sandbox, PROXARO_TARGET={"country": "fr"}), requests=urls(ip, "", 3)
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert not spider.errors
    assert {r["body"]["country"] for r in spider.results.values()} == {"fr"}
    assert sandbox.world.counters["gateway.tunnels"] >= 1


@pytest_twisted.ensureDeferred
async def test_meta_false_sends_direct(sandbox: Sandbox) -> None:
    ip = f"{sandbox.site_url}/ip"
    crawler = await crawl(
        Collect,
        settings_for(sandbox),
        requests=[(f"{ip}?direct", {"proxaro": False}), (f"{ip}?proxied", {})],
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    direct, proxied = spider.results[f"{ip}?direct"], spider.results[f"{ip}?proxied"]
    assert direct["body"] == {"ip": "127.0.0.1", "country": None, "asn": None, "exit_class": None}
    assert direct["exit_ip"] is None
    assert proxied["body"]["country"] is not None
    assert proxaro_stats(crawler)["proxaro/direct"] == 1


@pytest_twisted.ensureDeferred
async def test_redirects_and_scrapy_retries_are_new_logical_requests(sandbox: Sandbox) -> None:
    site = sandbox.site_url
    redirect = f"{site}/redirect?to={site}/ip%3Fafter=1"
    crawler = await crawl(
        Collect,
        settings_for(sandbox, RETRY_TIMES=1),
        requests=[(redirect, {}), (f"{site}/status/500", {})],
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    # The redirect was followed through the gateway, to an exit of its own.
    assert spider.results[f"{site}/ip?after=1"]["body"]["country"] is not None
    stats = crawler.stats
    assert stats is not None
    # A site's own 500 is its answer (a success for routing), retried by RetryMiddleware once:
    # two requests there, plus the 302 and the redirected request.
    assert stats.get_value("retry/count") == 1
    assert stats.get_value("proxaro/requests") == 4
    assert stats.get_value("proxaro/logical_requests") == 4
    assert stats.get_value("proxaro/outcomes/success") == 4
    assert stats.get_value("proxaro/retries") is None


# ---------------------------------------------------------------------------- sticky sessions


@pytest_twisted.ensureDeferred
async def test_sticky_per_domain_keeps_one_exit(sandbox: Sandbox) -> None:
    ip = f"{sandbox.site_url}/ip"
    sticky = await crawl(
        Collect,
        settings_for(sandbox, PROXARO_STICKY="domain", PROXARO_TARGET={"country": "us"}),
        requests=urls(ip, "", 25),
    )
    rotating = await crawl(
        Collect,
        settings_for(sandbox, PROXARO_STICKY="off", PROXARO_TARGET={"country": "us"}),
        requests=urls(ip, "", 25),
    )
    s1, s2 = sticky.spider, rotating.spider
    assert isinstance(s1, Collect) and isinstance(s2, Collect)
    assert len(s1.results) == len(s2.results) == 25
    assert len({r["body"]["ip"] for r in s1.results.values()}) == 1
    assert len({r["body"]["ip"] for r in s2.results.values()}) > 1


@pytest_twisted.ensureDeferred
async def test_sticky_per_cookiejar_and_explicit_session(sandbox: Sandbox) -> None:
    ip = f"{sandbox.site_url}/ip"
    requests = [(f"{ip}?jar={i % 2}&n={i}", {"cookiejar": i % 2}) for i in range(12)]
    requests += [(f"{ip}?cart=1&n={i}", {"proxaro_session": "cart"}) for i in range(4)]
    crawler = await crawl(
        Collect, settings_for(sandbox, PROXARO_STICKY="cookiejar"), requests=requests
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert len(spider.results) == 16
    exits: dict[str, set[str]] = {}
    for url, r in spider.results.items():
        group = "cart" if "cart=" in url else url.split("jar=")[1][0]
        exits.setdefault(group, set()).add(r["body"]["ip"])
    assert all(len(ips) == 1 for ips in exits.values()), exits
    assert len(set().union(*exits.values())) == 3


# ---------------------------------------------------------------------------- failures


@pytest_twisted.ensureDeferred
async def test_a_ban_moves_to_a_new_exit_and_the_page_succeeds(sandbox: Sandbox) -> None:
    sandbox.control("site", budget=5, ban_window=60, ban_seconds=60)
    crawler = await crawl(
        Collect,
        settings_for(
            sandbox, PROXARO_STICKY="domain", CONCURRENT_REQUESTS=4, PROXARO_MAX_ATTEMPTS=6
        ),
        requests=urls(f"{sandbox.site_url}/ip", "", 30),
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert spider.errors == {}
    assert len(spider.results) == 30
    # Never a ban page in a callback: every answer there is the real /ip JSON.
    assert {r["status"] for r in spider.results.values()} == {200}
    assert all(isinstance(r["body"], dict) for r in spider.results.values())
    stats = proxaro_stats(crawler)
    assert stats["proxaro/bans"] >= 1
    assert stats["proxaro/retry/reason_count/ban"] == stats["proxaro/bans"]
    assert stats["proxaro/exits_used"] >= 6  # 30 pages at 5 per exit
    assert len({r["body"]["ip"] for r in spider.results.values()}) >= 6
    # Our retries are ours: Scrapy's RetryMiddleware retried nothing (429 is in its codes).
    assert crawler.stats.get_value("retry/count") is None  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_budget_spent_reaches_the_errback_with_what_was_tried(sandbox: Sandbox) -> None:
    sandbox.control("site", budget=0, ban_window=60, ban_seconds=60)
    url = f"{sandbox.site_url}/product/1"
    crawler = await crawl(
        Collect,
        settings_for(sandbox, PROXARO_MAX_ATTEMPTS=3, PROXARO_TARGET={"country": "de"}),
        requests=[(url, {})],
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert spider.results == {}  # the banned page never reached the callback
    err = spider.errors[url]
    assert isinstance(err, ProxaroGaveUp)
    assert len(err.tried) == 3 and all("ban" in line for line in err.tried)
    assert "country=de" in str(err)
    assert err.response is not None and err.response.status in (403, 429)
    stats = proxaro_stats(crawler)
    assert stats["proxaro/gave_up"] == 1
    assert stats["proxaro/requests"] == 3


@pytest_twisted.ensureDeferred
async def test_gateway_refusal_reaches_the_errback_as_the_proxaro_error(sandbox: Sandbox) -> None:
    with Proxaro(sandbox.api_key, sandbox.api_url) as client:
        entry = client.allowlist.add("203.0.113.0/24", label="not this machine")
    try:
        url = f"{sandbox.site_url}/ip"
        crawler = await crawl(Collect, settings_for(sandbox), requests=[(url, {})])
    finally:
        with Proxaro(sandbox.api_key, sandbox.api_url) as client:
            client.allowlist.remove(entry.id)
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert isinstance(spider.errors[url], SourceNotAllowedError)
    assert "allowlist" in str(spider.errors[url])
    stats = proxaro_stats(crawler)
    assert stats["proxaro/requests"] == 1  # never retried
    assert stats["proxaro/errors/SourceNotAllowedError"] == 1


@pytest_twisted.ensureDeferred
async def test_region_down_mid_crawl_fails_over_without_losing_a_page(sandbox: Sandbox) -> None:
    def midway(spider: Collect, response: Any) -> None:
        if spider.answers == 10:
            sandbox.control("country", code="de", pool_health="down")

    crawler = await crawl(
        Collect,
        settings_for(sandbox, PROXARO_TARGET={"country": "de"}, CONCURRENT_REQUESTS=6),
        requests=urls(f"{sandbox.site_url}/delay/30", "", 50),
        on_response=midway,
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert spider.errors == {}
    assert len(spider.results) == 50
    countries = [r["exit_country"] for r in spider.results.values()]
    assert countries.count("de") >= 10
    assert len(set(countries) - {"de"}) >= 1  # the rest went to a neighbour
    stats = proxaro_stats(crawler)
    assert stats["proxaro/failovers"] >= 1
    assert stats["proxaro/region_dead"] >= 1


@pytest_twisted.ensureDeferred
async def test_a_crawls_start_makes_three_api_calls(sandbox: Sandbox) -> None:
    """Credentials, countries, usage: nothing else, whatever the spider's per-request targets
    (no ASN listing unless an ASN target names a country)."""

    def calls() -> dict[str, int]:
        got = sandbox.world.counters
        return {k: v for k, v in got.items() if k.startswith("api.requests:")}

    before = calls()
    targets = [{"country": c} for c in ("us", "de", "gb", "fr")]
    requests = [(f"{sandbox.site_url}/ip?n={i}", {"proxaro": targets[i % 4]}) for i in range(20)]
    quiet = {"PROXARO_CREDENTIALS_POLL_INTERVAL": 3600, "PROXARO_POOL_TTL": None,
             "PROXARO_USAGE_POLL_INTERVAL": None}  # fmt: skip
    crawler = await crawl(Collect, settings_for(sandbox, **quiet), requests=requests)
    spider = crawler.spider
    assert isinstance(spider, Collect) and spider.errors == {} and len(spider.results) == 20
    made = {k: v - before.get(k, 0) for k, v in calls().items() if v != before.get(k, 0)}
    assert made == {
        "api.requests:GET /v1/credentials": 1,
        "api.requests:GET /v1/countries": 1,
        "api.requests:GET /v1/usage": 1,
    }


@pytest_twisted.ensureDeferred
async def test_rotation_mid_crawl_fails_nothing(sandbox: Sandbox) -> None:
    sandbox.control("grace", seconds=0.2)
    before = sandbox.world.counters["api.requests:GET /v1/credentials"]

    def midway(spider: Collect, response: Any) -> None:
        if spider.answers == 10:
            sandbox.control("rotate")

    crawler = await crawl(
        Collect,
        settings_for(sandbox, CONCURRENT_REQUESTS=8),
        requests=urls(f"{sandbox.site_url}/delay/80", "", 80),
        on_response=midway,
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert spider.errors == {}
    assert len(spider.results) == 80
    stats = proxaro_stats(crawler)
    assert stats["proxaro/rotations"] == 1
    assert stats["proxaro/outcomes/stale_credentials"] >= 1  # the 407s were met and handled
    # A storm of 407s, one credentials call (plus the one at start).
    assert sandbox.world.counters["api.requests:GET /v1/credentials"] - before <= 3


@pytest_twisted.ensureDeferred
async def test_usage_cap_with_stop_closes_the_spider(sandbox: Sandbox) -> None:
    def midway(spider: Collect, response: Any) -> None:
        if spider.answers == 5:
            sandbox.control("usage", to_percent=100)

    crawler = await crawl(
        Collect,
        settings_for(
            sandbox,
            PROXARO_USAGE_CAP_ACTION="stop",
            PROXARO_USAGE_POLL_INTERVAL=0.2,
            CONCURRENT_REQUESTS=2,
        ),
        requests=urls(f"{sandbox.site_url}/delay/50", "", 200),
        on_response=midway,
    )
    stats = crawler.stats
    assert stats is not None
    assert stats.get_value("finish_reason") == "proxaro_usage_cap"
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert len(spider.results) < 200


# ---------------------------------------------------------------------------- settings


def test_disabled_is_not_configured() -> None:
    crawler = get_crawler(settings_dict={"PROXARO_ENABLED": False})
    with pytest.raises(NotConfigured):
        ProxaroDownloaderMiddleware.from_crawler(crawler)
    crawler = get_crawler(settings_dict={"PROXARO_ENABLED": "0"})
    with pytest.raises(NotConfigured):
        ProxaroDownloaderMiddleware.from_crawler(crawler)


@pytest_twisted.ensureDeferred
async def test_disabled_crawl_goes_direct(sandbox: Sandbox) -> None:
    crawler = await crawl(
        Collect,
        settings_for(sandbox, PROXARO_ENABLED=False),
        requests=[(f"{sandbox.site_url}/ip", {})],
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert [r["body"]["ip"] for r in spider.results.values()] == ["127.0.0.1"]
    assert sandbox.world.counters["gateway.requests"] == 0


def test_addon_installs_the_middleware_before_httpproxy() -> None:
    crawler = get_crawler(settings_dict={"ADDONS": {ProxaroAddon: 0}})
    mws = crawler.settings.getdict("DOWNLOADER_MIDDLEWARES")
    assert mws[ProxaroDownloaderMiddleware] == MIDDLEWARE_PRIORITY
    base = crawler.settings.getdict("DOWNLOADER_MIDDLEWARES_BASE")
    proxy = base["scrapy.downloadermiddlewares.httpproxy.HttpProxyMiddleware"]
    retry = base["scrapy.downloadermiddlewares.retry.RetryMiddleware"]
    assert retry < MIDDLEWARE_PRIORITY < proxy
    # A priority the user chose is kept.
    crawler = get_crawler(
        settings_dict={
            "ADDONS": {ProxaroAddon: 0},
            "DOWNLOADER_MIDDLEWARES": {ProxaroDownloaderMiddleware: 700},
        }
    )
    assert crawler.settings.getdict("DOWNLOADER_MIDDLEWARES")[ProxaroDownloaderMiddleware] == 700


@pytest_twisted.ensureDeferred
async def test_a_bad_setting_closes_the_spider_at_start_and_sends_nothing(
    sandbox: Sandbox, caplog: Any
) -> None:
    with caplog.at_level(logging.ERROR, logger="proxaro_scrape"):
        crawler = await crawl(
            Collect,
            settings_for(sandbox, PROXARO_TARGET={"country": "USA"}),
            requests=[(f"{sandbox.site_url}/ip", {})],
        )
    assert crawler.stats.get_value("finish_reason") == "proxaro_config"  # type: ignore[union-attr]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "PROXARO_TARGET" in errors[0], errors
    assert sandbox.world.counters["gateway.connections"] == 0
    assert sandbox.world.counters["site.requests"] == 0


@pytest_twisted.ensureDeferred
async def test_bad_targets_close_the_spider_or_reach_the_errback(sandbox: Sandbox) -> None:
    # A spider target the pool does not have: the spider closes at start, nothing is sent.
    class Atlantis(Collect):
        name = "atlantis"
        proxaro_target = {"country": "zz"}

    crawler = await crawl(
        Atlantis, settings_for(sandbox), requests=[(f"{sandbox.site_url}/ip", {})]
    )
    assert crawler.stats.get_value("finish_reason") == "proxaro_config"  # type: ignore[union-attr]
    # A bad per-request target reaches that request's errback; the others go on.
    url = f"{sandbox.site_url}/ip"
    crawler = await crawl(
        Collect,
        settings_for(sandbox),
        requests=[
            (f"{url}?bad", {"proxaro": {"country": "zz"}}),
            (f"{url}?bad2", {"proxaro": 3}),
            (f"{url}?good", {}),
        ],
    )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert set(spider.results) == {f"{url}?good"}
    assert isinstance(spider.errors[f"{url}?bad"], ConfigurationError)
    assert "zz" in str(spider.errors[f"{url}?bad"])
    assert isinstance(spider.errors[f"{url}?bad2"], ConfigurationError)


@pytest_twisted.ensureDeferred
async def test_api_down_at_start_closes_the_spider_with_a_clear_reason(
    sandbox: Sandbox, caplog: Any
) -> None:
    sandbox.control("faults", statuses=[503] * 20)
    with caplog.at_level(logging.ERROR, logger="proxaro_scrape"):
        crawler = await crawl(
            Collect, settings_for(sandbox), requests=[(f"{sandbox.site_url}/ip", {})]
        )
    sandbox.control("faults", clear=True)
    assert crawler.stats.get_value("finish_reason") == "proxaro_start_failed"  # type: ignore[union-attr]
    assert "could not start the gateway manager" in caplog.text
    assert sandbox.world.counters["site.requests"] == 0


# ---------------------------------------------------------------------------- secrets


@pytest_twisted.ensureDeferred
async def test_no_secret_in_logs_or_stats(sandbox: Sandbox, caplog: Any) -> None:
    """DEBUG logs of a crawl with bans, a rotation and 407s hold no password and no key."""
    sandbox.control("grace", seconds=0.1)
    sandbox.control("site", budget=8, ban_window=60, ban_seconds=60)
    passwords = [sandbox.world.credentials.password]

    def midway(spider: Collect, response: Any) -> None:
        if spider.answers == 5:
            passwords.append(sandbox.control("rotate")["password"])

    with caplog.at_level(logging.DEBUG):
        crawler = await crawl(
            Collect,
            settings_for(
                sandbox, LOG_LEVEL="DEBUG", PROXARO_STICKY="domain", CONCURRENT_REQUESTS=4
            ),
            requests=urls(f"{sandbox.site_url}/delay/40", "", 40),
            on_response=midway,
        )
    spider = crawler.spider
    assert isinstance(spider, Collect)
    assert spider.errors == {} and len(spider.results) == 40
    stats = crawler.stats.get_stats()  # type: ignore[union-attr]
    assert stats["proxaro/bans"] >= 1 and stats["proxaro/rotations"] == 1
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "Retrying" in text  # the retry lines were logged, at DEBUG
    dumped = json.dumps({k: str(v) for k, v in stats.items()})
    for secret in [*passwords, sandbox.api_key]:
        assert secret not in text
        assert secret not in dumped
    assert "Basic " not in text  # nor does a Proxy-Authorization header show


def test_import_without_scrapy_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['scrapy'] = None  # as if Scrapy were not installed\n"
        "try:\n"
        "    import proxaro_scrape.integrations.scrapy\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 'pip install "proxaro-scrape[scrapy]"' in out.stdout, out.stderr
