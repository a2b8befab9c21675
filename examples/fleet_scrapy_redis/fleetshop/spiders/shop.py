"""The ``shop`` spider: every product of the demo shop once, whichever worker fetches it.

    SHOP_URL=http://127.0.0.1:PORT scrapy crawl shop -O items-1.jsonl

Every worker queues the first listing page; the shared dupefilter keeps one.  Listing pages
queue the product pages and the other listing pages; each product page gives one item.

A worker with nothing to do may only be early (another worker is about to queue the next
pages): it stops after ``FLEET_IDLE_SECONDS`` (5) idle seconds in a row, not at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DontCloseSpider
from scrapy.http import Response


class ShopSpider(scrapy.Spider):
    """Listing pages → product pages → one item per product."""

    name = "shop"
    _idle_since: float | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> ShopSpider:
        """The spider, told when its worker runs out of requests."""
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.idle, signal=signals.spider_idle)
        return spider

    def idle(self) -> None:
        """Stay a while: the shared queue may fill again from another worker's pages."""
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.settings.getfloat("FLEET_IDLE_SECONDS", 5.0):
            raise DontCloseSpider

    async def start(self) -> Any:
        """The first listing page (the same request from every worker: one survives)."""
        site = os.environ["SHOP_URL"].rstrip("/")
        yield scrapy.Request(f"{site}/products?page=1", callback=self.parse)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[scrapy.Request]:
        """A listing page: its products and the other listing pages."""
        self._idle_since = None
        for href in response.css("li.product a::attr(href)").getall():
            yield response.follow(href, callback=self.parse_product)
        for href in response.css("nav.pagination a::attr(href), a.next::attr(href)").getall():
            yield response.follow(href, callback=self.parse)

    def parse_product(self, response: Response) -> Iterator[dict[str, Any]]:
        """A product page: one item."""
        self._idle_since = None
        yield {
            "id": int(response.url.rstrip("/").rsplit("/", 1)[-1]),
            "name": response.css("h1.name::text").get(),
            "exit_ip": getattr(response.meta.get("proxaro_exit"), "ip", None),
        }
