"""Scrapy integration: route a crawl through the Proxaro gateway.

Enable it with the add-on (Scrapy >= 2.13, asyncio reactor, the default)::

    # settings.py
    ADDONS = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}
    PROXARO_TARGET = {"country": "us"}          # every request exits in the US...
    PROXARO_STICKY = "domain"                   # ...through one exit per site while it works

or list the middleware yourself, before ``HttpProxyMiddleware`` (750), and the download handler
(it names the exit over HTTPS and takes the credentials off downloaded requests)::

    DOWNLOADER_MIDDLEWARES = {"proxaro_scrape.integrations.scrapy.ProxaroDownloaderMiddleware": 585}
    DOWNLOAD_HANDLERS = {
        "http": "proxaro_scrape.integrations.scrapy.ProxaroDownloadHandler",
        "https": "proxaro_scrape.integrations.scrapy.ProxaroDownloadHandler",
    }

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
``meta["proxy"]`` (``HttpProxyMiddleware`` turns it into ``Proxy-Authorization`` and leaves the
gateway URL without the password in meta).  The answer is observed on the integration contract
(:mod:`proxaro_scrape.gateway.edge`), under its trust rule: over plain HTTP the gateway's
``X-Proxaro-*`` headers are read from the answer; over HTTPS only the gateway's answer to the
CONNECT counts (the add-on's :class:`ProxaroDownloadHandler` keeps it), and a page's own
``X-Proxaro-*`` headers, or its own 407, are the site's answer.  A 407 from the gateway
refreshes the credentials (one API call however many requests saw it) and resends; a ban
(403/429 by default) opens a new session on a new exit and retries; a dead region fails over
to the next target; a dropped exit or a timeout retries with a new session.  Retries are made
with :func:`scrapy.downloadermiddlewares.retry.get_retry_request` (``dont_filter=True``, stats
under ``proxaro/retry/...``) and do not use up ``RETRY_TIMES`` of Scrapy's own
``RetryMiddleware``.  When the attempt budget is spent the request fails with
:class:`ProxaroGaveUp` (an ``IgnoreRequest``: it reaches the request's errback with what was
tried, and is logged as a warning); a banned page never reaches a callback.  Errors that
retrying cannot fix (``bad_targeting``, ``source_not_allowed``, ``scope_required``, a bad
``meta["proxaro"]``, a certificate that fails verification) reach the errback as the
:class:`~proxaro_scrape.errors.ProxaroError` itself.

**Requests serialise.**  ``request.meta`` holds plain data only (a flight id names the live
routing state, which stays in the middleware and is forgotten when the request ends), so every
request, retries included, passes Scrapy's disk queues (``JOBDIR``) and scrapy-redis.  A retry
that comes back in another process (a resumed ``JOBDIR``, another worker) starts a new logical
request there.  No request that goes back to the scheduler carries a secret: the add-on's
:class:`ProxaroDownloadHandler` (for ``http`` and ``https``) takes ``Proxy-Authorization`` off
each request once downloaded, so ``RedirectMiddleware``'s redirects, ``RetryMiddleware``'s
retries and a callback's copies never carry it, and the middleware's own retries leave
without it; with another download handler, the middleware strips every request of its own on
its way to the scheduler instead.

Public ``meta`` keys the middleware sets on a routed request: ``proxy`` (the gateway URL),
``proxaro_exit`` (the :class:`~proxaro_scrape.ExitInfo` of the answer, from the gateway's
``X-Proxaro-Exit-*`` headers: the answer's over HTTP, the CONNECT answer's over HTTPS; ``None``
over HTTPS with a download handler other than :class:`ProxaroDownloadHandler`) and
``proxaro_route_target`` (the concrete :class:`~proxaro_scrape.Target` after selectors and
failover).

Settings.  The gateway options are checked by :class:`~proxaro_scrape.gateway.GatewayConfig`
(one set of rules for every stack); a wrong value closes the spider when it opens, before
anything is sent, with reason ``proxaro_config`` and one error line that names the setting.
Values given on the command line with ``-s`` are decoded: ``-s PROXARO_TARGET='{"country":
"de"}'``, ``-s PROXARO_BAN_STATUS_CODES=403,429``.

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
``PROXARO_BREAKER_BASE_BACKOFF`` / ``PROXARO_BREAKER_MAX_BACKOFF`` (float, seconds, ``5`` / ``300``)
    How long a dead target is left alone before it is tried again (doubling up to the most).
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
``proxaro/errors/<ErrorClass>``, ``proxaro/usage_cap_refused`` and
``proxaro/flights_forgotten`` (retries waiting so long in the scheduler, behind more than
20,000 others, that their routing state was dropped: they start afresh).  An INFO line sums
them up at spider close.  No stat and no log line ever holds the API key or the gateway
password.

The gateway manager starts when the spider opens (on the reactor's asyncio loop) and stops
when it closes.  The spider closes early, with these reasons, when: a setting or the spider's
``proxaro_target`` is wrong, or the target is not in the pool (``proxaro_config``); the API
cannot give the credentials or the pool view at start (``proxaro_start_failed``, the error
logged); usage reaches the cap with ``PROXARO_USAGE_CAP_ACTION = "stop"``
(``proxaro_usage_cap``).  Scrapy's ``crawl`` command exits 0 whatever the close reason; with
``COMMANDS_MODULE = "proxaro_scrape.integrations.scrapy.commands"`` in ``settings.py``,
``scrapy crawl`` exits 1 when the spider closed for ``proxaro_config`` or
``proxaro_start_failed`` (see :mod:`proxaro_scrape.integrations.scrapy.commands`).
"""

from __future__ import annotations

try:
    import scrapy  # noqa: F401 - the guard: fail here, with the extra to install
except ImportError as _exc:  # pragma: no cover - exercised without Scrapy installed
    raise ImportError(
        "proxaro_scrape.integrations.scrapy needs Scrapy; install it with: "
        'pip install "proxaro-scrape[scrapy]"'
    ) from _exc

# First, from here: importing Scrapy's HTTP/1.1 handler creates three deprecated classes, and
# each walks ``inspect.stack()``, whose cost grows with the import frames under it (every
# frozen importlib frame scans all loaded modules).  Imported at this depth rather than from a
# submodule, a crawl's start spends some 55 M instructions (about 15 ms) less in that walk.
import scrapy.core.downloader.handlers.http11  # noqa: E402, F401, I001

from ._addon import ProxaroAddon
from ._handler import ProxaroDownloadHandler, ProxaroTunnelError
from ._lifecycle import CLOSE_REASONS
from ._middleware import MIDDLEWARE_PRIORITY, ProxaroDownloaderMiddleware, ProxaroGaveUp

__all__ = [
    "CLOSE_REASONS",
    "MIDDLEWARE_PRIORITY",
    "ProxaroAddon",
    "ProxaroDownloadHandler",
    "ProxaroDownloaderMiddleware",
    "ProxaroGaveUp",
    "ProxaroTunnelError",
]
