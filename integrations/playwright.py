"""Playwright (async): browser pages through the Proxaro gateway, one context per route.

::

    from playwright.async_api import async_playwright
    from proxaro_scrape import GatewayManager
    from proxaro_scrape.integrations.playwright import ProxaroBrowser, launch_chromium

    async with GatewayManager(target={"country": "us"}) as mgr, async_playwright() as pw:
        browser = await launch_chromium(pw)               # the system Chromium, headless
        async with ProxaroBrowser(mgr, browser, max_contexts=8, block_resources=True) as pages:
            async with pages.open("https://shop.example/js/product/7",
                                  target={"country": "de"}, session_key="cart42") as visit:
                await visit.page.locator("h1.name").wait_for()
                print(visit.status, await visit.page.title())

**A context per route.**  A Playwright browser context has one proxy for all its pages, set
when it is made.  So each route (the gateway username: target and sticky session; and the
credentials' version) gets a context of its own whose ``proxy`` is ``{server, username,
password}``: the browser authenticates to the gateway itself (on each CONNECT, or on each
plain-HTTP request), and every request of the page, subresources and scripts' fetches included,
leaves through that context, so through the same route (with a ``session_key``, the same
exit).  No ``Proxy-Authorization`` request header is ever set: the site never sees the
credentials.  Contexts are kept in an LRU of ``max_contexts``: the least recently used idle one
is closed to make room; when every context has open pages, :meth:`ProxaroBrowser.open` waits
for one to be closed, so the browser never holds more than ``max_contexts`` contexts.

**The same rules as every stack** (:mod:`proxaro_scrape.gateway.edge`): the navigation's
answer is observed under the trust rule (over plain HTTP the gateway's ``X-Proxaro-*`` headers
are on the response; over HTTPS the browser keeps the CONNECT answer to itself, so the exit is
``None`` and only the site's status is known), a ban (403/429 by default, or the manager's
``is_ban``) moves the page to a new session in a new context and retries, a dead region fails
over, a refused password refreshes the credentials once and retries in a context with the new
ones.  Navigation failures are classified by Chromium's network error code (one table, in
:mod:`proxaro_scrape.integrations._playwright_edge`).  When the attempts are spent,
:class:`~proxaro_scrape.AttemptsExhaustedError` is raised.  A context through which a failure
was seen is retired (closed once its pages are), so a retry never meets the same burnt tunnel.

**Bandwidth**: ``block_resources=True`` aborts images, fonts and media in every context
(residential bytes cost money); or pass the resource types to block.

Needs ``pip install "proxaro-scrape[playwright]"`` and a Chromium: Debian's ``chromium``
package (``apt-get install chromium``) or ``playwright install chromium``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection, Generator, Hashable, Mapping
from typing import Any, Literal, get_args

try:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright, Response
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import Request as PlaywrightRequest
    from playwright.async_api import Route as PlaywrightRoute
except ImportError as _exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "proxaro_scrape.integrations.playwright needs Playwright: "
        'pip install "proxaro-scrape[playwright]" (and a Chromium: apt-get install chromium)'
    ) from _exc

from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.gateway import ExitInfo, GatewayManager, RequestRouting, Target
from proxaro_scrape.gateway.edge import (
    PROXY_AUTHORIZATION,
    UNSET,
    check_spec,
    observe_answer,
    run_async,
    short_url,
)
from proxaro_scrape.gateway.outcome import Outcome

from ._playwright_edge import (
    HEAVY_RESOURCE_TYPES,
    ContextSlots,
    Slot,
    context_proxy,
    is_heavy,
    observe_navigation_error,
    observe_refusal,
    refused_by_gateway,
)

__all__ = [
    "CHROMIUM_ARGS",
    "BrowserNotFoundError",
    "BrowserPage",
    "ProxaroBrowser",
    "find_chromium",
    "is_heavy_request",
    "launch_chromium",
]

logger = logging.getLogger("proxaro_scrape.integrations.playwright")

#: Chromium switches for a scraper: no background traffic of Chromium's own (it would leave
#: through no proxy, and fails noisily on a machine without a route out), no first-run work,
#: no GPU.  ``--no-sandbox`` is added when running as root, where Chromium refuses to start
#: with its sandbox.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-gpu",
)
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_INSTALL_HINT = (
    'install it with "apt-get install chromium" (Debian, Ubuntu) or "playwright install '
    'chromium", or pass executable_path='
)

WaitUntil = Literal["commit", "domcontentloaded", "load", "networkidle"]
_Key = tuple[str, int]  # (gateway username, credentials version)


def is_heavy_request(request: PlaywrightRequest) -> bool:
    """Is ``request`` an image, a font or media?  The bandwidth saver's rule, for
    scrapy-playwright: ``PLAYWRIGHT_ABORT_REQUEST =
    "proxaro_scrape.integrations.playwright.is_heavy_request"``."""
    return is_heavy(request.resource_type)


class BrowserNotFoundError(ConfigurationError):
    """No Chromium to launch; the message says what to install (``param``:
    ``executable_path``)."""


def find_chromium(executable_path: str | os.PathLike[str] | None = None) -> str:
    """The Chromium to launch: ``executable_path`` when given (it must be an executable file),
    else the first of ``chromium``, ``chromium-browser``, ``google-chrome`` on ``PATH``.

    Raises :class:`BrowserNotFoundError`, naming what to install.  ``None`` is never returned:
    Playwright's own downloaded browser is used by passing no ``executable_path`` to
    Playwright yourself.
    """
    if executable_path is not None:
        path = os.fspath(executable_path)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise BrowserNotFoundError(
            f"no Chromium at {path} (executable_path): {_INSTALL_HINT}",
            param="executable_path",
        )
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserNotFoundError(
        f"no Chromium found on PATH ({', '.join(_CHROMIUM_NAMES)}): {_INSTALL_HINT}",
        param="executable_path",
    )


async def launch_chromium(
    playwright: Playwright,
    *,
    executable_path: str | os.PathLike[str] | None = None,
    headless: bool = True,
    args: Collection[str] = (),
    **launch_options: Any,
) -> Browser:
    """Launch Chromium for scraping: :func:`find_chromium`'s executable, :data:`CHROMIUM_ARGS`
    (and ``--no-sandbox`` as root) before your ``args``; other keywords go to
    ``playwright.chromium.launch``.  Raises :class:`BrowserNotFoundError` when there is none."""
    path = find_chromium(executable_path)
    switches = list(CHROMIUM_ARGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        switches.append("--no-sandbox")
    switches.extend(args)
    try:
        return await playwright.chromium.launch(
            executable_path=path, headless=headless, args=switches, **launch_options
        )
    except PlaywrightError as exc:
        raise BrowserNotFoundError(
            f"Chromium at {path} did not start ({exc.message.splitlines()[0]}): {_INSTALL_HINT}",
            param="executable_path",
        ) from exc


class BrowserPage:
    """A page opened through the gateway by :meth:`ProxaroBrowser.open`.

    ``page`` is the Playwright :class:`~playwright.async_api.Page`; ``response`` the navigation's
    final response (``None`` when Playwright gave none); ``status`` its status; ``exit`` the
    :class:`~proxaro_scrape.ExitInfo` the gateway named (plain HTTP only: over HTTPS the browser
    hides the CONNECT answer, so ``None``); ``target`` the concrete target and ``session_id``
    the sticky session it went through.  Close it (``await visit.close()``, or use it as an
    async context manager) when done: its context cannot be closed or reused by another route
    while it is open.  Closing the Playwright page directly releases it too.
    """

    __slots__ = ("page", "response", "exit", "target", "session_id", "_owner", "_slot")

    def __init__(
        self,
        owner: ProxaroBrowser,
        slot: Slot[_Key, BrowserContext],
        page: Page,
        response: Response | None,
        exit_info: ExitInfo | None,
        target: Target,
        session_id: str | None,
    ) -> None:
        self.page = page
        self.response = response
        self.exit = exit_info
        self.target = target
        self.session_id = session_id
        self._owner = owner
        self._slot: Slot[_Key, BrowserContext] | None = slot

    def __repr__(self) -> str:
        return (
            f"<BrowserPage {short_url(self.page.url)} status={self.status} "
            f"target={self.target!r} session_id={self.session_id!r}>"
        )

    @property
    def status(self) -> int | None:
        """The navigation response's status (``None`` without a response)."""
        return self.response.status if self.response is not None else None

    async def close(self) -> None:
        """Close the page and give its context back (idempotent)."""
        if not self.page.is_closed():
            try:
                await self.page.close()
            except PlaywrightError:
                pass  # the context or the browser went first
        await self._release()

    async def _release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            await self._owner._slots.release(slot)

    async def __aenter__(self) -> BrowserPage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Opening:
    """What :meth:`ProxaroBrowser.open` returns: await it, or ``async with`` it."""

    __slots__ = ("_coro", "_visit")

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._visit: BrowserPage | None = None

    def __await__(self) -> Generator[Any, None, BrowserPage]:
        return self._coro.__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> BrowserPage:
        self._visit = await self._coro
        return self._visit

    async def __aexit__(self, *exc: object) -> None:
        if self._visit is not None:
            await self._visit.close()


class ProxaroBrowser:
    """Open pages of ``browser`` through ``manager``'s routes (see the module docstring).

    ``manager``: a started :class:`~proxaro_scrape.GatewayManager` (``await mgr.astart()``),
    neither started nor closed here.  ``browser``: a Playwright :class:`Browser` (yours to close;
    :func:`launch_chromium` makes one).  ``target``: the default target of :meth:`open` (``None``:
    the manager's).  ``max_contexts``: most browser contexts alive at once.
    ``block_resources``: ``True`` to abort images, fonts and media, or a collection of Playwright
    resource types to abort.  ``context_options``: more keywords for ``browser.new_context``
    (``ignore_https_errors``, ``locale``, ``user_agent``...; not ``proxy``, which is the
    route's).  ``wait_until`` and ``timeout`` (milliseconds) go to ``page.goto``.

    Use it as an async context manager, or call :meth:`aclose`: it closes the contexts it made.
    """

    def __init__(
        self,
        manager: GatewayManager,
        browser: Browser,
        *,
        target: Target | Mapping[str, Any] | None = None,
        max_contexts: int = 8,
        block_resources: bool | Collection[str] = False,
        context_options: Mapping[str, Any] | None = None,
        wait_until: WaitUntil = "load",
        timeout: float | None = None,
    ) -> None:
        if not isinstance(manager, GatewayManager):
            raise ConfigurationError(
                "the first argument is a started GatewayManager", param="manager"
            )
        if not isinstance(browser, Browser):
            raise ConfigurationError(
                "the second argument is a Playwright Browser (launch_chromium(playwright))",
                param="browser",
            )
        if isinstance(max_contexts, bool) or not isinstance(max_contexts, int) or max_contexts < 1:
            raise ConfigurationError(
                f"max_contexts is a whole number of at least 1, got {max_contexts!r}",
                param="max_contexts",
            )
        options = dict(context_options or {})
        if "proxy" in options:
            raise ConfigurationError(
                "context_options may not set proxy: each context's proxy is its route's",
                param="context_options",
            )
        extra = options.get("extra_http_headers") or {}
        if any(str(name).lower() == PROXY_AUTHORIZATION.lower() for name in extra):
            raise ConfigurationError(
                "context_options may not send Proxy-Authorization: it would reach the site; "
                "the browser authenticates to the gateway itself",
                param="context_options",
            )
        if wait_until not in get_args(WaitUntil):
            raise ConfigurationError(
                f"wait_until is one of {', '.join(get_args(WaitUntil))}, got {wait_until!r}",
                param="wait_until",
            )
        spec = check_spec(target)
        if spec is False:
            raise ConfigurationError(
                "target=False (no proxy) is not a route; use a plain browser context",
                param="target",
            )
        if block_resources is True:
            blocked: frozenset[str] = HEAVY_RESOURCE_TYPES
        elif block_resources is False:
            blocked = frozenset()
        elif isinstance(block_resources, str) or not all(
            isinstance(t, str) for t in block_resources
        ):
            raise ConfigurationError(
                "block_resources is True, False or a collection of resource types",
                param="block_resources",
            )
        else:
            blocked = frozenset(block_resources)
        self.manager = manager
        self.browser = browser
        self._target: Any = None if spec is UNSET else spec
        self._options = options
        self._blocked = blocked
        self._wait_until = wait_until
        self._timeout = timeout
        self._newest_version = 0
        self._slots: ContextSlots[_Key, BrowserContext] = ContextSlots(max_contexts, _close_context)

    def __repr__(self) -> str:
        return (
            f"<ProxaroBrowser contexts={len(self._slots)}/{self._slots.maxsize} "
            f"target={self._target!r}>"
        )

    @property
    def contexts(self) -> int:
        """Browser contexts alive now (in use, idle, or being closed)."""
        return len(self._slots)

    @property
    def peak_contexts(self) -> int:
        """The most browser contexts alive at once so far (never above ``max_contexts``)."""
        return self._slots.peak

    async def _new_context(self, route: Any, generation: int) -> BrowserContext:
        context = await self.browser.new_context(proxy=context_proxy(route), **self._options)
        if self._blocked:
            blocked = self._blocked

            async def saver(route: PlaywrightRoute) -> None:
                if route.request.resource_type in blocked:
                    await route.abort("blockedbyclient")
                else:
                    await route.fallback()

            await context.route("**/*", saver)
        logger.debug("browser context for %s (generation %d)", route.username, generation)
        return context

    def open(
        self,
        url: str,
        *,
        target: Target | Mapping[str, Any] | None = UNSET,
        session_key: Hashable | None = None,
        referer: str | None = None,
    ) -> _Opening:
        """Open ``url`` in a new page of its route's context: a :class:`BrowserPage`.

        ``await pages.open(url)`` (then ``await visit.close()``) or ``async with
        pages.open(url) as visit``.  ``target`` replaces the default target for this page;
        ``session_key`` (hashable) makes it sticky: the same key, the same exit, while it works.
        Raises :class:`~proxaro_scrape.AttemptsExhaustedError` when every attempt failed, the
        manager's errors for a refused target, and Playwright's own for the rest (a bad URL).
        """
        spec = check_spec(target)
        if spec is False:
            raise ConfigurationError("target=False (no proxy) is not a route", param="target")
        return _Opening(self._open(url, self._target if spec is UNSET else spec, session_key,
                                   referer))  # fmt: skip

    async def _open(
        self, url: str, target: Any, session_key: Hashable | None, referer: str | None
    ) -> BrowserPage:
        rr = self.manager.request(url, target, session_key)
        tunnel = url[:6].lower() == "https:"

        async def attempt(route: Any) -> tuple[BrowserPage | None, Outcome, Exception | None]:
            return await self._attempt(rr, route, url, tunnel, referer)

        return await run_async(self.manager, rr, attempt, method="GET")

    async def _attempt(
        self, rr: RequestRouting, route: Any, url: str, tunnel: bool, referer: str | None
    ) -> tuple[BrowserPage | None, Outcome, Exception | None]:
        version = route.credentials_version
        if version > self._newest_version:
            # New credentials: contexts made with older ones close as their pages are done.
            self._newest_version = version
            await self._slots.retire_where(lambda key: key[1] < version)
        slot = await self._slots.acquire(
            (route.username, version), lambda generation: self._new_context(route, generation)
        )
        context = slot.value
        assert context is not None
        page: Page | None = None
        try:
            page = await context.new_page()
            main_frame = page.main_frame
            seen: list[Response] = []
            refused: list[Response] = []

            def on_response(response: Response) -> None:
                # The main frame's navigation answers: a failed navigation still shows its status.
                if response.request.is_navigation_request() and response.frame == main_frame:
                    seen.append(response)
                elif refused_by_gateway(response.status, response.headers, response.url):
                    refused.append(response)  # the page's own request: credentials refused

            page.on("response", on_response)
            try:
                response = await page.goto(
                    url, wait_until=self._wait_until, timeout=self._timeout, referer=referer
                )
            except PlaywrightError as exc:
                last = seen[-1] if seen else None
                headers = await last.all_headers() if last is not None else None
                nav = observe_navigation_error(
                    rr,
                    exc,
                    tunnel=tunnel,
                    status=last.status if last is not None else None,
                    headers=headers,
                )
                if nav is None:
                    raise  # the caller's (a bad URL, a download): the finally cleans up
                if nav.ok:
                    # The site's own empty error page: its answer, like any other.
                    return self._keep(slot, page, last, nav, route), nav, None
                await self._drop(slot, page)
                page = None
                return None, nav, exc
            finally:
                if page is not None:
                    page.remove_listener("response", on_response)
            if refused:
                # Loaded, but not whole: the page's own requests were refused (see the edge).
                outcome = observe_refusal(rr, refused[0].headers, refused[0].url)
            else:
                outcome = await self._observe(rr, response, tunnel)
            if outcome.ok:
                visit = self._keep(slot, page, response, outcome, route)
                page = None
                return visit, outcome, None
            await self._drop(slot, page)
            page = None
            return None, outcome, None
        except BaseException:
            if page is not None:
                await self._drop(slot, page, retire=False)
            else:
                await self._slots.release(slot)
            raise

    async def _observe(
        self, rr: RequestRouting, response: Response | None, tunnel: bool
    ) -> Outcome:
        if response is None:
            # Playwright gives no response for a same-document navigation: nothing came back
            # through the gateway to judge.  Read as the site's answer, with no exit.
            return observe_answer(rr, 200, (), tunnel=True)
        headers = await response.all_headers()
        body = await response.body() if rr.is_ban is not None else None
        # Over HTTPS the response's X-Proxaro-* are the site's; the CONNECT answer is hidden.
        return observe_answer(rr, response.status, headers, tunnel=tunnel, body=body)

    def _keep(
        self,
        slot: Slot[_Key, BrowserContext],
        page: Page,
        response: Response | None,
        outcome: Outcome,
        route: Any,
    ) -> BrowserPage:
        visit = BrowserPage(self, slot, page, response, outcome.exit, route.target,
                            route.session_id)  # fmt: skip

        async def closed(_: Page) -> None:
            await visit._release()

        page.once("close", closed)
        return visit

    async def _drop(
        self, slot: Slot[_Key, BrowserContext], page: Page, *, retire: bool = True
    ) -> None:
        """A failed attempt: its page goes, and so does its context (a burnt tunnel or exit)."""
        try:
            await page.close()
        except PlaywrightError:
            pass
        if retire:
            await self._slots.retire(slot)
        await self._slots.release(slot)

    async def aclose(self) -> None:
        """Close every context this helper made (the browser stays open: it is yours)."""
        await self._slots.aclose()

    async def __aenter__(self) -> ProxaroBrowser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _close_context(context: BrowserContext) -> None:
    try:
        await context.close()
    except PlaywrightError:
        pass  # the browser is gone already
