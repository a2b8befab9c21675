"""``scrapy crawl``, exiting 1 when Proxaro closed the spider because it could not route."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawl

if TYPE_CHECKING:
    import argparse

    from scrapy import Spider
    from scrapy.crawler import Crawler

__all__ = ["FAILED_REASONS", "Command"]

#: Close reasons that mean nothing could be crawled: the exit status says so.
FAILED_REASONS = frozenset({"proxaro_config", "proxaro_start_failed"})


class Command(ScrapyCrawl):
    """Scrapy's ``crawl``; the exit status is 1 when the spider closed for a reason in
    :data:`FAILED_REASONS` (the error line that says why is in the log)."""

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        """Run the crawl as Scrapy does, then look at why it closed."""
        self._crawlers: list[Crawler] = []
        super().run(args, opts)
        for crawler in self._crawlers:
            stats = crawler.stats
            if stats is not None and stats.get_value("finish_reason") in FAILED_REASONS:
                self.exitcode = 1

    def _create_crawler(self, spidercls: type[Spider] | str) -> Crawler:
        # Scrapy's run() builds its crawler here; keep it to read its stats afterwards.
        crawler = super()._create_crawler(spidercls)
        self._crawlers.append(crawler)
        return crawler
