"""scrapy-playwright: a browser context per route for ``meta["playwright"]`` requests.

scrapy-playwright renders a request in the browser context named by
``meta["playwright_context"]``, made on first use with ``meta["playwright_context_kwargs"]``
(an existing name ignores new kwargs), and never uses ``meta["proxy"]``.  So for a request with
``meta["playwright"] = True`` the middleware does not put the route in ``meta["proxy"]`` (from
which ``HttpProxyMiddleware`` would make a ``Proxy-Authorization`` header that scrapy-playwright
copies onto the browser's request to the site) but names a context after the route
(:func:`~proxaro_scrape.integrations._playwright_edge.context_name`: the gateway username, with
target and session, and the credentials' version) and gives it the route as its ``proxy``
(``{server, username, password}``): the browser authenticates to the gateway itself.  A ban, a
moved session or new credentials give a new name, so a new context.

**No secret in a queued request.**  The password is put into
``meta["playwright_context_kwargs"]["proxy"]`` when the request reaches the downloader and taken
out when its answer (or failure) comes back, before a retry is made of it; a request scheduled
again is stripped of it too (:func:`strip`).

**The cap.**  ``PROXARO_PLAYWRIGHT_MAX_CONTEXTS`` (default 8) contexts at most are alive: the
least recently used idle one is closed (``BrowserContext.close()``, after which scrapy-playwright
forgets it) to make room, and when every context has pages in flight the request waits for
one.  scrapy-playwright's own ``PLAYWRIGHT_MAX_CONTEXTS`` never closes a context and waits for
one to close while holding its context-creation lock, which would stall every new page: leave
it unset.  A context through which a failure was seen (a ban, a dropped exit) is retired: it
closes when its last page is done, and the retry gets a new one.

**What is known.**  Over plain HTTP the navigation's response carries the gateway's
``X-Proxaro-*`` headers (``meta["proxaro_exit"]`` names the exit); over HTTPS the browser keeps
the CONNECT answer to itself, so the exit is ``None`` and only the site's status counts (a 407
there is the gateway refusing the credentials: Chromium never shows a site's own 407 inside a
tunnel).  Navigation failures are read by Chromium's network error code (one table).

``PROXARO_PLAYWRIGHT_CONTEXT_KWARGS`` (dict, ``{}``): more keywords for every routed context
(``ignore_https_errors``, ``locale``...), under a request's own ``playwright_context_kwargs``.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from scrapy.utils.httpobj import urlparse_cached

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from proxaro_scrape.gateway import RequestRouting, Route
    from proxaro_scrape.gateway.outcome import Outcome
    from proxaro_scrape.integrations._playwright_edge import ContextSlots, Slot

    _Key = tuple[str, int, str]  # (gateway username, credentials version, scheme)

__all__ = ["CONTEXT_PREFIX", "PlaywrightRoutes", "strip", "wanted"]

logger = logging.getLogger("proxaro_scrape.integrations.scrapy")

#: Every context the middleware names starts with this (no secret follows it).
CONTEXT_PREFIX = "proxaro:"
_KWARGS = "playwright_context_kwargs"
_HANDLERS = "playwright_page_event_handlers"
_DEFAULT_MAX_CONTEXTS = 8


def wanted(request: Request) -> bool:
    """Will scrapy-playwright render this request?"""
    return bool(request.meta.get("playwright"))


def strip(meta: dict[str, Any], *, name: bool = True) -> None:
    """Take what the middleware put on a browser request off it: the password, the page
    watcher, and (``name``) the context's name, which a request queued again must not keep."""
    kwargs = meta.get(_KWARGS)
    if isinstance(kwargs, dict) and "proxy" in kwargs:
        kwargs = dict(kwargs)
        del kwargs["proxy"]
        if kwargs:
            meta[_KWARGS] = kwargs
        else:
            del meta[_KWARGS]
    context = meta.get("playwright_context")
    if name and isinstance(context, str) and context.startswith(CONTEXT_PREFIX):
        del meta["playwright_context"]
    handlers = meta.get(_HANDLERS)
    if isinstance(handlers, dict):
        own = {k: v for k, v in handlers.items() if v not in _OURS}
        if own:
            meta[_HANDLERS] = own
        else:
            del meta[_HANDLERS]


class _Named:
    """A routed context as the middleware knows it: its name, and the Playwright context once a
    page of it has shown it (to close it)."""

    __slots__ = ("name", "context")

    def __init__(self, name: str) -> None:
        self.name = name
        self.context: Any = None


#: The page event handlers the middleware made (to tell them from a request's own).
_OURS: weakref.WeakSet[Any] = weakref.WeakSet()


class _Held:
    """What one attempt holds: its context slot, the navigation answers its page saw, and the
    first of its page's own requests the gateway refused (headers and URL), if any."""

    __slots__ = ("slot", "statuses", "refused")

    def __init__(self, slot: Slot[_Key, _Named]) -> None:
        self.slot = slot
        self.statuses: list[tuple[int, dict[str, str]]] = []
        self.refused: tuple[dict[str, str], str] | None = None


def _watcher(
    held: _Held, user: Any, frameless: type[Exception], refused_by_gateway: Callable[..., bool]
) -> Callable[[Any], Awaitable[None]]:
    """A ``response`` handler for one attempt's page: learns its context, keeps the main
    frame's navigation answers and the first of the page's requests the gateway refused
    (``refused_by_gateway``), then calls the request's own handler (``user``), if any.
    Lives in ``meta`` only while the request is being downloaded (see :func:`strip`).
    ``frameless``: what Playwright raises for a response without a frame (a service worker's)."""

    async def on_response(response: Any) -> None:
        try:
            frame = response.frame
            page = frame.page
            named = held.slot.value
            if named is not None and named.context is None:
                named.context = page.context
            if response.request.is_navigation_request() and frame == page.main_frame:
                # The status is what matters (and, rarely, an empty error page's headers):
                # the provisional headers need no round trip to the browser.
                held.statuses.append((response.status, response.headers))
            elif held.refused is None and refused_by_gateway(
                response.status, response.headers, response.url
            ):
                held.refused = (response.headers, response.url)
        except frameless:
            logger.debug("a response without a frame (a service worker's): not the page's")
        if user is not None:
            result = user(response)
            if inspect.isawaitable(result):
                await result

    _OURS.add(on_response)
    return on_response


class PlaywrightRoutes:
    """The browser side of :class:`~proxaro_scrape.integrations.scrapy.ProxaroDownloaderMiddleware`.

    Built with the middleware; imports Playwright only when the first browser request comes.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        settings = crawler.settings
        try:
            self.max_contexts = settings.getint(
                "PROXARO_PLAYWRIGHT_MAX_CONTEXTS", _DEFAULT_MAX_CONTEXTS
            )
            self.context_kwargs = dict(settings.getdict("PROXARO_PLAYWRIGHT_CONTEXT_KWARGS"))
        except (TypeError, ValueError):
            self.max_contexts = 0  # refused when the first browser request comes
            self.context_kwargs = {}
        self._slots: ContextSlots[_Key, _Named] | None = None
        self._held: dict[str, _Held] = {}
        self._newest_version = 0

    @property
    def peak(self) -> int:
        """The most routed contexts alive at once so far."""
        return self._slots.peak if self._slots is not None else 0

    async def route(self, request: Request, fid: str, route: Route) -> None:
        """Put ``route``'s context on ``request`` (at download time, never queued)."""
        from playwright.async_api import Error as PlaywrightError

        from proxaro_scrape.integrations._playwright_edge import (
            ContextSlots,
            context_name,
            context_proxy,
            refused_by_gateway,
        )

        if self.max_contexts < 1:
            from proxaro_scrape.errors import ConfigurationError

            raise ConfigurationError(
                "PROXARO_PLAYWRIGHT_MAX_CONTEXTS is a whole number of at least 1, and "
                "PROXARO_PLAYWRIGHT_CONTEXT_KWARGS a dict",
                param="PROXARO_PLAYWRIGHT_MAX_CONTEXTS",
            )
        if self._slots is None:
            self._slots = ContextSlots(self.max_contexts, self._close)
        stats = self.crawler.stats
        version = route.credentials_version
        if version > self._newest_version:
            self._newest_version = version
            await self._slots.retire_where(lambda key: key[1] < version)

        # scrapy-playwright runs one handler (one browser) per scheme: a context per scheme too.
        scheme = urlparse_cached(request).scheme

        async def make(generation: int) -> _Named:
            if stats is not None:
                stats.inc_value("proxaro/playwright/contexts")
            return _Named(f"{context_name(route, generation)}/{scheme}")

        slot = await self._slots.acquire((route.username, version, scheme), make)
        if stats is not None:
            stats.max_value("proxaro/playwright/contexts_max", self._slots.peak)
        assert slot.value is not None
        meta = request.meta
        meta.pop("proxy", None)  # scrapy-playwright ignores it; HttpProxyMiddleware would not
        request.headers.pop(b"Proxy-Authorization", None)
        meta["playwright_context"] = slot.value.name
        kwargs = {**self.context_kwargs, **(meta.get(_KWARGS) or {})}
        kwargs["proxy"] = context_proxy(route)
        meta[_KWARGS] = kwargs
        handlers = dict(meta.get(_HANDLERS) or {})
        user = handlers.get("response")
        if isinstance(user, str):
            user = getattr(self.crawler.spider, user, None)
        held = self._held[fid] = _Held(slot)
        handlers["response"] = _watcher(held, user, PlaywrightError, refused_by_gateway)
        meta[_HANDLERS] = handlers

    def take(self, request: Request, fid: Any) -> _Held | None:
        """The attempt's hold, with the password and the watcher taken off ``request`` (its
        context's name stays, for the callback to read)."""
        held = self._held.pop(fid, None) if self._held and fid is not None else None
        if held is not None:
            strip(request.meta, name=False)
        return held

    async def settle(self, held: _Held | None, ok: bool) -> None:
        """The attempt is over: give its context back, retired when it failed."""
        if held is None or self._slots is None:
            return
        if not ok:
            await self._slots.retire(held.slot)
        await self._slots.release(held.slot)

    def observe_refusal(self, held: _Held, rr: RequestRouting) -> Outcome | None:
        """The outcome of an attempt whose page had one of its own requests refused by the
        gateway (its render is incomplete, whatever the navigation said); ``None``: none was."""
        if held.refused is None:
            return None
        from proxaro_scrape.integrations._playwright_edge import observe_refusal

        headers, url = held.refused
        return observe_refusal(rr, headers, url)

    async def observe_error(
        self, held: _Held, rr: RequestRouting, exc: BaseException, tunnel: bool
    ) -> Outcome | None:
        """Observe a browser request that raised ``exc``; ``None``: not the gateway's."""
        from proxaro_scrape.integrations._playwright_edge import observe_navigation_error

        last = held.statuses[-1] if held.statuses else None
        outcome = observe_navigation_error(
            rr,
            exc,
            tunnel=tunnel,
            status=last[0] if last else None,
            headers=last[1] if last else None,
        )
        await self.settle(held, outcome is None or outcome.ok)
        return outcome

    async def _close(self, named: _Named) -> None:
        context = named.context or self._context_of(named.name)
        if context is None:
            return
        stats = self.crawler.stats
        if stats is not None:
            stats.inc_value("proxaro/playwright/contexts_closed")
        try:
            await context.close()
        except Exception as exc:  # noqa: BLE001 - the browser went first
            logger.debug("closing browser context %s: %s", named.name, type(exc).__name__)

    def _context_of(self, name: str) -> Any:
        """scrapy-playwright's context of ``name``, for a context no page has shown us."""
        engine = getattr(self.crawler, "engine", None)
        handlers = getattr(getattr(getattr(engine, "downloader", None), "handlers", None),
                           "_handlers", {})  # fmt: skip
        for handler in dict(handlers).values():
            wrapper = getattr(handler, "context_wrappers", {}).get(name)
            if wrapper is not None:
                return wrapper.context
        return None

    def clear(self) -> None:
        """Forget every hold (the spider closed; scrapy-playwright closes its contexts)."""
        self._held.clear()
