"""The add-on: ``ADDONS = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler

from ._handler import ProxaroDownloadHandler, handler_of
from ._middleware import MIDDLEWARE_PRIORITY, ProxaroDownloaderMiddleware

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

__all__ = ["ProxaroAddon"]


class ProxaroAddon:
    """Scrapy add-on: routes the crawl through Proxaro.

    - installs :class:`ProxaroDownloaderMiddleware` at :data:`MIDDLEWARE_PRIORITY` (unless it
      is already listed with a priority of your choice);
    - installs :class:`ProxaroDownloadHandler` for ``http`` and ``https`` where they use
      Scrapy's own HTTP/1.1 handler (a handler you chose is kept): it reads the gateway's
      answer to each CONNECT, so that ``meta["proxaro_exit"]`` names the exit over HTTPS too
      and a refused tunnel is classified by the gateway's own ``X-Proxaro-Error``, and it
      takes the credentials off each request once downloaded;
    - asks for the asyncio reactor where no one chose another (Scrapy's default since 2.7).
    """

    def update_settings(self, settings: BaseSettings) -> None:
        """Add the middleware and the download handler."""
        settings.setdefault_in_component_priority_dict(  # type: ignore[attr-defined]
            "DOWNLOADER_MIDDLEWARES", ProxaroDownloaderMiddleware, MIDDLEWARE_PRIORITY
        )
        for scheme in ("http", "https"):
            if handler_of(settings, scheme) is HTTP11DownloadHandler:
                # At add-on priority, inside the dict: a handler set in settings.py wins.
                settings["DOWNLOAD_HANDLERS"].set(scheme, ProxaroDownloadHandler, "addon")

    @classmethod
    def update_pre_crawler_settings(cls, settings: BaseSettings) -> None:
        """The asyncio reactor, at add-on priority: a project's own choice still wins."""
        settings.set(
            "TWISTED_REACTOR",
            "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
            priority="addon",
        )
