"""The spider ``proxaro-scrape demo`` crawls, shipped with the package so the demo runs from an
installed wheel in any directory.

It is a small copy of the example project's ``products`` spider (``examples/scrapy_shop``, the
project to read and copy): every listing page, every product, one item each, with targeting at
three levels (the settings' default, the spider's ``proxaro_target``, ``meta["proxaro"]`` per
request), and counters the demo reports from.  This module imports Scrapy: the demo imports it
only when it runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import scrapy
from scrapy.crawler import Crawler, CrawlerProcess
from scrapy.http import Response
from scrapy.settings import Settings
from twisted.python.failure import Failure

__all__ = ["SETTINGS", "CrawlResult", "DemoSpider", "crawl"]

#: The example project's settings, those the demo relies on.
SETTINGS: dict[str, Any] = {
    # The add-on puts ProxaroDownloaderMiddleware before HttpProxyMiddleware.
    "ADDONS": {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0},
    # The default exit (the US); the spider's target replaces it, meta["proxaro"] per request.
    "PROXARO_TARGET": {"country": "us"},
    # One exit per site while it works; a ban moves the session to a new exit.
    "PROXARO_STICKY": "domain",
    "PROXARO_SESSION_TTL": 10,
    "PROXARO_MAX_ATTEMPTS": 6,
    # The demo shop allows every path: skip the extra request.
    "ROBOTSTXT_OBEY": False,
    "DOWNLOAD_DELAY": 0,
    "DOWNLOAD_TIMEOUT": 30,
    # No console listening on a local port for a short demo crawl.
    "TELNETCONSOLE_ENABLED": False,
}


class DemoSpider(scrapy.Spider):
    """Crawl the demo shop's listing pages, follow every product, yield one item per product."""

    name = "products"
    # This spider's requests exit in Germany, whatever PROXARO_TARGET says.
    proxaro_target: dict[str, Any] | None = {"country": "de"}
    #: Product ``pid`` exits in ``OVERRIDE_COUNTRIES[k - 1]`` for ``k = pid % 3`` when not 0.
    OVERRIDE_COUNTRIES = ("fr", "us")

    def __init__(
        self,
        site_url: str,
        on_page: Callable[[DemoSpider, Response], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.site_url = site_url.rstrip("/")
        #: Called after every parsed page, on the reactor's thread (the demo's progress bar
        #: and the faults it injects midway).
        self.on_page = on_page
        self.listing_pages = 0
        self.product_pages = 0
        self.pages_by_country: Counter[str] = Counter()
        self.exit_ips: set[str] = set()
        self.product_ids: set[int] = set()
        #: URLs that failed after every attempt, with the reason.
        self.failures: list[tuple[str, str]] = []

    async def start(self) -> AsyncIterator[scrapy.Request]:
        """The first listing page; the pagination links lead to every other."""
        yield scrapy.Request(
            f"{self.site_url}/products?page=1", callback=self.parse_listing, errback=self.failed
        )

    def parse_listing(self, response: Response) -> Iterator[scrapy.Request]:
        """Follow every product of the page and every page of the pagination."""
        self._count(response, product=False)
        for href in response.css("li.product a::attr(href)").getall():
            pid = int(href.rstrip("/").rsplit("/", 1)[1])
            k = pid % (len(self.OVERRIDE_COUNTRIES) + 1)
            # Per request: some product pages exit in another country than the spider's.
            meta = {"proxaro": {"country": self.OVERRIDE_COUNTRIES[k - 1]}} if k else {}
            yield response.follow(href, self.parse_product, meta=meta, errback=self.failed)
        # Every page number is linked from every page: the dupefilter keeps one of each.
        for href in response.css("nav.pagination a::attr(href)").getall():
            yield response.follow(href, self.parse_listing, errback=self.failed)

    def parse_product(self, response: Response) -> Iterator[dict[str, Any]]:
        """One item per product, with the exit that fetched it."""
        exit_ip, exit_country = self._count(response, product=True)
        pid = int(response.css("div.product::attr(data-id)").get("0"))
        self.product_ids.add(pid)
        yield {
            "id": pid,
            "name": response.css("h1.name::text").get(),
            "url": response.url,
            "exit_ip": exit_ip,
            "exit_country": exit_country,
        }

    def failed(self, failure: Failure) -> None:
        """Errback: a page that could not be fetched."""
        request = getattr(failure, "request", None)
        url = request.url if request is not None else "?"
        self.failures.append((url, f"{type(failure.value).__name__}: {failure.value}"))
        self.logger.error("could not fetch %s: %s", url, failure.value)

    @property
    def pages(self) -> int:
        """Pages parsed so far (listing and product pages)."""
        return self.listing_pages + self.product_pages

    def summary(self) -> dict[str, Any]:
        """What the crawl saw: pages, products, exits, countries, failures."""
        return {
            "listing_pages": self.listing_pages,
            "product_pages": self.product_pages,
            "products": len(self.product_ids),
            "exits_used": len(self.exit_ips),
            "pages_by_country": dict(self.pages_by_country),
            "failed": len(self.failures),
        }

    def _count(self, response: Response, *, product: bool) -> tuple[str | None, str | None]:
        if product:
            self.product_pages += 1
        else:
            self.listing_pages += 1
        # The middleware's reading of the gateway's answer (over HTTPS: the CONNECT answer's).
        exit_info = response.meta.get("proxaro_exit")
        exit_ip = exit_info.ip if exit_info is not None else None
        exit_country = exit_info.country if exit_info is not None else None
        if exit_ip:
            self.exit_ips.add(exit_ip)
        self.pages_by_country[exit_country or "unknown"] += 1
        if self.on_page is not None:
            self.on_page(self, response)
        return exit_ip, exit_country


@dataclass
class CrawlResult:
    """What one crawl left: the spider (its counters), the crawl stats, the finish reason."""

    spider: DemoSpider
    stats: dict[str, Any]

    @property
    def reason(self) -> str | None:
        """Why the spider closed (``finished``, ``proxaro_usage_cap``...)."""
        return self.stats.get("finish_reason")

    @property
    def summary(self) -> dict[str, Any]:
        """The spider's own counts (pages, products, exits, countries, failures)."""
        return self.spider.summary()


def crawl(
    site_url: str, *, spider_kwargs: dict[str, Any] | None = None, **overrides: Any
) -> CrawlResult:
    """Crawl the shop at ``site_url`` with :data:`SETTINGS` plus ``overrides`` (blocking: it
    runs Twisted's reactor, once per process)."""
    settings = Settings(SETTINGS)
    settings.update(overrides, priority="cmdline")
    process = CrawlerProcess(settings)
    crawler: Crawler = process.create_crawler(DemoSpider)
    process.crawl(crawler, site_url=site_url, **(spider_kwargs or {}))
    process.start()
    spider = crawler.spider
    assert isinstance(spider, DemoSpider)
    return CrawlResult(spider, dict(crawler.stats.get_stats()))
