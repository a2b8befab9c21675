"""The ``products`` spider: every product of the demo shop, one item each, through Proxaro.

    scrapy crawl products -a site_url=http://127.0.0.1:PORT -O products.jsonl

Targeting at three levels:

- the project's ``PROXARO_TARGET`` (settings.py: the US) is the default of every spider;
- this spider's ``proxaro_target`` (Germany) replaces it for this spider: the listing pages
  and most product pages exit in Germany;
- ``meta["proxaro"]`` overrides it for one request: product pages are spread over the
  spider's country and ``override_countries`` (France and the US by default), so one crawl
  shows exits in three countries at once (``-a override_countries=`` keeps them all German).

Each item carries the exit that fetched its page (``meta["proxaro_exit"]``, HTTPS too), and
the spider counts pages and exits as it goes (:meth:`ProductsSpider.summary`), so a program
that runs it in-process (``shop.run.crawl``) can report them without reading the items.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import scrapy
from scrapy.http import Response
from twisted.python.failure import Failure

from proxaro_scrape import ExitInfo


class ProductsSpider(scrapy.Spider):
    """Crawl the listing pages, follow every product, yield one item per product."""

    name = "products"
    # Per spider: this spider's requests exit in Germany, whatever PROXARO_TARGET says.
    proxaro_target: dict[str, Any] | None = {"country": "de"}

    def __init__(
        self,
        site_url: str | None = None,
        country: str | None = None,
        override_countries: str = "fr,us",
        on_page: Callable[[ProductsSpider, Response], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: In-process runs only: called after every parsed page (a progress bar, a fault
        #: injected midway...), on the reactor's thread.
        self.on_page = on_page
        self.site_url = (site_url or os.environ.get("SHOP_URL") or "").rstrip("/")
        if country is not None:
            # -a country=jp: another country for this run; -a country= : the project default.
            self.proxaro_target = {"country": country} if country else None
        #: Per-request overrides: product ``pid`` goes through ``override_countries[k - 1]``
        #: when ``k = pid % (len(override_countries) + 1)`` is not 0, else the spider's target.
        self.override_countries = [c.strip() for c in override_countries.split(",") if c.strip()]
        #: Pages parsed, by kind, and by the exit country that fetched them.
        self.listing_pages = 0
        self.product_pages = 0
        self.pages_by_country: Counter[str] = Counter()
        #: Distinct exit IPs the middleware named (``meta["proxaro_exit"]``).
        self.exit_ips: set[str] = set()
        #: Product ids scraped (one item each).
        self.product_ids: set[int] = set()
        #: URLs that failed after every attempt (the errback saw them), with the reason.
        self.failures: list[tuple[str, str]] = []

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> ProductsSpider:
        """Read ``SHOP_URL`` from the settings when ``-a site_url=`` is not given."""
        spider: ProductsSpider = super().from_crawler(crawler, *args, **kwargs)
        if not spider.site_url:
            spider.site_url = str(crawler.settings.get("SHOP_URL") or "").rstrip("/")
        if not spider.site_url:
            raise ValueError(
                "give the shop's URL: scrapy crawl products -a site_url=http://127.0.0.1:PORT "
                "(proxaro-scrape sandbox --json prints it as site_url)"
            )
        return spider

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
            meta: dict[str, Any] = {}
            k = pid % (len(self.override_countries) + 1)
            if k:
                # Per request: this page exits in another country than the spider's.
                meta["proxaro"] = {"country": self.override_countries[k - 1]}
            yield response.follow(href, self.parse_product, meta=meta, errback=self.failed)
        # Every page number is linked from every page: the dupefilter keeps one of each.
        for href in response.css("nav.pagination a::attr(href)").getall():
            yield response.follow(href, self.parse_listing, errback=self.failed)

    def parse_product(self, response: Response) -> Iterator[dict[str, Any]]:
        """One item per product, with the exit that fetched it."""
        exit_info = self._count(response, product=True)
        pid = int(response.css("div.product::attr(data-id)").get("0"))
        self.product_ids.add(pid)
        yield {
            "id": pid,
            "name": response.css("h1.name::text").get(),
            "price": response.css("span.price::text").get(),
            "sku": response.css("span.sku::text").get(),
            "category": response.css("span.category::text").get(),
            "url": response.url,
            "exit_ip": exit_info.ip if exit_info else None,
            "exit_country": exit_info.country if exit_info else None,
            "exit_class": exit_info.exit_class if exit_info else None,
        }

    def failed(self, failure: Failure) -> None:
        """Errback: a page that could not be fetched (ProxaroGaveUp says what was tried)."""
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

    def _count(self, response: Response, *, product: bool) -> ExitInfo | None:
        if product:
            self.product_pages += 1
        else:
            self.listing_pages += 1
        # The middleware names the exit in meta, from the gateway's own headers: the answer's
        # over plain HTTP, the CONNECT answer's over HTTPS (a page's headers are the site's).
        exit_info: ExitInfo | None = response.meta.get("proxaro_exit")
        if exit_info is not None and exit_info.ip:
            self.exit_ips.add(exit_info.ip)
        self.pages_by_country[(exit_info.country if exit_info else None) or "unknown"] += 1
        if self.on_page is not None:
            self.on_page(self, response)
        return exit_info
