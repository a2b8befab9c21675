"""A sustained Scrapy crawl for the fault, load and secrets suites: every request ends once.

:class:`Sustained` keeps ``concurrency`` chains of ``GET /headers`` requests going (each request
that ends, in its callback or its errback, sends the next) until :meth:`Sustained.stop`, or
until ``limit`` requests were sent.  Each request carries an ``X-Request-Id`` naming it, which
the site echoes back, so an answer handed to the wrong request is caught.
:meth:`Sustained.check` asserts the same invariants as ``tests/_traffic.py`` (sent =
responses + explicit failures, each request ended once, no bare exception, no misdelivered
answer).  :func:`crawl_under` runs a crawl in-process (asyncio
reactor, pytest-twisted) while a fault script runs beside it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import Crawler, CrawlerRunner
from scrapy.exceptions import DontCloseSpider
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from proxaro_scrape import GatewayManager, ProxaroError
from proxaro_scrape.integrations.scrapy import (
    ProxaroAddon,
    ProxaroDownloaderMiddleware,
    ProxaroGaveUp,
)
from tests._support import aeventually

#: Request chains (and CONCURRENT_REQUESTS) of a fault-suite crawl.
CONCURRENCY = 12


class Sustained(scrapy.Spider):
    """``concurrency`` chains of ``GET /headers`` requests, until ``stop()`` or ``limit`` sent.

    ``bases`` are the site URLs the requests cycle through (plain HTTP and HTTPS).  With
    ``chain=False`` the requests come in ``batches`` of ``limit``, all at once, and
    ``CONCURRENT_REQUESTS`` alone sets how many are in flight, as in an ordinary crawl: the
    first batch from ``start()``, each next one when the crawl has gone idle after the one
    before (``spider_idle``: every answer handled, nothing in flight), where
    ``on_batch(n)`` is called first, so a measurement there sees a quiet crawl.
    ``max_active`` is the most requests the downloader held at once.
    """

    name = "sustained"

    def __init__(
        self,
        bases: list[str],
        concurrency: int = CONCURRENCY,
        limit: int = 1_000_000,
        chain: bool = True,
        batches: int = 1,
        on_batch: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bases = bases
        self.concurrency = concurrency
        self.limit = limit
        self.chain = chain
        self.batches = batches
        self.batch = 1
        self.on_batch = on_batch
        self.max_active = 0
        self.sent = 0
        self.responses = 0
        self.failures: Counter[str] = Counter()
        self.bare: list[str] = []
        self.wrong: list[str] = []
        self.ends: Counter[int] = Counter()
        self.phase = "before"
        self.phases: dict[str, Counter[str]] = {}
        self.exit_countries: dict[str, Counter[str]] = {}
        self.samples: dict[str, list[str]] = {}
        #: The first errors met (the exceptions themselves), for inspection.
        self.errors: list[BaseException] = []
        self.stopped = False

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Sustained:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider._idle, signal=signals.spider_idle)
        return spider  # type: ignore[no-any-return]

    def _idle(self) -> None:
        if self.chain or len(self.ends) != self.sent:
            return
        if self.on_batch is not None:
            self.on_batch(self.batch)
        if self.batch < self.batches and not self.stopped:
            self.batch += 1
            assert self.crawler.engine is not None
            for _ in range(self.limit):
                self.crawler.engine.crawl(self.next_request())
            raise DontCloseSpider

    def stop(self) -> None:
        """Send nothing more; the requests in flight still end."""
        self.stopped = True

    async def start(self) -> Any:
        # Scrapy takes start requests lazily, while the first answers already send their
        # successors: check the limit before each one.
        for _ in range(self.concurrency if self.chain else self.limit):
            if self.stopped or self.sent >= self.limit:
                return
            yield self.next_request()

    def next_request(self) -> scrapy.Request:
        self.sent += 1
        rid = self.sent
        base = self.bases[rid % len(self.bases)]
        return scrapy.Request(
            f"{base}/headers?rid={rid}",
            headers={"X-Request-Id": f"rid-{rid}"},
            callback=self.parse,
            errback=self.failed,
            dont_filter=True,
            meta={"rid": rid, "phase": self.phase},
        )

    def _end(self, meta: dict[str, Any], what: str) -> Iterator[scrapy.Request]:
        self.ends[meta["rid"]] += 1
        self.phases.setdefault(meta["phase"], Counter())[what] += 1
        engine = self.crawler.engine if self.crawler is not None else None
        if engine is not None:
            self.max_active = max(self.max_active, len(engine.downloader.active))
        if self.chain and not self.stopped and self.sent < self.limit:
            yield self.next_request()

    def parse(self, response: scrapy.http.Response) -> Iterator[scrapy.Request]:
        meta = response.meta
        self.responses += 1
        try:
            echoed = json.loads(response.text)["headers"].get("X-Request-Id")
        except (ValueError, KeyError, AttributeError):
            echoed = None
        if echoed != f"rid-{meta['rid']}":
            self.wrong.append(f"rid {meta['rid']}: {response.status} {response.text[:100]!r}")
        country = response.headers.get("X-Proxaro-Exit-Country")
        if country is not None:
            shown = country.decode()
            self.exit_countries.setdefault(meta["phase"], Counter())[shown] += 1
        yield from self._end(meta, "response")

    def failed(self, failure: Any) -> Iterator[scrapy.Request]:
        exc = failure.value
        name = type(exc).__name__
        if isinstance(exc, (ProxaroError, ProxaroGaveUp)):
            self.failures[name] += 1
        else:
            self.bare.append(f"{name}: {exc!r}"[:300])
        if len(self.errors) < 50:
            self.errors.append(exc)
        kept = self.samples.setdefault(name, [])
        if len(kept) < 3:
            kept.append(str(exc)[:240])
        yield from self._end(failure.request.meta, name)

    def figures(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "responses": self.responses,
            "explicit_failures": dict(self.failures),
            "bare_exceptions": len(self.bare),
            "answered_twice": sum(1 for n in self.ends.values() if n > 1),
            "lost": self.sent - len(self.ends),
            "max_active_in_downloader": self.max_active,
            "misdelivered": len(self.wrong),
            "by_phase": {p: dict(c) for p, c in self.phases.items()},
            "exit_countries": {p: dict(c) for p, c in self.exit_countries.items()},
            "failure_samples": self.samples,
        }

    def check(self) -> None:
        """The invariants every crawl must hold, whatever the fault."""
        assert not self.bare, self.bare[:5]
        assert not self.wrong, self.wrong[:5]
        twice = [rid for rid, n in self.ends.items() if n != 1]
        assert not twice, f"requests that ended more than once: {twice[:10]}"
        assert len(self.ends) == self.sent, f"{self.sent - len(self.ends)} requests lost"
        assert self.sent == self.responses + sum(self.failures.values()), self.figures()


def settings_for(sb: Any, **extra: Any) -> dict[str, Any]:
    """Crawl settings with the add-on, pointed at the sandbox ``sb`` (in-process or not)."""
    return {
        "ADDONS": {ProxaroAddon: 0},
        "PROXARO_API_KEY": sb.api_key,
        "PROXARO_BASE_URL": sb.api_url,
        "TELNETCONSOLE_ENABLED": False,
        "MEMUSAGE_ENABLED": False,
        "CONCURRENT_REQUESTS": CONCURRENCY,
        "CONCURRENT_REQUESTS_PER_DOMAIN": CONCURRENCY,
        "DOWNLOAD_DELAY": 0,
        "ROBOTSTXT_OBEY": False,
        "LOG_LEVEL": "INFO",
        **extra,
    }


async def sleep(seconds: float) -> None:
    """Sleep on the reactor."""
    await deferLater(reactor, seconds, lambda: None)


async def control(sb: Any, name: str, **body: Any) -> Any:
    """A sandbox control from a worker thread: the reactor keeps crawling meanwhile."""
    return await threads.deferToThread(sb.control, name, **body)


async def crawl_under(
    settings: dict[str, Any],
    script: Callable[[Sustained], Awaitable[None]] | None,
    bases: list[str],
    **spider_kw: Any,
) -> tuple[Crawler, Sustained]:
    """Crawl with :class:`Sustained` while ``script(spider)`` runs; the script's end stops the
    crawl (no script: the crawl ends after ``limit`` requests)."""
    runner = CrawlerRunner(settings)
    crawler = runner.create_crawler(Sustained)
    done = runner.crawl(crawler, bases=bases, **spider_kw)
    spider: Sustained = await aeventually(
        lambda: crawler.spider, message="the spider never opened", sleep=sleep
    )
    try:
        if script is not None:
            await script(spider)
    finally:
        if script is not None:
            spider.stop()
        await done
    return crawler, spider


def stats_of(crawler: Crawler) -> dict[str, Any]:
    """The crawl's ``proxaro/`` stats (without the per-country ones) and a few of Scrapy's."""
    assert crawler.stats is not None
    keep = ("finish_reason", "downloader/request_count", "downloader/response_count")
    return {
        k: v
        for k, v in crawler.stats.get_stats().items()
        if (k.startswith("proxaro/") and not k.startswith("proxaro/requests/")) or k in keep
    }


def manager_of(crawler: Crawler) -> GatewayManager:
    """The gateway manager of the crawl's Proxaro middleware."""
    assert crawler.engine is not None
    for mw in crawler.engine.downloader.middleware.middlewares:
        if isinstance(mw, ProxaroDownloaderMiddleware):
            return mw.manager
    raise AssertionError("no ProxaroDownloaderMiddleware in this crawl")


async def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` on the reactor until it holds (``True``); fails the test past
    ``timeout`` seconds (a bound for a broken test only: tests/_support.py's ``aeventually``)."""
    await aeventually(predicate, timeout, interval=0.05, sleep=sleep)
    return True
