"""scrapy-playwright through the Proxaro gateway: browser pages in a context per route.

python examples/scrapy_playwright_spider.py

Needs ``pip install "proxaro-scrape[scrapy,playwright]"`` and a Chromium (``apt-get install
chromium``).  Without ``PROXARO_API_KEY`` it starts a local sandbox and renders the demo shop's
JavaScript listing and product pages (their content only a browser shows) from three countries;
with a key, set ``PROXARO_EXAMPLE_URL`` to a listing of yours and adapt the selectors.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import scrapy
from _demo import proxaro
from scrapy.crawler import AsyncCrawlerProcess
from scrapy_playwright.page import PageMethod

from proxaro_scrape.integrations.playwright import CHROMIUM_ARGS, find_chromium

#: Wait until the page's script has built its content (the demo shop marks it).
RENDERED = PageMethod("wait_for_selector", "#app[data-rendered]")
COUNTRIES = ("us", "de", "jp")


class JsShopSpider(scrapy.Spider):
    """The first listing page from three countries, then each product on it, in the browser."""

    name = "js_shop"

    def __init__(self, shop: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shop = shop
        self.exits: Counter[str] = Counter()

    async def start(self) -> Any:
        for country in COUNTRIES:
            yield scrapy.Request(
                f"{self.shop}/js/products?page=1&from={country}",
                meta={
                    "playwright": True,
                    "playwright_page_methods": [RENDERED],
                    "proxaro": {"country": country},  # the route: a context of its own
                    "proxaro_session": f"shop-{country}",  # one exit per country, sticky
                },
                cb_kwargs={"country": country},
            )

    def parse(self, response: scrapy.http.Response, country: str) -> Any:
        self.log_exit(response, country)
        for href in response.css("li.product a::attr(href)").getall()[:3]:
            yield response.follow(
                f"{href}?from={country}",  # the same products from each country
                self.parse_product,
                meta={
                    "playwright": True,
                    "playwright_page_methods": [RENDERED],
                    "proxaro": {"country": country},
                    "proxaro_session": f"shop-{country}",
                },
                cb_kwargs={"country": country},
            )

    def parse_product(self, response: scrapy.http.Response, country: str) -> Any:
        self.log_exit(response, country)
        yield {
            "country": country,
            "name": response.css("h1.name::text").get(),
            "price": response.css("span.price::text").get(),
        }

    def log_exit(self, response: scrapy.http.Response, country: str) -> None:
        # Plain HTTP: the gateway names the exit; HTTPS: the browser keeps it to itself.
        exit_info = response.meta.get("proxaro_exit")
        self.exits[exit_info.country if exit_info else f"{country} (not reported)"] += 1


def main() -> None:
    with proxaro() as (api_key, base_url, url):
        shop = os.environ.get("PROXARO_EXAMPLE_URL") or url.removesuffix("/ip")
        root = os.geteuid() == 0  # Chromium refuses to start as root with its sandbox
        handler = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"
        process = AsyncCrawlerProcess(
            {
                "ADDONS": {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0},
                "PROXARO_API_KEY": api_key,
                "PROXARO_BASE_URL": base_url,
                "DOWNLOAD_HANDLERS": {"http": handler, "https": handler},
                "PLAYWRIGHT_LAUNCH_OPTIONS": {
                    "executable_path": find_chromium(),
                    "args": [*CHROMIUM_ARGS, *(["--no-sandbox"] if root else [])],
                },
                # At most four browser contexts alive; the least recently used idle one closes.
                "PROXARO_PLAYWRIGHT_MAX_CONTEXTS": 4,
                # No images, fonts or media: residential bytes cost money.
                "PLAYWRIGHT_ABORT_REQUEST": (
                    "proxaro_scrape.integrations.playwright.is_heavy_request"
                ),
                "LOG_LEVEL": "WARNING",
                "TELNETCONSOLE_ENABLED": False,
                "ROBOTSTXT_OBEY": False,
            }
        )
        items: list[dict[str, Any]] = []

        def scraped(item: dict[str, Any]) -> None:
            items.append(item)

        crawler = process.create_crawler(JsShopSpider)
        crawler.signals.connect(scraped, scrapy.signals.item_scraped)
        process.crawl(crawler, shop=shop)
        process.start()
        for item in items:
            print(f"{item['country']}  {item['name']!r:<32} {item['price']}")
        spider = crawler.spider
        assert isinstance(spider, JsShopSpider)
        print("pages per exit country:", dict(spider.exits))
        stats = crawler.stats.get_stats() if crawler.stats else {}
        print(
            "browser contexts made:",
            stats.get("proxaro/playwright/contexts"),
            "most alive at once:",
            stats.get("proxaro/playwright/contexts_max"),
        )


if __name__ == "__main__":
    main()
