"""The middleware's crawl-long side: the manager's start and stop, stats, the usage cap.

:class:`Lifecycle` is the base of :class:`~._middleware.ProxaroDownloaderMiddleware`: what
happens once per crawl (spider opened and closed), apart from what happens once per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import CloseSpider

from proxaro_scrape.errors import ConfigurationError, ProxaroError

from ._settings import spider_target

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler

    from proxaro_scrape import AsyncProxaro
    from proxaro_scrape.gateway import GatewayConfig, GatewayManager, Target

    from ._settings import ProxaroSettings

__all__ = ["CLOSE_REASONS", "Lifecycle"]

logger = logging.getLogger("proxaro_scrape.integrations.scrapy")

#: Why the middleware closes a spider early: a wrong setting or spider attribute, the API
#: unable to start routing, the plan's bandwidth cap with ``PROXARO_USAGE_CAP_ACTION="stop"``.
CLOSE_REASONS = ("proxaro_config", "proxaro_start_failed", "proxaro_usage_cap")


class Lifecycle:
    """Start the gateway manager with the spider, stop it with the spider, copy the stats."""

    def __init__(
        self,
        crawler: Crawler,
        manager: GatewayManager | None,
        settings: ProxaroSettings | None,
        client: AsyncProxaro | None = None,
        *,
        config_error: ConfigurationError | None = None,
    ) -> None:
        self.crawler = crawler
        #: The gateway manager; ``None`` when a setting was wrong (``config_error``).
        self.manager = manager
        #: The checked ``PROXARO_*`` settings (``None`` when one was wrong).
        self.settings = settings
        #: The wrong setting, reported when the spider opens (which then closes at once).
        self.config_error = config_error
        self.stats: Any = crawler.stats
        self.spider_target: Target | None = None
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._started = False
        self._cap_noted = False

    @property
    def config(self) -> GatewayConfig | None:
        """The gateway options the settings gave (``None`` when one was wrong)."""
        return self.settings.config if self.settings is not None else None

    async def spider_opened(self, spider: Spider) -> None:
        """Start the gateway manager on the running loop; close the spider if it cannot."""
        if self.config_error is not None or self.manager is None:
            # One line that names the setting: nothing was sent, nothing will be.
            logger.error("Proxaro: %s", self.config_error)
            raise CloseSpider("proxaro_config")
        self._loop = asyncio.get_running_loop()
        try:
            self.spider_target = spider_target(getattr(spider, "proxaro_target", None))
        except ConfigurationError as exc:
            logger.error("Proxaro: %s.proxaro_target: %s", type(spider).__name__, exc)
            raise CloseSpider("proxaro_config") from None
        try:
            await self.manager.astart()
        except ProxaroError as exc:
            logger.error("Proxaro: %s", exc)
            raise CloseSpider("proxaro_start_failed") from None
        self._started = True
        if self.spider_target is not None:
            try:
                self.manager.check_target(self.spider_target)
            except ProxaroError as exc:
                logger.error("Proxaro: %s.proxaro_target: %s", type(spider).__name__, exc)
                raise CloseSpider("proxaro_config") from None
        self.manager.on_usage_cap(self._usage_cap)
        assert self.settings is not None
        interval = self.settings.stats_interval
        if interval is not None:
            self._stats_task = self._loop.create_task(self._copy_stats_every(interval))
        creds = self.manager.credentials
        config = self.settings.config
        logger.info(
            "Proxaro: routing through %s (target %s, sticky %s, failover %s)",
            creds.gateway_url if creds is not None else "?",
            (self.spider_target or self.manager.default_target).describe(),
            self.settings.sticky,
            "on" if config.failover is not False else "off",
        )

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        """Copy the counters into the stats, log the summary, stop the manager."""
        task, self._stats_task = self._stats_task, None
        if task is not None:
            task.cancel()
        if self._started:
            self.copy_stats()
            logger.info("Proxaro: %s", self.summary())
        self._started = False
        if self.manager is not None:
            await self.manager.aclose()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()  # ours: the manager does not close a client it was given

    def copy_stats(self) -> None:
        """Copy the gateway manager's counters into the crawl stats under ``proxaro/``."""
        if self.manager is None:
            return
        set_value = self.stats.set_value
        for key, value in self.manager.stats().items():
            set_value(f"proxaro/{key}", value)
        evicted = getattr(getattr(self, "flights", None), "evicted", 0)
        if evicted:
            set_value("proxaro/flights_forgotten", evicted)

    def summary(self) -> str:
        """One line: requests, retries, bans, failovers, refreshes, exits, per country."""
        s = self.manager.stats() if self.manager is not None else {}
        gave_up = self.stats.get_value("proxaro/gave_up", 0)
        countries = sorted(
            ((k.rsplit("/", 1)[1], v) for k, v in s.items() if k.startswith("requests/country/")),
            key=lambda kv: (-kv[1], kv[0]),
        )
        by_country = ", ".join(f"{c}={n}" for c, n in countries) or "-"
        return (
            f"{s.get('requests', 0)} requests routed ({s.get('retries', 0)} retries), "
            f"{s.get('successes', 0)} answered, {s.get('bans', 0)} bans, "
            f"{s.get('failovers', 0)} failovers, "
            f"credentials fetched {s.get('credential_refreshes', 0)} times "
            f"({s.get('rotations', 0)} rotations), {s.get('exits_used', 0)} exits used, "
            f"{gave_up} gave up; by country: {by_country}"
        )

    async def _copy_stats_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.copy_stats()

    def _usage_cap(self) -> None:
        """Usage reached the cap with action "stop": close the spider (from any thread)."""
        loop = self._loop
        if loop is None:
            return

        def close() -> None:
            engine = getattr(self.crawler, "engine", None)
            if engine is None or getattr(engine, "spider", None) is None:
                return
            logger.error("Proxaro: the plan's bandwidth cap is reached: closing the spider")
            close_async = getattr(engine, "close_spider_async", None)  # Scrapy >= 2.14
            if close_async is not None:
                asyncio.ensure_future(close_async(reason="proxaro_usage_cap"))
            else:  # pragma: no cover - Scrapy 2.13
                engine.close_spider(engine.spider, reason="proxaro_usage_cap")

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            close()
        else:
            try:
                loop.call_soon_threadsafe(close)
            except RuntimeError:  # the loop is closed: the crawl is over anyway
                pass

    def _count_error(self, name: str) -> None:
        self.stats.inc_value(f"proxaro/errors/{name}")
