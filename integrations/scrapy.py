"""Scrapy integration: route a crawl through the Proxaro gateway.

Enable it with the add-on (Scrapy >= 2.13, asyncio reactor, the default)::

    # settings.py
    ADDONS = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}
    PROXARO_TARGET = {"country": "us"}          # every request exits in the US...
    PROXARO_STICKY = "domain"                   # ...through one exit per site while it works

or list the middleware yourself, before ``HttpProxyMiddleware`` (750)::

    DOWNLOADER_MIDDLEWARES = {"proxaro_scrape.integrations.scrapy.ProxaroDownloaderMiddleware": 585}

The API key comes from ``PROXARO_API_KEY`` (the setting, else the environment variable).

**Per spider**: a ``proxaro_target`` attribute (a dict or a :class:`~proxaro_scrape.Target`)
replaces ``PROXARO_TARGET`` for that spider; ``custom_settings`` work for every setting.
**Per request**: ``meta["proxaro"]`` is a dict or a ``Target`` for that request only, or
``False`` to send it direct (your own ``meta["proxy"]``, if any, is then left alone);
``meta["proxaro_session"]`` (any hashable) makes the request sticky under that key.  With
``PROXARO_STICKY = "cookiejar"`` requests are sticky per ``meta["cookiejar"]`` (Scrapy's
default jar included), so one cookie jar is one exit.

What the middleware does with each request: when the request reaches the downloader it asks the
gateway manager for a route and puts the proxy URL with the *current* credentials into
``meta["proxy"]`` (``HttpProxyMiddleware`` turns it into ``Proxy-Authorization``), so queued
requests never carry stale credentials.  The answer is classified by the core
(:func:`proxaro_scrape.gateway.outcome.classify`): a 407 refreshes the credentials (one API call
however many requests saw it) and resends; a ban (403/429 by default) opens a new session on a
new exit and retries; a dead region fails over to the next target; a dropped exit or a timeout
retries with a new session.  Retries are made with
:func:`scrapy.downloadermiddlewares.retry.get_retry_request` (``dont_filter=True``, stats under
``proxaro/retry/...``) and do not use up ``RETRY_TIMES`` of Scrapy's own ``RetryMiddleware``.
When the attempt budget is spent the request fails with :class:`ProxaroGaveUp` (an
``IgnoreRequest``: it reaches the request's errback with what was tried, and is logged as a
warning); a banned page never reaches a callback.  Errors that retrying cannot fix
(``bad_targeting``, ``source_not_allowed``, ``scope_required``, a bad ``meta["proxaro"]``) reach
the errback as the :class:`~proxaro_scrape.errors.ProxaroError` itself.

Public ``meta`` keys the middleware sets on a routed request: ``proxy`` (the gateway URL *with
the password*: never log ``request.meta``), ``proxaro_exit`` (the
:class:`~proxaro_scrape.ExitInfo` of the answer, from the ``X-Proxaro-Exit-*`` headers; ``None``
over HTTPS, whose tunnel hides them) and ``proxaro_route_target`` (the concrete
:class:`~proxaro_scrape.Target` after selectors and failover).

Settings (wrong types or values stop the crawl at start with a
:class:`~proxaro_scrape.errors.ConfigurationError` naming the setting; values given on the
command line with ``-s`` are parsed: ``-s PROXARO_TARGET='{"country": "de"}'``):

``PROXARO_ENABLED`` (bool, ``True``)
    ``False``: the middleware is not loaded (``NotConfigured``): requests go direct.
``PROXARO_API_KEY`` (str, ``None``)
    The API key; else the ``PROXARO_API_KEY`` environment variable (better: keep it out of
    settings files).
``PROXARO_BASE_URL`` (str, ``None``)
    The API's base URL; else ``PROXARO_BASE_URL``, else ``https://api.proxaro.io``.
``PROXARO_TARGET`` (dict or Target, ``None``)
    The default target: ``country``, ``city``, ``asn``, ``exit_class``, ``session``,
    ``session_ttl``, or the selectors ``countries`` / ``continent``.  ``None``: any exit.
``PROXARO_STICKY`` (str, ``"off"``)
    ``"off"``: a new exit per request; ``"domain"``: one exit per site (and target) while it
    works; ``"cookiejar"``: one exit per ``meta["cookiejar"]``.
``PROXARO_SESSION_TTL`` (int, minutes, ``10``)
    Lifetime of a sticky session (1..1440), sent as ``sesstime``.
``PROXARO_SESSION_MAX_REQUESTS`` (int or None, ``None``)
    Move a sticky session to a new exit after that many requests (``None``: never).
``PROXARO_SESSION_LRU_SIZE`` (int, ``10000``)
    Most sticky sessions remembered (the least recently used are dropped).
``PROXARO_FAILOVER`` (bool or list, ``True``)
    ``True``: when a target has no live exit, relax it (ASN → city → country → neighbours on
    the continent by pool size); ``False``: fail instead; a list of targets: tried in order.
``PROXARO_MAX_ATTEMPTS`` (int, ``5``)
    Attempts per request before :class:`ProxaroGaveUp` (a resend after a credentials refresh
    is free).
``PROXARO_BAN_STATUS_CODES`` (list of int, ``[403, 429]``)
    Statuses of the target site that mean "banned": new session (new exit), retry.
``PROXARO_IS_BAN`` (callable or import path, ``None``)
    ``is_ban(status, headers, body) -> bool`` for bans that answer 200 (captcha pages).
``PROXARO_USAGE_CAP_ACTION`` (str, ``"warn"``)
    At 100 % of the plan's bandwidth: ``"warn"`` (log, keep going) or ``"stop"`` (close the
    spider with reason ``proxaro_usage_cap``).
``PROXARO_CREDENTIALS_POLL_INTERVAL`` (float, seconds, ``30``)
    How often the credentials are checked for a rotation (well inside the 60 s grace).
``PROXARO_POOL_TTL`` (float, seconds, or None, ``300``)
    How often the pool view (countries, ASNs, ``pool_health``) is refreshed.
``PROXARO_USAGE_POLL_INTERVAL`` (float, seconds, or None, ``300``)
    How often usage is read for the cap (``None``: never).
``PROXARO_STATS_INTERVAL`` (float, seconds, or None, ``1``)
    How often the manager's counters are copied into the crawl stats (always at close).

Stats (``crawler.stats``, prefix ``proxaro/``): the gateway manager's counters, copied every
``PROXARO_STATS_INTERVAL`` and at close — ``proxaro/requests`` (attempts routed),
``proxaro/requests/country/<code>``, ``proxaro/requests/exit_class/<class>``,
``proxaro/retries`` (attempts beyond the first), ``proxaro/bans``, ``proxaro/failovers``,
``proxaro/credential_refreshes`` (credential fetches, the first included),
``proxaro/rotations``, ``proxaro/exits_used`` (distinct exit IPs), ``proxaro/outcomes/<kind>``,
``proxaro/sessions_rotated`` ... — plus the middleware's own:
``proxaro/retry/count`` and ``proxaro/retry/reason_count/<kind>`` (retry requests it made),
``proxaro/gave_up``, ``proxaro/direct`` (``meta["proxaro"] = False``),
``proxaro/errors/<ErrorClass>`` and ``proxaro/usage_cap_refused``.  An INFO line sums them up at
spider close.  No stat and no log line ever holds the API key or the gateway password.

The gateway manager starts when the spider opens (on the reactor's asyncio loop) and stops
when it closes.  The spider closes early, with these reasons, when: the API cannot give the
credentials or the pool view at start (``proxaro_start_failed``, the error logged); the
spider's ``proxaro_target`` is invalid or not in the pool (``proxaro_config``); usage reaches
the cap with ``PROXARO_USAGE_CAP_ACTION = "stop"`` (``proxaro_usage_cap``).
"""

from __future__ import annotations

try:
    import scrapy  # noqa: F401 - the guard: fail here, with the extra to install
    from scrapy import signals
    from scrapy.downloadermiddlewares.retry import get_retry_request
    from scrapy.exceptions import CloseSpider, IgnoreRequest, NotConfigured
except ImportError as _exc:  # pragma: no cover - exercised without Scrapy installed
    raise ImportError(
        "proxaro_scrape.integrations.scrapy needs Scrapy; install it with: "
        'pip install "proxaro-scrape[scrapy]"'
    ) from _exc

import asyncio
import json
import logging
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxaro_scrape import protocol
from proxaro_scrape.api import _validate
from proxaro_scrape.errors import (
    AttemptsExhaustedError,
    ConfigurationError,
    ProxaroError,
    TargetError,
    UsageCapError,
)
from proxaro_scrape.gateway import GatewayManager, Target
from proxaro_scrape.gateway.outcome import Outcome

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

__all__ = [
    "MIDDLEWARE_PRIORITY",
    "ProxaroAddon",
    "ProxaroDownloaderMiddleware",
    "ProxaroGaveUp",
]

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
#: ``HttpProxyMiddleware``'s place in Scrapy's ``DOWNLOADER_MIDDLEWARES_BASE``.
_HTTPPROXY_PATH = "scrapy.downloadermiddlewares.httpproxy.HttpProxyMiddleware"
#: Private meta key: the routing state of one logical request, carried across its retries.
_FLIGHT = "_proxaro_flight"
_STICKY_MODES = {"off": "off", "domain": "domain", "cookiejar": "key"}
#: The gateway's headers as Scrapy's Headers stores their names (``bytes.title()``).
_GATEWAY_HEADERS = tuple(
    name.encode("latin-1").title() for name in (protocol.HEADER_ERROR, *protocol.EXIT_HEADERS)
)
_dict_get = dict.get
#: get_retry_request's own "Retrying ... (failed 1 times)" would miscount (our attempts do not
#: use up retry_times): it gets this logger, which drops everything, and we log our own line.
_QUIET = logging.Logger("proxaro_scrape.integrations.scrapy.quiet", level=logging.CRITICAL + 1)
_MISSING: Any = object()
#: Manager parameter → setting, to name the setting in errors the manager raises.
_PARAM_TO_SETTING = {
    "api_key": "PROXARO_API_KEY",
    "base_url": "PROXARO_BASE_URL",
    "target": "PROXARO_TARGET",
    "sticky": "PROXARO_STICKY",
    "session_ttl": "PROXARO_SESSION_TTL",
    "session_max_requests": "PROXARO_SESSION_MAX_REQUESTS",
    "session_lru_size": "PROXARO_SESSION_LRU_SIZE",
    "failover": "PROXARO_FAILOVER",
    "max_attempts": "PROXARO_MAX_ATTEMPTS",
    "ban_status_codes": "PROXARO_BAN_STATUS_CODES",
    "is_ban": "PROXARO_IS_BAN",
    "usage_cap_action": "PROXARO_USAGE_CAP_ACTION",
    "credentials_poll_interval": "PROXARO_CREDENTIALS_POLL_INTERVAL",
    "pool_ttl": "PROXARO_POOL_TTL",
    "usage_poll_interval": "PROXARO_USAGE_POLL_INTERVAL",
}


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


class _Flight:
    """One logical request's routing state, in ``meta[_FLIGHT]`` across its retries."""

    __slots__ = ("rr", "route", "pending", "resend")

    def __init__(self, rr: Any) -> None:
        self.rr = rr
        self.route: Any = None
        #: A route went out and its answer has not been observed yet.
        self.pending = False
        #: The next pass through process_request continues this logical request (a retry).
        self.resend = False


# ====================================================================== settings


class _Config:
    """The ``PROXARO_*`` settings, checked (a ConfigurationError names the bad setting)."""

    def __init__(self, settings: BaseSettings) -> None:
        self.api_key = _api_key(settings)
        self.base_url = _base_url(settings)
        self.target = _target(_get(settings, "PROXARO_TARGET", None), "PROXARO_TARGET")
        sticky = _get(settings, "PROXARO_STICKY", "off")
        if not isinstance(sticky, str) or sticky.strip().lower() not in _STICKY_MODES:
            raise ConfigurationError(
                f"PROXARO_STICKY must be one of 'off', 'domain', 'cookiejar', got {sticky!r}",
                param="PROXARO_STICKY",
            )
        self.sticky = sticky.strip().lower()
        self.session_ttl = _int(settings, "PROXARO_SESSION_TTL", 10, minimum=1)
        self.session_max_requests = _int(
            settings, "PROXARO_SESSION_MAX_REQUESTS", None, minimum=1, optional=True
        )
        self.session_lru_size = _int(settings, "PROXARO_SESSION_LRU_SIZE", 10_000, minimum=1)
        self.failover = _failover(_get(settings, "PROXARO_FAILOVER", True))
        self.max_attempts = _int(settings, "PROXARO_MAX_ATTEMPTS", 5, minimum=1)
        self.ban_status_codes = _statuses(_get(settings, "PROXARO_BAN_STATUS_CODES", (403, 429)))
        self.is_ban = _callable(_get(settings, "PROXARO_IS_BAN", None), "PROXARO_IS_BAN")
        action = _get(settings, "PROXARO_USAGE_CAP_ACTION", "warn")
        if not isinstance(action, str) or action.strip().lower() not in ("warn", "stop"):
            raise ConfigurationError(
                f"PROXARO_USAGE_CAP_ACTION must be 'warn' or 'stop', got {action!r}",
                param="PROXARO_USAGE_CAP_ACTION",
            )
        self.usage_cap_action = action.strip().lower()
        self.credentials_poll_interval = _seconds(
            settings, "PROXARO_CREDENTIALS_POLL_INTERVAL", 30.0
        )
        self.pool_ttl = _seconds(settings, "PROXARO_POOL_TTL", 300.0, optional=True)
        self.usage_poll_interval = _seconds(
            settings, "PROXARO_USAGE_POLL_INTERVAL", 300.0, optional=True
        )
        self.stats_interval = _seconds(settings, "PROXARO_STATS_INTERVAL", 1.0, optional=True)

    def manager(self) -> GatewayManager:
        """A :class:`GatewayManager` for these settings (not started)."""
        try:
            return GatewayManager(
                self.api_key,
                self.base_url,
                target=self.target,
                sticky=_STICKY_MODES[self.sticky],
                session_ttl=self.session_ttl,
                session_max_requests=self.session_max_requests,
                session_lru_size=self.session_lru_size,
                failover=self.failover,
                max_attempts=self.max_attempts,
                ban_status_codes=self.ban_status_codes,
                is_ban=self.is_ban,
                credentials_poll_interval=self.credentials_poll_interval,
                pool_ttl=self.pool_ttl,
                usage_poll_interval=self.usage_poll_interval,
                usage_cap_action=self.usage_cap_action,
            )
        except ConfigurationError as exc:
            setting = _PARAM_TO_SETTING.get(exc.param or "")
            if setting is None:
                raise
            text = str(exc)
            if exc.param == "api_key" and "no API key" in text:
                text = (
                    "no API key: set PROXARO_API_KEY in the settings or in the environment "
                    "(the key from Dashboard → API keys)"
                )
            raise type(exc)(f"{setting}: {text}", param=setting) from None


#: Settings where an explicit None means something ("off", or a mistake worth naming) rather
#: than "unset, use the default" as Scrapy's settings.get() reads it.
_NONE_IS_A_VALUE = frozenset(
    {
        "PROXARO_POOL_TTL",
        "PROXARO_USAGE_POLL_INTERVAL",
        "PROXARO_STATS_INTERVAL",
        "PROXARO_SESSION_MAX_REQUESTS",
        "PROXARO_CREDENTIALS_POLL_INTERVAL",
    }
)


def _get(settings: BaseSettings, name: str, default: Any) -> Any:
    if name not in settings:
        return default
    value = settings[name]
    if value is None and name not in _NONE_IS_A_VALUE:
        return default
    return value


def _api_key(settings: BaseSettings) -> Any:
    value = _get(settings, "PROXARO_API_KEY", None)
    if value is None or value == "":
        return None  # the manager reads the environment, and says so when it is missing
    # Checked here so that a malformed key stops the crawl at start; the message never shows it.
    try:
        return _validate.api_key(value, source="the PROXARO_API_KEY setting")
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc), param="PROXARO_API_KEY") from None


def _base_url(settings: BaseSettings) -> str | None:
    value = _get(settings, "PROXARO_BASE_URL", None)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"PROXARO_BASE_URL must be a URL string, got {type(value).__name__}",
            param="PROXARO_BASE_URL",
        )
    try:
        _validate.base_url(value, source="PROXARO_BASE_URL")
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc), param="PROXARO_BASE_URL") from None
    return value


def _parse_json(value: str, setting: str, what: str, param: str | None = None) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        raise ConfigurationError(
            f"{setting} must be {what}; the string {value!r} is not valid JSON",
            param=param or setting,
        ) from None


def _target(value: Any, setting: str, param: str | None = None) -> Target | None:
    param = param or setting
    if isinstance(value, str):
        value = (
            None if not value.strip() else _parse_json(value, setting, "a dict (or JSON)", param)
        )
    if value is None or isinstance(value, Target):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{setting} must be a dict such as {{'country': 'us'}} (or a Target), "
            f"got {type(value).__name__}",
            param=param,
        )
    try:
        return Target.coerce(dict(value))
    except TargetError as exc:
        raise TargetError(f"{setting}: {exc}", param=param) from None


def _int(
    settings: BaseSettings,
    name: str,
    default: int | None,
    *,
    minimum: int,
    optional: bool = False,
) -> Any:
    value = _get(settings, name, default)
    if optional and (
        value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))
    ):
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        more = " or None" if optional else ""
        raise ConfigurationError(
            f"{name} must be a whole number >= {minimum}{more}, got {value!r}", param=name
        )
    return value


def _seconds(settings: BaseSettings, name: str, default: float, *, optional: bool = False) -> Any:
    value = _get(settings, name, default)
    if optional and (
        value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))
    ):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        more = " (or None to turn it off)" if optional else ""
        raise ConfigurationError(
            f"{name} must be a number of seconds > 0{more}, got {value!r}", param=name
        )
    return float(value)


def _failover(value: Any) -> bool | list[Target]:
    name = "PROXARO_FAILOVER"
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        value = _parse_json(value, name, "True, False or a list of targets")
    if isinstance(value, bool):
        return value
    if isinstance(value, (Mapping, Target)) or not isinstance(value, (list, tuple)):
        raise ConfigurationError(
            f"{name} must be True, False or a list of targets such as "
            f"[{{'country': 'de'}}, {{'country': 'fr'}}], got {type(value).__name__}",
            param=name,
        )
    chain = []
    for i, item in enumerate(value):
        t = _target(item, f"{name}[{i}]", name)
        if t is None:
            raise ConfigurationError(f"{name}[{i}] must be a target, got None", param=name)
        chain.append(t)
    return chain


def _statuses(value: Any) -> tuple[int, ...]:
    name = "PROXARO_BAN_STATUS_CODES"
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = _parse_json(text, name, "a list of HTTP statuses")
        else:
            value = [v for v in (p.strip() for p in text.split(",")) if v]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(
        value, (list, tuple, set, frozenset)
    ):
        raise ConfigurationError(
            f"{name} must be a list of HTTP statuses such as [403, 429], got {value!r}",
            param=name,
        )
    out = []
    for v in value:
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 100 <= v <= 599:
            raise ConfigurationError(
                f"{name} must hold HTTP statuses (100..599), got {v!r}", param=name
            )
        out.append(v)
    return tuple(out)


def _callable(value: Any, name: str) -> Callable[..., Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        from scrapy.utils.misc import load_object

        try:
            value = load_object(value)
        except (ImportError, NameError, ValueError) as exc:
            raise ConfigurationError(
                f"{name}: cannot import {value!r}: {exc}", param=name
            ) from None
    if not callable(value):
        raise ConfigurationError(
            f"{name} must be a callable is_ban(status, headers, body) -> bool or its import "
            f"path, got {type(value).__name__}",
            param=name,
        )
    return value  # type: ignore[no-any-return]


def _asyncio_available() -> bool:
    """Is the crawl on asyncio (the asyncio reactor, or Scrapy 2.14+'s reactorless mode)?"""
    try:
        from scrapy.utils.asyncio import is_asyncio_available  # Scrapy >= 2.14
    except ImportError:  # pragma: no cover - Scrapy 2.13
        from scrapy.utils.reactor import is_asyncio_reactor_installed as is_asyncio_available
    try:
        return bool(is_asyncio_available())
    except RuntimeError:  # no reactor and no loop yet (a unit test's bare crawler): can't tell
        return True


def _check_order(settings: BaseSettings, mine: type) -> None:
    """Refuse a middleware order in which the credentials would never reach the gateway."""
    from scrapy.utils.misc import load_object

    if not settings.getbool("HTTPPROXY_ENABLED", True):
        raise ConfigurationError(
            "HTTPPROXY_ENABLED is False: Scrapy's HttpProxyMiddleware must be on for Proxaro "
            "(it turns meta['proxy'] into the Proxy-Authorization header)",
            param="HTTPPROXY_ENABLED",
        )
    components = settings.get_component_priority_dict_with_base("DOWNLOADER_MIDDLEWARES")
    mine_at = proxy_at = None
    for key, priority in components.items():
        try:
            cls = load_object(key) if isinstance(key, str) else key
        except (ImportError, NameError, ValueError):
            continue
        if isinstance(cls, type) and issubclass(cls, mine):
            mine_at = priority
        elif key == _HTTPPROXY_PATH or (
            isinstance(cls, type) and cls.__name__ == "HttpProxyMiddleware"
        ):
            proxy_at = priority
    if proxy_at is None:
        raise ConfigurationError(
            "HttpProxyMiddleware is disabled in DOWNLOADER_MIDDLEWARES: Proxaro needs it to "
            "build Proxy-Authorization from meta['proxy']",
            param="DOWNLOADER_MIDDLEWARES",
        )
    if mine_at is not None and mine_at >= proxy_at:
        raise ConfigurationError(
            f"ProxaroDownloaderMiddleware is at {mine_at} in DOWNLOADER_MIDDLEWARES, after "
            f"HttpProxyMiddleware ({proxy_at}): put it before (the add-on uses "
            f"{MIDDLEWARE_PRIORITY})",
            param="DOWNLOADER_MIDDLEWARES",
        )


# ====================================================================== the middleware


class ProxaroDownloaderMiddleware:
    """Downloader middleware that routes every request through the Proxaro gateway.

    Built by Scrapy with :meth:`from_crawler`; see the module docstring for the settings, the
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

    def __init__(self, crawler: Crawler, manager: GatewayManager, config: _Config) -> None:
        self.crawler = crawler
        self.manager = manager
        self.config = config
        self.stats = crawler.stats
        self.spider_target: Target | None = None
        self._sticky_cookiejar = config.sticky == "cookiejar"
        self._is_ban = config.is_ban is not None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._started = False
        self._cap_noted = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ProxaroDownloaderMiddleware:
        """Read the ``PROXARO_*`` settings and build the middleware (``NotConfigured`` if off)."""
        settings = crawler.settings
        try:
            enabled = settings.getbool("PROXARO_ENABLED", True)
        except ValueError:
            raise ConfigurationError(
                f"PROXARO_ENABLED must be True or False, got {settings.get('PROXARO_ENABLED')!r}",
                param="PROXARO_ENABLED",
            ) from None
        if not enabled:
            raise NotConfigured  # off by choice: nothing to say
        if not _asyncio_available():
            raise ConfigurationError(
                "the Proxaro middleware needs the asyncio reactor: TWISTED_REACTOR = "
                '"twisted.internet.asyncioreactor.AsyncioSelectorReactor" (Scrapy\'s default)',
                param="TWISTED_REACTOR",
            )
        _check_order(settings, cls)
        config = _Config(settings)
        mw = cls(crawler, config.manager(), config)
        crawler.signals.connect(mw.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(mw.spider_closed, signal=signals.spider_closed)
        cls._instances[crawler] = weakref.ref(mw)
        return mw

    @classmethod
    def of(cls, crawler: Crawler) -> ProxaroDownloaderMiddleware | None:
        """The middleware of ``crawler`` (once its engine is built), or ``None``."""
        ref = cls._instances.get(crawler)
        return ref() if ref is not None else None

    # ------------------------------------------------------------------ spider lifecycle

    async def spider_opened(self, spider: Spider) -> None:
        """Start the gateway manager on the running loop; close the spider if it cannot."""
        self._loop = asyncio.get_running_loop()
        try:
            self.spider_target = _target(getattr(spider, "proxaro_target", None), "proxaro_target")
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
        if self.config.stats_interval is not None:
            self._stats_task = self._loop.create_task(
                self._copy_stats_every(self.config.stats_interval)
            )
        creds = self.manager.credentials
        logger.info(
            "Proxaro: routing through %s (target %s, sticky %s, failover %s)",
            creds.gateway_url if creds is not None else "?",
            (self.spider_target or self.manager.default_target).describe(),
            self.config.sticky,
            "on" if self.config.failover is not False else "off",
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
        await self.manager.aclose()

    def copy_stats(self) -> None:
        """Copy the gateway manager's counters into the crawl stats under ``proxaro/``."""
        set_value = self.stats.set_value
        for key, value in self.manager.stats().items():
            set_value(f"proxaro/{key}", value)

    def summary(self) -> str:
        """One line: requests, retries, bans, failovers, refreshes, exits, per country."""
        s = self.manager.stats()
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

    # ------------------------------------------------------------------ per request

    async def process_request(self, request: Request, spider: Spider | None = None) -> None:
        """Choose the route (current credentials) and put its proxy URL in ``meta["proxy"]``."""
        meta = request.meta
        opt = meta.get("proxaro", _MISSING)
        flight: _Flight | None = meta.get(_FLIGHT)
        if opt is False:
            if flight is not None:
                # A copy of a routed request sent direct: drop the credentials it carries.
                del meta[_FLIGHT]
                meta.pop("proxy", None)
            self.stats.inc_value("proxaro/direct")
            return None
        if flight is None or not flight.resend:
            if flight is not None and flight.pending:
                # RedirectMiddleware (600) turned the last answer into this request before we saw
                # it: a 3xx is the site's answer, a success of that route.
                reasons = meta.get("redirect_reasons") or (302,)
                status = reasons[-1] if isinstance(reasons[-1], int) else 200
                flight.pending = False
                flight.rr.observe(status=status)
            flight = _Flight(self._routing(request, meta, opt))
            meta[_FLIGHT] = flight
        else:
            flight.resend = False
        try:
            route = flight.rr.next_route()
        except AttemptsExhaustedError as exc:
            raise self._gave_up(request, flight, exc, None) from None
        flight.route = route
        flight.pending = True
        meta["proxy"] = route.proxy_url
        return None

    def _routing(self, request: Request, meta: dict[str, Any], opt: Any) -> Any:
        if opt is _MISSING or opt is None or opt is True:
            target: Any = self.spider_target
        elif isinstance(opt, (Target, Mapping)):
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

    async def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        """Classify the answer: pass a success on, retry, or fail with a clear error."""
        meta = request.meta
        flight: _Flight | None = meta.get(_FLIGHT)
        if flight is None or not flight.pending:
            return response
        flight.pending = False
        if self._is_ban:
            # The user's hook gets Scrapy's own Headers and the (decompressed) body.
            outcome = flight.rr.observe(response.status, response.headers, None, response.body)
        else:
            # Only the gateway's own headers matter to the classifier: read them straight from
            # Headers (a dict of normalised names), not every header through Headers.items().
            raw = response.headers
            outcome = flight.rr.observe(
                response.status,
                [(name, value) for name in _GATEWAY_HEADERS if (value := _dict_get(raw, name))],
            )
        meta["proxaro_exit"] = outcome.exit
        meta["proxaro_route_target"] = flight.route.target
        if outcome.kind == "success":
            return response
        return await self._failed(request, flight, outcome, response)

    async def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> Request | None:
        """A failed attempt without an answer (connection, tunnel, timeout): classify it."""
        flight: _Flight | None = request.meta.get(_FLIGHT)
        if flight is None or not flight.pending or isinstance(exception, IgnoreRequest):
            return None
        flight.pending = False
        outcome = flight.rr.observe(exception=exception)
        return await self._failed(request, flight, outcome, None)

    async def _failed(
        self, request: Request, flight: _Flight, outcome: Outcome, response: Response | None
    ) -> Request:
        if outcome.retry:
            if outcome.refresh:
                await self.manager.arefresh_credentials(flight.route.credentials_version)
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
            flight.resend = True
            return new
        error = outcome.error
        if error is None:  # not expected from the core: fail clearly rather than loop
            error = ProxaroError(f"{outcome.kind} for {request.url}")
        if isinstance(error, AttemptsExhaustedError):
            raise self._gave_up(request, flight, error, response)
        self._count_error(type(error).__name__)
        raise error

    def _gave_up(
        self,
        request: Request,
        flight: _Flight,
        error: AttemptsExhaustedError,
        response: Response | None,
    ) -> ProxaroGaveUp:
        self.stats.inc_value("proxaro/gave_up")
        tried = list(error.tried) or flight.rr.tried
        message = f"Proxaro gave up on {request.url}: {error}"
        # IgnoreRequest is silent without an errback: say it here, once per request.
        logger.warning("%s", message)
        return ProxaroGaveUp(message, url=request.url, tried=tried, error=error, response=response)

    def _count_error(self, name: str) -> None:
        self.stats.inc_value(f"proxaro/errors/{name}")


def _describe(outcome: Outcome) -> str:
    """``ban (429) on exit 203.0.113.9 (de)``: an outcome for a log line (no secret)."""
    text = outcome.kind
    if outcome.status is not None:
        text += f" ({outcome.status}{' ' + outcome.gateway_error if outcome.gateway_error else ''})"
    ex = outcome.exit
    if ex is not None and ex.ip:
        text += f" on exit {ex.ip}" + (f" ({ex.country})" if ex.country else "")
    return text


# ====================================================================== the add-on


class ProxaroAddon:
    """Scrapy add-on: ``ADDONS = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}``.

    Installs :class:`ProxaroDownloaderMiddleware` at :data:`MIDDLEWARE_PRIORITY` (unless it is
    already listed with a priority of your choice) and asks for the asyncio reactor where no
    one chose another (it is Scrapy's default since 2.7).
    """

    def update_settings(self, settings: BaseSettings) -> None:
        """Add the middleware to ``DOWNLOADER_MIDDLEWARES``."""
        settings.setdefault_in_component_priority_dict(  # type: ignore[attr-defined]
            "DOWNLOADER_MIDDLEWARES", ProxaroDownloaderMiddleware, MIDDLEWARE_PRIORITY
        )

    @classmethod
    def update_pre_crawler_settings(cls, settings: BaseSettings) -> None:
        """The asyncio reactor, at add-on priority: a project's own choice still wins."""
        settings.set(
            "TWISTED_REACTOR",
            "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
            priority="addon",
        )
