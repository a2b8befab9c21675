"""Run the ``products`` spider in-process (what ``proxaro-scrape demo`` does), not via ``scrapy``.

    import sys; sys.path.insert(0, "examples/scrapy_shop")
    from shop.run import crawl
    result = crawl("http://127.0.0.1:PORT", PROXARO_BASE_URL=..., PROXARO_API_KEY=...)
    print(result.summary, result.stats["proxaro/bans"])

:func:`crawl` blocks: it runs Twisted's reactor with ``CrawlerProcess``, once per process.  A
program that already runs the reactor uses :func:`project_settings` with ``CrawlerRunner`` (or
``AsyncCrawlerRunner``) and ``ProductsSpider`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scrapy.crawler import Crawler, CrawlerProcess
from scrapy.settings import Settings

from shop.spiders.products import ProductsSpider

__all__ = ["CrawlResult", "ProductsSpider", "crawl", "project_settings"]


def project_settings(**overrides: Any) -> Settings:
    """The project's settings (``shop.settings``) with ``overrides`` on top (cmdline priority)."""
    settings = Settings()
    settings.setmodule("shop.settings", priority="project")
    settings.update(overrides, priority="cmdline")
    return settings


@dataclass
class CrawlResult:
    """What one crawl left: the spider (its counters), the crawl stats, the finish reason."""

    spider: ProductsSpider
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
    """Crawl the shop at ``site_url`` with the project's settings plus ``overrides`` (blocking)."""
    process = CrawlerProcess(project_settings(**overrides))
    crawler: Crawler = process.create_crawler(ProductsSpider)
    process.crawl(crawler, site_url=site_url, **(spider_kwargs or {}))
    process.start()
    spider = crawler.spider
    assert isinstance(spider, ProductsSpider)
    return CrawlResult(spider, dict(crawler.stats.get_stats()))
