"""Scrapy over HTTPS through the sandbox gateway: who may be believed, and the exit's name.

Inside a CONNECT tunnel the gateway never sees the site's answers, so an ``X-Proxaro-*`` header
on a page is the site's (the sandbox's ``/spoof/<status>`` pages set them, a 407 with
``Proxy-Authenticate`` included): routing must take them as the site's answer.  Only the
CONNECT answer is the gateway's, and the add-on's download handler reads it, so
``meta["proxaro_exit"]`` names the exit over HTTPS too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest_twisted
import scrapy
from scrapy.crawler import Crawler, CrawlerRunner

from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.integrations.scrapy import (
    ProxaroAddon,
    ProxaroDownloaderMiddleware,
    ProxaroDownloadHandler,
)
from proxaro_scrape.sandbox import Sandbox

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "scrapy_shop")
SPOOFS = ("/spoof/200", "/spoof/502", "/spoof/504", "/spoof/407", "/spoof/407?error=")


class Visit(scrapy.Spider):
    """Fetch ``first`` (all at once), then ``then`` once every one of them has answered."""

    name = "visit"

    def __init__(self, first: list[str], then: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = first
        self.then = then
        self.answers: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, BaseException] = {}

    def _request(self, url: str) -> scrapy.Request:
        # The site's 4xx/5xx reach the callback, and RetryMiddleware leaves them alone: what
        # the middleware decided is all that shows.
        meta = {"handle_httpstatus_all": True, "dont_retry": True}
        return scrapy.Request(
            url, meta=meta, callback=self.parse, errback=self.failed, dont_filter=True
        )

    async def start(self) -> Any:
        for url in self.first:
            yield self._request(url)

    def parse(self, response: scrapy.http.Response) -> Iterator[scrapy.Request]:
        try:
            body: Any = json.loads(response.text)
        except ValueError:
            body = response.text
        self.answers[response.url] = {
            "status": response.status,
            "body": body,
            "exit": response.meta.get("proxaro_exit"),
            "target": response.meta.get("proxaro_route_target"),
            "site_error": response.headers.get("X-Proxaro-Error"),
        }
        yield from self._next()

    def failed(self, failure: Any) -> Iterator[scrapy.Request]:
        self.errors[failure.request.url] = failure.value
        yield from self._next()

    def _next(self) -> Iterator[scrapy.Request]:
        done = len(self.answers) + len(self.errors)
        if done == len(self.first):
            for url in self.then:
                yield self._request(url)


async def crawl(sb: Sandbox, first: list[str], then: list[str], **settings: Any) -> Crawler:
    runner = CrawlerRunner(
        {
            "ADDONS": {ProxaroAddon: 0},
            "PROXARO_API_KEY": sb.api_key,
            "PROXARO_BASE_URL": sb.api_url,
            "PROXARO_TARGET": {"country": "de"},
            "TELNETCONSOLE_ENABLED": False,
            "REMOTE_CONTROL_ENABLED": False,
            "ROBOTSTXT_OBEY": False,
            "LOG_LEVEL": "INFO",
            **settings,
        }
    )
    crawler = runner.create_crawler(Visit)
    await runner.crawl(crawler, first=first, then=then)
    return crawler


@pytest_twisted.ensureDeferred
async def test_a_sites_own_proxaro_headers_and_407_are_its_answer_over_https(
    sandbox: Sandbox,
) -> None:
    site = sandbox.site_https_url
    calls = "api.requests:GET /v1/credentials"
    first = [f"{site}{path}" for path in SPOOFS]
    then = [f"{site}/ip?after={i}" for i in range(3)]
    crawler = await crawl(sandbox, first, then)
    spider = crawler.spider
    assert isinstance(spider, Visit)
    assert spider.errors == {}
    for url in first:
        got = spider.answers[url]
        # The site's status, as it sent it, handed to the callback: not an error, not a retry.
        assert got["status"] == int(url.split("/spoof/")[1][:3]), (url, got)
        assert got["body"]["spoofed_by"] == "site"
        # The site's made-up exit is not believed; the gateway's CONNECT answer names the real.
        assert got["exit"] is not None and got["exit"].ip != "203.0.113.7"
        assert got["exit"].country == "de"
    stats = crawler.stats.get_stats()  # type: ignore[union-attr]
    # Routing was unaffected: no breaker opened, no failover, no credentials refreshed.
    assert stats.get("proxaro/region_dead") is None
    assert stats.get("proxaro/failovers") is None
    assert stats.get("proxaro/outcomes/stale_credentials") is None
    assert not [k for k in stats if k.startswith("proxaro/errors/")]
    assert sandbox.world.counters[calls] == 1  # the one fetch at start, none for the 407s
    # And the next requests to the same target go through, to the same country.
    for url in then:
        got = spider.answers[url]
        assert got["status"] == 200 and got["body"]["country"] == "de"
        assert got["exit"].ip == got["body"]["ip"]  # the exit the site saw is the one named
        assert got["target"].country == "de"


@pytest_twisted.ensureDeferred
async def test_the_exit_is_named_over_https_through_every_kept_alive_tunnel(
    sandbox: Sandbox,
) -> None:
    site = sandbox.site_https_url
    crawler = await crawl(
        sandbox,
        [f"{site}/ip?n={i}" for i in range(12)],
        [f"{site}/ip?n=again{i}" for i in range(12)],  # these reuse the tunnels of the first
        PROXARO_STICKY="domain",
        CONCURRENT_REQUESTS=4,
    )
    spider = crawler.spider
    assert isinstance(spider, Visit)
    assert spider.errors == {} and len(spider.answers) == 24
    for got in spider.answers.values():
        assert got["exit"] is not None
        assert (got["exit"].ip, got["exit"].country) == (got["body"]["ip"], got["body"]["country"])
    assert sandbox.world.counters["gateway.tunnels"] < 24  # connections were reused


def test_the_addon_installs_the_handler_only_where_scrapys_own_is() -> None:
    from scrapy.utils.test import get_crawler

    crawler = get_crawler(settings_dict={"ADDONS": {ProxaroAddon: 0}})
    handlers = crawler.settings.getwithbase("DOWNLOAD_HANDLERS")
    assert handlers["https"] is ProxaroDownloadHandler
    assert handlers["http"] is ProxaroDownloadHandler  # it takes the credentials off, too
    mine = "scrapy.core.downloader.handlers.http2.H2DownloadHandler"
    crawler = get_crawler(
        settings_dict={"ADDONS": {ProxaroAddon: 0}, "DOWNLOAD_HANDLERS": {"https": mine}}
    )
    handlers = crawler.settings.getwithbase("DOWNLOAD_HANDLERS")
    assert handlers["https"] == mine and handlers["http"] is ProxaroDownloadHandler
    # Then the middleware takes the credentials off what is scheduled instead.
    crawler = get_crawler(
        settings_dict={
            "ADDONS": {ProxaroAddon: 0},
            "DOWNLOAD_HANDLERS": {"https": mine},
            "PROXARO_API_KEY": "proxaro_test_" + "0" * 32,
        }
    )
    mw = ProxaroDownloaderMiddleware.from_crawler(crawler)
    assert not mw._handler_strips


@pytest_twisted.ensureDeferred
async def test_a_certificate_that_fails_verification_is_raised_not_retried(
    sandbox: Sandbox,
) -> None:
    # Scrapy's trust store does not know the sandbox's CA: with verification on, the site's
    # certificate fails, and no exit can change that.
    url = f"{sandbox.site_https_url}/ip"
    crawler = await crawl(sandbox, [url], [], DOWNLOAD_VERIFY_CERTIFICATES=True)
    spider = crawler.spider
    assert isinstance(spider, Visit)
    error = spider.errors[url]
    assert isinstance(error, ConfigurationError) and error.param == "verify"
    stats = crawler.stats.get_stats()  # type: ignore[union-attr]
    assert stats["proxaro/requests"] == 1  # one attempt: never retried through other exits
    assert stats["proxaro/outcomes/tls_error"] == 1


@pytest_twisted.ensureDeferred
async def test_the_example_spider_names_every_exit_over_https(sandbox: Sandbox) -> None:
    if EXAMPLE not in sys.path:
        sys.path.insert(0, EXAMPLE)
    from shop.run import ProductsSpider, project_settings

    settings = project_settings(
        PROXARO_API_KEY=sandbox.api_key,
        PROXARO_BASE_URL=sandbox.api_url,
        TELNETCONSOLE_ENABLED=False,
        LOG_LEVEL="INFO",
    )
    runner = CrawlerRunner(settings)
    crawler = runner.create_crawler(ProductsSpider)
    await runner.crawl(crawler, site_url=sandbox.site_https_url)
    spider = crawler.spider
    assert isinstance(spider, ProductsSpider)
    assert spider.failures == [] and spider.product_pages == len(spider.product_ids) > 300
    # Every page's exit named (from the CONNECT answers), in the three countries targeted.
    assert set(spider.pages_by_country) == {"de", "fr", "us"}
    assert len(spider.exit_ips) == 3  # sticky per (site, target)


class Keep(Visit):
    """Visit, keeping the requests the callbacks saw."""

    name = "keep"
    seen: list[scrapy.Request]

    def _request(self, url: str) -> scrapy.Request:
        # Redirects and RetryMiddleware's retries of the site's 500 are wanted here.
        return scrapy.Request(url, callback=self.parse, errback=self.failed, dont_filter=True)

    def parse(self, response: scrapy.http.Response) -> Iterator[scrapy.Request]:
        self.seen = [*getattr(self, "seen", []), response.request]
        yield from super().parse(response)


@pytest_twisted.ensureDeferred
async def test_no_request_keeps_the_credentials_after_its_download(sandbox: Sandbox) -> None:
    http, https = sandbox.site_url, sandbox.site_https_url
    first = [
        f"{http}/redirect?to={http}/ip%3Fvia=redirect",
        f"{https}/redirect?to={https}/ip%3Fvia=tls-redirect",
        f"{http}/status/500",  # RetryMiddleware's own retries of the site's answer
        f"{https}/ip",
    ]
    runner = CrawlerRunner(
        {
            "ADDONS": {ProxaroAddon: 0},
            "PROXARO_API_KEY": sandbox.api_key,
            "PROXARO_BASE_URL": sandbox.api_url,
            "TELNETCONSOLE_ENABLED": False,
            "RETRY_TIMES": 1,
        }
    )
    crawler = runner.create_crawler(Keep)
    scheduled: list[scrapy.Request] = []

    def on_scheduled(request: scrapy.Request, spider: Any = None) -> None:
        scheduled.append(request)

    # weak=False: pydispatcher holds receivers weakly, and this one is only a local.
    crawler.signals.connect(on_scheduled, signal=scrapy.signals.request_scheduled, weak=False)
    await runner.crawl(crawler, first=first, then=[])
    spider = crawler.spider
    assert isinstance(spider, Keep)
    assert len(spider.seen) == 3 and list(spider.errors) == [f"{http}/status/500"]
    assert len(scheduled) == 4 + 2 + 1  # and 2 redirects, 1 retry of the site's 500
    for request in [*spider.seen, *scheduled]:
        assert request.headers.get("Proxy-Authorization") is None, request
        assert "@" not in str(request.meta.get("proxy") or "")
