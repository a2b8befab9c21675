"""The downloader middleware: each request routed on the integration contract.

Per request, on :mod:`proxaro_scrape.gateway.edge`: ``process_request`` takes a route (current
credentials) and puts its proxy URL in ``meta["proxy"]``; ``process_response`` and
``process_exception`` observe the attempt under the contract's trust rule
(:func:`~proxaro_scrape.gateway.edge.observe_answer`,
:func:`~proxaro_scrape.gateway.edge.observe_failure`, Scrapy's exceptions mapped by the table
of :mod:`._failures`) and :func:`~proxaro_scrape.gateway.edge.decide` says what follows:
the answer, a retry request, or the error.

``request.meta`` holds plain data only, so every request pickles into Scrapy's disk queues and
into scrapy-redis: a flight id (``meta["_proxaro_flight"]``, a string) names the logical
request's live routing state, kept in :class:`._flights.Flights`.  No request that goes back
to the scheduler carries a secret: the credentials are put on at download time
(``HttpProxyMiddleware`` turns ``meta["proxy"]`` into ``Proxy-Authorization``) and taken off
once the request is downloaded, by :class:`~._handler.ProxaroDownloadHandler` (so the
redirects ``RedirectMiddleware`` builds, ``RetryMiddleware``'s retries and a spider's copies
never carry them), and off the retries the middleware makes.  Where another download handler
serves ``http`` or ``https``, the middleware takes them off every request of its own that the
scheduler receives instead (the ``request_scheduled`` signal).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import IgnoreRequest, NotConfigured

from proxaro_scrape import AsyncProxaro, protocol
from proxaro_scrape.errors import (
    AttemptsExhaustedError,
    ConfigurationError,
    ProxaroError,
    UsageCapError,
)
from proxaro_scrape.gateway import GatewayManager, Outcome, Target
from proxaro_scrape.gateway.edge import (
    EXIT_KEY,
    PROXY_AUTHORIZATION,
    decide,
    observe_answer,
    observe_failure,
)

from . import _settings
from ._failures import failure_of_scrapy, tunnel_answer
from ._flights import Flight, Flights
from ._handler import CONNECT_KEY, handlers_strip_credentials
from ._lifecycle import Lifecycle
from ._playwright import PlaywrightRoutes
from ._playwright import strip as strip_playwright
from ._playwright import wanted as wants_playwright

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response

__all__ = ["FLIGHT_KEY", "MIDDLEWARE_PRIORITY", "ProxaroDownloaderMiddleware", "ProxaroGaveUp"]

logger = logging.getLogger("proxaro_scrape.integrations.scrapy")

#: Where the add-on puts the middleware in ``DOWNLOADER_MIDDLEWARES``.  ``process_request`` runs
#: in increasing order, so 585 < 750 puts ``meta["proxy"]`` in place before
#: ``HttpProxyMiddleware`` builds ``Proxy-Authorization`` from it.  ``process_response`` and
#: ``process_exception`` run in decreasing order: after ``HttpCompressionMiddleware`` (590), so
#: an ``is_ban`` hook reads a decompressed body, and before ``MetaRefreshMiddleware`` (580) and
#: ``RetryMiddleware`` (550), so a ban, a dead region or a 407 is ours to handle and never
#: retried a second time by Scrapy through the same burned exit.  Only ``RedirectMiddleware``
#: (600) sees answers first: a 3xx is the site's success anyway, and is recorded as such when the
#: redirected request comes back through (see ``process_request``).
MIDDLEWARE_PRIORITY = 585
#: The meta key of a request's flight id (plain text; see :mod:`._flights`).
FLIGHT_KEY = "_proxaro_flight"
_PROXY_AUTHORIZATION = PROXY_AUTHORIZATION.encode("latin-1")
#: Meta keys that describe one attempt of ours; a request going back to the scheduler drops
#: them (``_auth_proxy`` and ``proxy`` are HttpProxyMiddleware's record of our credentials).
_ATTEMPT_KEYS = ("proxy", "_auth_proxy", CONNECT_KEY, EXIT_KEY, "proxaro_route_target")
#: The gateway's headers as Scrapy's Headers stores their names (``bytes.title()``).
_GATEWAY_HEADERS = tuple(
    name.encode("latin-1").title() for name in (protocol.HEADER_ERROR, *protocol.EXIT_HEADERS)
)
_dict_get = dict.get
#: get_retry_request's own "Retrying ... (failed 1 times)" would miscount (our attempts do not
#: use up retry_times): it gets this logger, which drops everything, and we log our own line.
_QUIET = logging.Logger("proxaro_scrape.integrations.scrapy.quiet", level=logging.CRITICAL + 1)
_MISSING: Any = object()


class ProxaroGaveUp(IgnoreRequest):
    """The request was not fetched: every attempt failed, or routing is stopped.

    Reaches the request's errback (``failure.check(ProxaroGaveUp)``).  ``url``; ``tried`` (one
    line per attempt: target and outcome, no secret); ``error`` (the core's
    :class:`~proxaro_scrape.errors.AttemptsExhaustedError`, or
    :class:`~proxaro_scrape.errors.UsageCapError` when the usage cap stopped routing);
    ``response`` (the last answer, a ban page say, or ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        tried: Sequence[str] = (),
        error: ProxaroError | None = None,
        response: Response | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.tried = list(tried)
        self.error = error
        self.response = response


def strip_for_queue(request: Request) -> None:
    """Take our credentials and the last attempt's record off a request being queued again."""
    request.headers.pop(_PROXY_AUTHORIZATION, None)
    meta = request.meta
    for key in _ATTEMPT_KEYS:
        meta.pop(key, None)
    strip_playwright(meta)  # a browser request's context: its proxy holds the password


class ProxaroDownloaderMiddleware(Lifecycle):
    """Downloader middleware that routes every request through the Proxaro gateway.

    Built by Scrapy with :meth:`from_crawler`; see the package docstring for the settings, the
    per-spider and per-request targeting, the stats and the errors.  ``manager`` is the
    :class:`~proxaro_scrape.GatewayManager` (started with the spider, closed with it);
    ``ProxaroDownloaderMiddleware.of(crawler)`` finds the instance of a crawler.
    """

    # Crawler -> a weak reference to its middleware.  A strong value would keep its own key
    # alive (the middleware holds the crawler, directly and through the stats), so no finished
    # crawl would ever be freed: a process running crawl after crawl would keep them all.
    _instances: weakref.WeakKeyDictionary[Any, weakref.ref[ProxaroDownloaderMiddleware]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        crawler: Crawler,
        manager: GatewayManager | None,
        settings: _settings.ProxaroSettings | None,
        client: AsyncProxaro | None = None,
        *,
        config_error: ConfigurationError | None = None,
    ) -> None:
        super().__init__(crawler, manager, settings, client, config_error=config_error)
        #: The routing state of the logical requests in flight (see :mod:`._flights`).
        self.flights = Flights()
        self._is_ban = settings is not None and settings.config.is_ban is not None
        self._sticky_cookiejar = settings is not None and settings.sticky == "cookiejar"
        #: ProxaroDownloadHandler downloads both schemes, and takes the credentials off.
        self._handler_strips = False
        #: Browser requests (scrapy-playwright): a context per route (``_playwright``).
        self.playwright = PlaywrightRoutes(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ProxaroDownloaderMiddleware:
        """Read the ``PROXARO_*`` settings and build the middleware (``NotConfigured`` if off).

        A wrong setting does not raise here: the middleware is built without a manager and
        closes the spider when it opens (reason ``proxaro_config``, one error line naming the
        setting), before anything is sent.
        """
        settings = crawler.settings
        try:
            if not _settings.enabled(settings):
                raise NotConfigured  # off by choice: nothing to say
            if not _settings.asyncio_available():
                raise ConfigurationError(
                    "the Proxaro middleware needs the asyncio reactor: TWISTED_REACTOR = "
                    '"twisted.internet.asyncioreactor.AsyncioSelectorReactor" (Scrapy\'s '
                    "default)",
                    param="TWISTED_REACTOR",
                )
            _settings.check_order(settings, cls, MIDDLEWARE_PRIORITY)
            proxaro = _settings.read_settings(settings)
            client = _settings.api_client(settings)
        except ConfigurationError as exc:
            mw = cls(crawler, None, None, config_error=exc)
        else:
            manager = GatewayManager(
                async_client=client, config=proxaro.config, redis_url=proxaro.redis_url
            )
            mw = cls(crawler, manager, proxaro, client)
            mw._handler_strips = handlers_strip_credentials(settings)
            if not mw._handler_strips:
                # Without our download handler, nothing takes Proxy-Authorization off the
                # requests RedirectMiddleware (600) builds before we see their answer: catch
                # every request of ours on its way to the scheduler instead (a signal handler
                # per scheduled request; the handler's way costs nothing).
                crawler.signals.connect(mw._request_scheduled, signal=signals.request_scheduled)
            crawler.signals.connect(mw._request_dropped, signal=signals.request_dropped)
        crawler.signals.connect(mw.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(mw.spider_closed, signal=signals.spider_closed)
        cls._instances[crawler] = weakref.ref(mw)
        return mw

    @classmethod
    def of(cls, crawler: Crawler) -> ProxaroDownloaderMiddleware | None:
        """The middleware of ``crawler`` (once its engine is built), or ``None``."""
        ref = cls._instances.get(crawler)
        return ref() if ref is not None else None

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        """Forget the flights, then stop the manager (see :class:`Lifecycle`)."""
        self.flights.clear()
        self.playwright.clear()
        await super().spider_closed(spider, reason)

    # ------------------------------------------------------------------ per request

    async def process_request(self, request: Request, spider: Spider | None = None) -> None:
        """Choose the route (current credentials) and put its proxy URL in ``meta["proxy"]``."""
        manager = self.manager
        if manager is None:  # misconfigured: the spider is closing, send nothing
            raise IgnoreRequest("Proxaro is not configured (see the error above)")
        meta = request.meta
        # A CONNECT answer in meta belongs to an attempt that is over; never believe it again.
        connect = meta.pop(CONNECT_KEY, None)
        opt = meta.get("proxaro", _MISSING)
        fid = meta.get(FLIGHT_KEY)
        flight = None if fid is None else self.flights.get(fid)  # most requests are new
        if opt is False:
            if fid is not None:
                # A copy of a routed request, to be sent direct: no gateway, no credentials.
                self.flights.finish(fid)
                del meta[FLIGHT_KEY]
                strip_for_queue(request)
            self.stats.inc_value("proxaro/direct")
            return None
        if flight is None or not flight.resend:
            if flight is not None and flight.pending:
                # RedirectMiddleware (600) turned the last answer into this request before we saw
                # it: a 3xx is the site's answer, a success of that route.
                self._redirected(request, flight, connect)
                self.flights.finish(fid)
            # A new logical request: fresh, a redirect, a copy, or a retry whose flight this
            # process does not know (queued by another process: a resumed JOBDIR, scrapy-redis).
            flight = Flight(self._routing(request, meta, opt))
            fid = self.flights.add(flight)
            meta[FLIGHT_KEY] = fid
        else:
            flight.resend = False
        try:
            route = flight.rr.next_route()
        except AttemptsExhaustedError as exc:
            self.flights.finish(fid)
            raise self._gave_up(request, flight, exc, None) from None
        flight.route = route
        flight.pending = True
        if wants_playwright(request):
            # The browser ignores meta["proxy"]: the route goes in the context's own proxy.
            assert fid is not None  # a flight is in flight: it has an id
            await self.playwright.route(request, fid, route)
        else:
            meta["proxy"] = route.proxy_url
        return None

    def _redirected(self, request: Request, flight: Flight, connect: Any) -> None:
        reasons = request.meta.get("redirect_reasons") or (302,)
        status = reasons[-1] if isinstance(reasons[-1], int) else 200
        flight.pending = False
        observe_answer(
            flight.rr,
            status,
            (),
            tunnel=_tunnelled(request),
            connect_headers=connect[1] if connect else None,
        )

    def _routing(self, request: Request, meta: dict[str, Any], opt: Any) -> Any:
        assert self.manager is not None
        if opt is _MISSING or opt is None or opt is True:
            target: Any = self.spider_target
        elif type(opt) is dict or isinstance(opt, (Target, Mapping)):  # dict: no ABC check
            target = opt
        else:
            self._count_error("ConfigurationError")
            raise ConfigurationError(
                f'meta["proxaro"] must be a dict, a Target, True/None (the defaults) or False '
                f"(send direct), got {type(opt).__name__} for {request.url}",
                param='meta["proxaro"]',
            )
        key: Hashable | None = None
        explicit = meta.get("proxaro_session")
        if explicit is not None:
            key = ("proxaro_session", explicit)
        elif self._sticky_cookiejar:
            key = ("cookiejar", meta.get("cookiejar"))
        try:
            return self.manager.request(request.url, target, key)
        except UsageCapError as exc:
            self.stats.inc_value("proxaro/usage_cap_refused")
            if not self._cap_noted:
                self._cap_noted = True
                logger.warning("Proxaro: %s", exc)
            raise ProxaroGaveUp(
                f"Proxaro did not send {request.url}: {exc}", url=request.url, error=exc
            ) from None
        except TypeError:
            self._count_error("ConfigurationError")
            raise ConfigurationError(
                f'meta["proxaro_session"] must be hashable (a str, an int...), got '
                f"{type(explicit).__name__}",
                param='meta["proxaro_session"]',
            ) from None
        except ProxaroError as exc:
            self._count_error(type(exc).__name__)
            raise

    async def _land(self, request: Request) -> tuple[Any, Any, Any, Flight | None]:
        """What an attempt that came back (answered or failed) carries: the CONNECT answer,
        the flight id, the browser context held, and the flight awaiting it (``None`` when
        none does: the request is not ours, or its answer was seen already)."""
        meta = request.meta
        connect = meta.pop(CONNECT_KEY, None)
        fid = meta.get(FLIGHT_KEY)
        held = self.playwright.take(request, fid)
        flight = self.flights.get(fid)
        if flight is None or not flight.pending:
            await self.playwright.settle(held, True)
            return connect, fid, held, None
        flight.pending = False
        if not self._handler_strips:
            # The credentials did their work; the spider never needs to see them.
            request.headers.pop(_PROXY_AUTHORIZATION, None)
        return connect, fid, held, flight

    async def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        """Observe the answer under the trust rule: pass it on, retry, or fail clearly."""
        meta = request.meta
        connect, fid, held, flight = await self._land(request)
        if flight is None:
            return response
        rr = flight.rr
        tunnel = _tunnelled(request)
        connect_headers = connect[1] if connect else None
        status = response.status
        refused = self.playwright.observe_refusal(held, rr) if held is not None else None
        if refused is not None:
            # The page's own requests were refused (new credentials, no grace): read as such.
            outcome = refused
        elif self._is_ban:
            # The user's hook gets Scrapy's own Headers and the (decompressed) body.
            outcome = observe_answer(
                rr,
                status,
                response.headers,
                tunnel=tunnel,
                connect_headers=connect_headers,
                body=response.body,
            )
        elif tunnel:
            # Inside the tunnel every header is the site's: only the CONNECT answer counts.
            outcome = observe_answer(rr, status, (), tunnel=True, connect_headers=connect_headers)
        else:
            # Plain HTTP: the gateway's headers are the only ones the contract reads; take them
            # straight from Headers (a dict of normalised names), not through Headers.items().
            raw = response.headers
            gateway = [
                (name, value) for name in _GATEWAY_HEADERS if (value := _dict_get(raw, name))
            ]
            outcome = observe_answer(rr, status, gateway, tunnel=False)
        meta[EXIT_KEY] = outcome.exit
        meta["proxaro_route_target"] = flight.route.target
        await self.playwright.settle(held, outcome.ok)
        if outcome.ok:  # the common case, without the detour through decide()
            self.flights.finish(fid)
            return response
        return await self._next(request, fid, flight, outcome, response, None)

    async def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> Request | None:
        """A failed attempt without an answer (connection, tunnel, timeout): observe it."""
        _, fid, held, flight = await self._land(request)
        if flight is None:
            return None
        if held is not None:
            # The browser's failure, read by Chromium's error code.
            outcome = await self.playwright.observe_error(
                held, flight.rr, exception, _tunnelled(request)
            )
            if outcome is None or outcome.ok:  # the caller's, or the site's own error page
                self.flights.finish(fid)
                return None
            return await self._next(request, fid, flight, outcome, None, exception)
        failure = None if isinstance(exception, IgnoreRequest) else failure_of_scrapy(exception)
        if failure is None:
            # Not the gateway's business (dropped by a component, a cancelled download...):
            # this logical request ends here, and Scrapy handles the exception.
            self.flights.finish(fid)
            return None
        status, headers = tunnel_answer(exception)
        outcome = observe_failure(flight.rr, failure, status=status, headers=headers)
        return await self._next(request, fid, flight, outcome, None, exception)

    async def _next(
        self,
        request: Request,
        fid: Any,
        flight: Flight,
        outcome: Outcome,
        response: Response | None,
        exc: BaseException | None,
    ) -> Any:
        step = decide(outcome, method=request.method, url=request.url)
        if step.action == "return":
            self.flights.finish(fid)
            return response
        if step.action == "retry":
            assert self.manager is not None
            if step.refresh:
                await self.manager.arefresh_credentials(flight.route.credentials_version)
            return self._retry(request, fid, flight, outcome)
        self.flights.finish(fid)
        error = step.error
        assert error is not None
        if isinstance(error, AttemptsExhaustedError):
            raise self._gave_up(request, flight, error, response) from exc
        self._count_error(type(error).__name__)
        raise error from exc

    def _retry(self, request: Request, fid: Any, flight: Flight, outcome: Outcome) -> Request:
        retry_times = request.meta.get("retry_times")
        new = get_retry_request(
            request,
            spider=self.crawler.spider,  # type: ignore[arg-type]
            reason=outcome.kind,
            max_retry_times=(retry_times or 0) + 1,  # the manager owns the attempt budget
            logger=_QUIET,
            stats_base_key="proxaro/retry",
        )
        assert new is not None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Retrying %s after attempt %d: %s",
                request,
                flight.route.attempt,
                _describe(outcome),
            )
        # Our attempts must not use up RetryMiddleware's RETRY_TIMES for the site's own 5xx.
        if retry_times is None:
            new.meta.pop("retry_times", None)
        else:
            new.meta["retry_times"] = retry_times
        strip_for_queue(new)
        flight.resend = True
        self.flights.touch(fid)
        return new

    def _gave_up(
        self,
        request: Request,
        flight: Flight,
        error: AttemptsExhaustedError,
        response: Response | None,
    ) -> ProxaroGaveUp:
        self.stats.inc_value("proxaro/gave_up")
        tried = list(error.tried) or flight.rr.tried
        message = f"Proxaro gave up on {request.url}: {error}"
        # IgnoreRequest is silent without an errback: say it here, once per request.
        logger.warning("%s", message)
        return ProxaroGaveUp(message, url=request.url, tried=tried, error=error, response=response)

    # ------------------------------------------------------------------ the scheduler's side

    def _request_scheduled(self, request: Request, spider: Spider | None = None) -> None:
        """Whatever of ours goes (back) to the scheduler leaves without a secret (pickled into
        JOBDIR or Redis, a request outlives the credentials anyway)."""
        meta = request.meta
        if FLIGHT_KEY in meta:
            strip_for_queue(request)
        elif CONNECT_KEY in meta:
            del meta[CONNECT_KEY]

    def _request_dropped(self, request: Request, spider: Spider | None = None) -> None:
        """The scheduler refused a request (a duplicate): a flight waiting on it ends."""
        fid = request.meta.get(FLIGHT_KEY)
        flight = self.flights.get(fid)
        if flight is not None and (flight.resend or flight.pending):
            self.flights.finish(fid)


def _tunnelled(request: Request) -> bool:
    """Did the request go through a CONNECT tunnel?  Every proxied https:// request does.

    (Scrapy's URLs are normalised, scheme in lower case: a prefix test is enough.)"""
    return request.url.startswith("https:")


def _describe(outcome: Outcome) -> str:
    """``ban (429) on exit 203.0.113.9 (de)``: an outcome for a log line (no secret)."""
    text = outcome.kind
    if outcome.status is not None:
        text += f" ({outcome.status}{' ' + outcome.gateway_error if outcome.gateway_error else ''})"
    ex = outcome.exit
    if ex is not None and ex.ip:
        text += f" on exit {ex.ip}" + (f" ({ex.country})" if ex.country else "")
    return text
