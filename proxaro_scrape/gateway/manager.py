"""``GatewayManager``: the public face of the gateway core, with its sync and async drivers.

The per-request API is sans-I/O (see :mod:`proxaro_scrape.gateway._core`): no API call, no
blocking, no sleeping, one trivial lock.  Integrations drive it like this::

    mgr = GatewayManager(target={"country": "us"}, sticky="domain")
    mgr.start()                                   # or: await mgr.astart()
    rr = mgr.request(url)                         # TargetError / UsageCapError before sending
    while True:
        route = rr.next_route()                   # AttemptsExhaustedError when the budget is spent
        try:
            resp = send(url, proxy=route.proxy_url)
        except Exception as exc:
            outcome = rr.observe(exception=exc)
        else:
            outcome = rr.observe(status=resp.status, headers=resp.headers)
        if outcome.ok:
            return resp
        if not outcome.retry:
            raise outcome.error
        if outcome.refresh:
            mgr.refresh_credentials(route.credentials_version)   # async: await mgr.arefresh_...

The async twin is the same loop with ``await``::

    async with GatewayManager(target=Target(continent="Europe")) as mgr:   # astart / aclose
        rr = mgr.request(url)
        while True:
            route = rr.next_route()
            try:
                resp = await client_for(route.proxy_url).get(url)
            except Exception as exc:
                outcome = rr.observe(exception=exc)
            else:
                outcome = rr.observe(status=resp.status_code, headers=resp.headers)
            if outcome.ok:
                break
            if not outcome.retry:
                raise outcome.error
            if outcome.refresh:
                await mgr.arefresh_credentials(route.credentials_version)

The drivers do the I/O around it:

- **sync**: :meth:`GatewayManager.start` fetches the credentials and the pool view, then a
  daemon thread polls the credentials (every ``credentials_poll_interval``, and ahead of
  ``expires_at``), refreshes the pool view every ``pool_ttl``, fetches the ASNs of newly
  targeted countries, and polls usage every ``usage_poll_interval``;
- **async**: :meth:`GatewayManager.astart` does the same with an asyncio task on the running
  loop (no thread, no framework-specific timer: it runs under Scrapy's asyncio reactor too).

If the API is down at a refresh, the last good credentials keep serving and the job backs off;
if it is down at start, start raises a clear error.  A 407 storm causes ONE credentials call
(single-flight refresh: a lock and an event for threads, a shared task for coroutines), and
``refresh_credentials(seen_version)`` is a no-op when newer credentials are already in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import (
    APIConnectionError,
    APIError,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    ProxaroError,
)
from proxaro_scrape.gateway._core import RequestRouting, RoutingCore
from proxaro_scrape.gateway._credentials import GatewayCredentials
from proxaro_scrape.gateway._pool import PoolView, asn_from_model, country_from_model
from proxaro_scrape.gateway._schedule import Schedule
from proxaro_scrape.gateway._store import Store
from proxaro_scrape.gateway.outcome import IsBan
from proxaro_scrape.gateway.target import Target

__all__ = ["GatewayManager"]

logger = logging.getLogger("proxaro_scrape.gateway")

ENV_API_KEY = "PROXARO_API_KEY"
#: A failed credentials refresh is not retried by 407 storms for this long (seconds).
REFRESH_COOLDOWN = 1.0
#: A refresh that brought back the credentials already held is not repeated by 407s for this
#: long (seconds); shorter than any rotation grace, so a rotation right after it is still seen.
UNCHANGED_COOLDOWN = 0.25
#: Longest a sync caller waits for another caller's refresh (seconds).
REFRESH_WAIT = 60.0
#: ASN lists fetched per run of the background job.
ASN_BATCH = 8
#: Events handle_event reacts to.
MANAGER_EVENTS = (
    "credentials.rotated",
    "usage.threshold.80",
    "usage.threshold.100",
    "allowlist.updated",
)


class GatewayManager:
    """Credentials, pool view, targeting, sticky sessions, failover and usage guard.

    >>> with GatewayManager(target={"country": "de"}, sticky="domain") as mgr:  # doctest: +SKIP
    ...     rr = mgr.request("https://shop.example/")
    ...     route = rr.next_route()
    ...     print(route.proxy_url_masked)

    Arguments (all but the first two are keyword-only):

    - ``api_key``, ``base_url``: for the REST client (else ``PROXARO_API_KEY`` /
      ``PROXARO_BASE_URL``); or bring your own ``client`` (:class:`~proxaro_scrape.Proxaro`) and
      / or ``async_client`` (:class:`~proxaro_scrape.AsyncProxaro`), which the manager does not
      close.
    - ``target``: the default :class:`Target` (or dict) for requests that give none.
    - ``sticky``: ``"off"`` (a new exit per request), ``"domain"`` (one session per target host)
      or ``"key"`` (sessions only for requests that pass ``session_key``).  A
      ``Target(session=...)`` or a ``session_key`` is sticky whatever the mode.
    - ``session_ttl`` (minutes, sent as ``sesstime``), ``session_max_requests`` (rotate after that
      many requests), ``session_lru_size`` (bound of the session table).
    - ``failover``: ``True`` (relax ASN → city → country → neighbours on the continent),
      ``False``, or an explicit list of targets tried after the request's own.
    - ``max_attempts``: attempts per logical request (a resend after a credentials refresh is
      free).
    - ``ban_status_codes`` and ``is_ban(status, headers, body) -> bool``: what a ban looks like.
    - ``credentials_poll_interval``, ``pool_ttl``, ``usage_poll_interval`` (seconds; ``None``
      turns a poll off), ``usage_cap_action`` (``"warn"`` or ``"stop"``).
    - Additions: ``breaker_base_backoff`` / ``breaker_max_backoff`` (seconds a dead target is
      left alone, doubling per failed probe), ``store`` (a shared
      :class:`~proxaro_scrape.gateway._store.Store`), ``clock`` (monotonic seconds) and ``rng``
      for tests.
    """

    def __init__(
        self,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        target: Target | Mapping[str, Any] | None = None,
        sticky: str = "off",
        session_ttl: int = protocol.DEFAULT_SESSTIME_MINUTES,
        session_max_requests: int | None = None,
        session_lru_size: int = 10_000,
        failover: bool | Sequence[Target | Mapping[str, Any]] = True,
        max_attempts: int = 5,
        ban_status_codes: Collection[int] = (403, 429),
        is_ban: IsBan | None = None,
        credentials_poll_interval: float = 30.0,
        pool_ttl: float | None = 300.0,
        usage_poll_interval: float | None = 300.0,
        usage_cap_action: str = "warn",
        breaker_base_backoff: float = 5.0,
        breaker_max_backoff: float = 300.0,
        store: Store | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (
            ("credentials_poll_interval", credentials_poll_interval),
            ("pool_ttl", pool_ttl),
            ("usage_poll_interval", usage_poll_interval),
            ("breaker_base_backoff", breaker_base_backoff),
            ("breaker_max_backoff", breaker_max_backoff),
        ):
            if value is None and name in ("pool_ttl", "usage_poll_interval"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0", param=name)
        if breaker_max_backoff < breaker_base_backoff:
            raise ConfigurationError(
                "breaker_max_backoff must be at least breaker_base_backoff",
                param="breaker_max_backoff",
            )
        if client is None and async_client is None and api_key is None:
            if not os.environ.get(ENV_API_KEY):
                raise ConfigurationError(
                    f"no API key: pass api_key=..., set {ENV_API_KEY}, or pass client=",
                    param="api_key",
                )
        self._api_key = api_key
        self._base_url = base_url
        # Clients the manager may create itself: with a key (given or in the environment).
        self._can_create_clients = api_key is not None or bool(os.environ.get(ENV_API_KEY))
        self._client = client
        self._async_client = async_client
        self._owns_client = False
        self._owns_async_client = False
        self._clock = clock or time.monotonic
        self.core = RoutingCore(
            target=target,
            sticky=sticky,
            session_ttl=session_ttl,
            session_max_requests=session_max_requests,
            session_lru_size=session_lru_size,
            failover=failover,
            max_attempts=max_attempts,
            ban_status_codes=ban_status_codes,
            is_ban=is_ban,
            usage_cap_action=usage_cap_action,
            breaker_base_backoff=breaker_base_backoff,
            breaker_max_backoff=breaker_max_backoff,
            store=store,
            clock=self._clock,
            rng=rng,
        )
        self.core.want_asns = self._want_asns
        self._intervals = (float(credentials_poll_interval), pool_ttl, usage_poll_interval)
        self._sched: Schedule | None = None
        self._sched_lock = threading.Lock()
        # Sync driver.
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Async driver.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._awake: asyncio.Event | None = None
        # Single-flight credential refreshes.
        self._refresh_lock = threading.Lock()
        self._sync_inflight: threading.Event | None = None
        self._async_inflight: dict[asyncio.AbstractEventLoop, asyncio.Future[bool]] = {}
        self._refresh_failed_at: float | None = None
        self._unchanged_at: float | None = None
        self._cap_callbacks: list[Callable[[], Any]] = []
        self._cap_fired = False
        self._closed = False

    def __repr__(self) -> str:
        creds = self.core.creds.current
        where = creds.gateway_url if creds else "not started"
        mode = "async" if self._task else "sync" if self._thread else "stopped"
        return f"<GatewayManager {where} credentials_version={self.core.creds.version} {mode}>"

    # ================================================================== per request (sans-I/O)

    def request(
        self,
        url: str,
        target: Target | Mapping[str, Any] | None = None,
        session_key: Hashable | None = None,
    ) -> RequestRouting:
        """Start routing one logical request to ``url``: a :class:`RequestRouting`.

        ``target`` (a :class:`Target`, a dict, or ``None`` for the manager's default) is checked
        against the cached pool view and resolved (selectors) right here, so a bad target raises
        :class:`~proxaro_scrape.errors.TargetError` before anything is sent.
        ``session_key`` makes the request sticky under that key (a Scrapy cookiejar, a user
        id...).  Raises :class:`~proxaro_scrape.errors.UsageCapError` when the usage guard
        stopped routing.  No API call, no blocking.
        """
        if self.core.creds.current is None:
            raise ProxaroError(RoutingCore.NOT_STARTED)
        return self.core.request(url, target, session_key)

    def check_target(self, target: Target | Mapping[str, Any] | None) -> Target:
        """Validate ``target`` (syntax and, once started, against the pool view) and return it."""
        t = Target.coerce(target) or self.core.default_target
        with self.core.lock:
            if t._key not in self.core._plans:
                self.core._plan(t)
        return t

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (flat ``str → int``).

        ``requests`` (attempts routed), ``requests/country/<code|any>``,
        ``requests/exit_class/<class|any>``, ``logical_requests`` (requests minus retries),
        ``retries``, ``successes``,
        ``outcomes/<kind>``, ``bans``, ``bans/country/<code>``, ``failovers``, ``region_dead``,
        ``breakers_opened``, ``breakers_closed``, ``breakers_open``, ``exhausted``,
        ``sessions`` (in the table), ``sessions_opened``, ``sessions_rotated``, ``exits_used``,
        ``credential_refreshes`` (successful fetches), ``credential_refresh_errors``,
        ``rotations`` (new credentials taken into use), ``rotation_events``,
        ``credentials_version``, ``pool_refreshes``, ``pool_refresh_errors``, ``usage_polls``,
        ``usage_cap_reached``.  Never a secret.
        """
        return self.core.stats()

    @property
    def credentials(self) -> GatewayCredentials | None:
        """The current gateway credentials (password masked in ``repr``), or ``None``."""
        return self.core.creds.current

    @property
    def credentials_version(self) -> int:
        """The current credentials version (0 before start)."""
        return self.core.creds.version

    @property
    def pool(self) -> PoolView:
        """The current pool view (an immutable snapshot)."""
        return self.core.pool

    @property
    def default_target(self) -> Target:
        """The target of requests that give none."""
        return self.core.default_target

    def breakers(self) -> dict[str, str]:
        """Every circuit breaker that is not closed: key → ``open`` / ``half_open``."""
        with self.core.lock:
            return self.core.breakers.snapshot()

    def on_usage_cap(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once when usage reaches 100 % and ``usage_cap_action`` is stop."""
        self._cap_callbacks.append(callback)
        if self._cap_fired:
            self._call_cap(callback)

    # ================================================================== events

    def handle_event(self, event: Any) -> None:
        """React to a webhook event (non-blocking; safe from any thread or loop).

        Accepts an object with ``.type`` and ``.data`` (``proxaro_scrape.webhooks``'
        ``WebhookEvent``) or a dict with ``"type"`` / ``"data"``.  ``credentials.rotated``
        refreshes the credentials at once in the background; ``usage.threshold.80`` / ``.100``
        feed the usage guard; ``allowlist.updated`` is logged; other types are ignored.
        """
        if isinstance(event, Mapping):
            etype, data = event.get("type"), event.get("data") or {}
        else:
            etype, data = getattr(event, "type", None), getattr(event, "data", None) or {}
        if etype == "credentials.rotated":
            self.core.store.incr("rotation_events")
            logger.info("credentials.rotated event: refreshing the gateway credentials now")
            self._poke("credentials")
        elif isinstance(etype, str) and etype.startswith("usage.threshold."):
            suffix = etype.rsplit(".", 1)[-1]
            pct = int(suffix) if suffix.isdigit() else 0
            if isinstance(data, Mapping):
                total, cap = data.get("total_bytes"), data.get("cap_bytes")
                if isinstance(total, int) and isinstance(cap, int):
                    self.core.usage.total_bytes, self.core.usage.cap_bytes = total, cap
            self._usage_actions(self.core.usage.threshold(pct))
        elif etype == "allowlist.updated":
            logger.info("allowlist.updated event: the gateway's allowlist changed")
        else:
            logger.debug("event %r ignored by the gateway manager", etype)

    # ================================================================== credentials

    def refresh_credentials(self, seen_version: int | None = None) -> bool:
        """Fetch the credentials now (blocking), unless newer than ``seen_version`` are in.

        Single-flight: concurrent callers share one API call.  Returns True when new
        credentials were taken into use.  Never raises for an API failure: the last good
        credentials keep serving (and a following 407 raises ``GatewayAuthError`` naming it).
        On the manager's own event loop use :meth:`arefresh_credentials`.
        """
        if self._newer(seen_version):
            return False
        loop = self._loop
        if self._sync_client_or_none() is None:
            if loop is None or not loop.is_running():
                raise ProxaroError("no client to refresh the credentials with: start() first")
            if _running_loop() is loop:
                raise ProxaroError(
                    "refresh_credentials() would block the event loop: "
                    "await mgr.arefresh_credentials(...) instead"
                )
            fut = asyncio.run_coroutine_threadsafe(self.arefresh_credentials(seen_version), loop)
            return fut.result(timeout=REFRESH_WAIT)
        return self._refresh_sync(seen_version)

    async def arefresh_credentials(self, seen_version: int | None = None) -> bool:
        """Async twin of :meth:`refresh_credentials` (one shared task per event loop)."""
        if self._newer(seen_version):
            return False
        loop = asyncio.get_running_loop()
        fut = self._async_inflight.get(loop)
        if fut is None or fut.done():
            if self._cooling_down():
                return False
            fut = loop.create_task(self._arefresh_once(seen_version))
            self._async_inflight[loop] = fut
        try:
            return await asyncio.shield(fut)
        except ProxaroError:
            return False

    def _newer(self, seen_version: int | None) -> bool:
        return seen_version is not None and self.core.creds.version > seen_version

    def _cooling_down(self) -> bool:
        now = self._clock()
        failed = self._refresh_failed_at
        if failed is not None and now - failed < REFRESH_COOLDOWN:
            return True
        # The API just answered with the credentials we hold (expired ones, say): asking again
        # at once cannot help, and a burst of 407s would otherwise become a burst of API calls.
        same = self._unchanged_at
        return same is not None and now - same < UNCHANGED_COOLDOWN

    def _refresh_sync(self, seen_version: int | None, *, background: bool = False) -> bool:
        with self._refresh_lock:
            if self._newer(seen_version):
                return False
            inflight = self._sync_inflight
            if inflight is None:
                if not background and self._cooling_down():
                    return False
                inflight = self._sync_inflight = threading.Event()
                owner = True
            else:
                owner = False
        if not owner:
            inflight.wait(REFRESH_WAIT)
            return self._newer(seen_version if seen_version is not None else -1)
        try:
            # Installed before the waiters are woken: they resend at once, with what is current.
            return self._credentials_fetched(self._sync_client().credentials.get())
        except Exception as exc:  # noqa: BLE001 - keep serving the last good credentials
            self._refresh_failed(exc)
            if background:
                raise
            return False
        finally:
            with self._refresh_lock:
                self._sync_inflight = None
            inflight.set()

    async def _arefresh_once(self, seen_version: int | None, *, background: bool = False) -> bool:
        loop = asyncio.get_running_loop()
        try:
            if self._async_client is not None and loop is self._loop:
                model = await self._async_client.credentials.get()
                return self._credentials_fetched(model)  # a refusal counts as a failed refresh
            elif self._sync_client_or_none() is not None:
                # No async client on this loop (a sync-started manager under Scrapy, say):
                # the sync single-flight refresh, in a worker thread.
                return await asyncio.to_thread(self._refresh_sync, seen_version)
            elif self._loop is not None and self._loop.is_running() and self._async_client:
                cfut = asyncio.run_coroutine_threadsafe(
                    self._arefresh_once(seen_version), self._loop
                )
                return await asyncio.wrap_future(cfut)
            else:
                raise ProxaroError("no client to refresh the credentials with: astart() first")
        except Exception as exc:
            self._refresh_failed(exc)
            if background:
                raise
            return False
        finally:
            if self._async_inflight.get(loop) is asyncio.current_task():
                del self._async_inflight[loop]

    def _credentials_fetched(self, model: Any) -> bool:
        self._refresh_failed_at = None
        changed = self.core.install_credentials(model)
        self._unchanged_at = None if changed else self._clock()
        creds = self.core.creds.current
        if changed and creds is not None and creds.version > 1:
            logger.info("new gateway credentials in use (version %d)", creds.version)
        with self._sched_lock:
            sched = self._sched
            if sched is not None and creds is not None:
                before = sched.next_at()
                expires_in = creds.expires_in(time.time())
                sched.done(
                    "credentials",
                    True,
                    self._clock(),
                    next_in=sched.credentials_next_in(expires_in),
                )
                sooner = sched.next_at() < before
            else:
                sooner = False
        if sooner:
            self._wake_driver()  # the driver sleeps until the old due time otherwise
        return changed

    def _refresh_failed(self, exc: BaseException) -> None:
        self._refresh_failed_at = self._clock()
        self.core.last_refresh_error = f"{type(exc).__name__}: {exc}"
        self.core.store.incr("credential_refresh_errors")
        logger.warning(
            "could not refresh the gateway credentials (the last good ones keep serving): %s: %s",
            type(exc).__name__,
            exc,
        )

    # ================================================================== sync driver

    def start(self) -> GatewayManager:
        """Fetch the credentials and the pool view, then start the background thread.

        Raises a clear :class:`~proxaro_scrape.errors.ProxaroError` (the API's own error class
        when it answered) if the API cannot give them; validates the default target.
        """
        if self._thread is not None or self._task is not None:
            return self
        self._closed = False
        client = self._sync_client()
        try:
            try:
                self._credentials_fetched(client.credentials.get())
            except ProxaroError as exc:
                raise _start_error(exc, "fetching the gateway credentials") from exc
            try:
                countries = client.countries.list()
            except ProxaroError as exc:
                raise _start_error(exc, "fetching the pool view (/v1/countries)") from exc
            self._install_countries(countries)
            code = self._probe_country()
            if code is not None:
                try:
                    self._fetch_asns_sync(code)
                except ProxaroError as exc:  # ASNs are fetched again in the background
                    logger.warning("could not list the ASNs of %s at start: %s", code, exc)
            self.check_target(None)
            self._usage_sync(quiet=True)
        except BaseException:
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None
                self._owns_client = False
            raise
        self._new_schedule()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run_thread, name="proxaro-gateway-manager", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the background thread (or task) and close the clients the manager created."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=10)
            self._thread = None
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not task.done():
            if _running_loop() is loop:
                task.cancel()
            elif loop.is_running():
                loop.call_soon_threadsafe(task.cancel)
        self._task = None
        self._loop = None
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
            self._owns_client = False

    def __enter__(self) -> GatewayManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_thread(self) -> None:
        while not self._stop.is_set():
            with self._sched_lock:
                sched = self._sched
                jobs = sched.due(self._clock()) if sched else []
            for job in jobs:
                if self._stop.is_set():
                    return
                self._job_sync(job)
            with self._sched_lock:
                delay = (self._sched.next_at() if self._sched else float("inf")) - self._clock()
            self._wake.wait(timeout=min(max(delay, 0.0), 60.0))
            self._wake.clear()

    def _job_sync(self, job: str) -> None:
        ok = True
        try:
            if job == "credentials":
                self._refresh_sync(None, background=True)
                if self._refresh_failed_at is None:
                    return  # rescheduled by _credentials_fetched
                ok = False
            if job == "pool":
                client = self._sync_client()
                self._install_countries(client.countries.list())
                for code in self.core.take_asn_countries_in_use():
                    self._fetch_asns_sync(code)
                self.core.store.incr("pool_refreshes")
            elif job == "asns":
                for code in self._asns_batch():
                    self._fetch_asns_sync(code)
            elif job == "usage":
                ok = self._usage_sync()
        except Exception as exc:  # noqa: BLE001 - the thread must survive any failure
            ok = False
            self._job_failed(job, exc)
        self._job_done(job, ok)

    def _fetch_asns_sync(self, code: str) -> None:
        try:
            asns = self._sync_client().countries.asns(code)
        except (PermissionDeniedError, NotFoundError) as exc:
            self._asns_refused(code, exc)
            return
        self._install_asns(code, asns)

    def _usage_sync(self, *, quiet: bool = False) -> bool:
        try:
            usage = self._sync_client().usage.get()
        except Exception as exc:  # noqa: BLE001 - usage is advisory
            if not quiet:
                logger.warning("could not read usage: %s: %s", type(exc).__name__, exc)
            return False
        self._usage_read(usage)
        return True

    # ================================================================== async driver

    async def astart(self) -> GatewayManager:
        """Async twin of :meth:`start`: the background work is a task on the running loop."""
        if self._thread is not None or self._task is not None:
            return self
        self._closed = False
        loop = asyncio.get_running_loop()
        self._loop = loop
        client = self._aclient()
        try:
            try:
                self._credentials_fetched(await client.credentials.get())
            except ProxaroError as exc:
                raise _start_error(exc, "fetching the gateway credentials") from exc
            try:
                countries = await client.countries.list()
            except ProxaroError as exc:
                raise _start_error(exc, "fetching the pool view (/v1/countries)") from exc
            self._install_countries(countries)
            code = self._probe_country()
            if code is not None:
                try:
                    await self._fetch_asns_async(code)
                except ProxaroError as exc:  # ASNs are fetched again in the background
                    logger.warning("could not list the ASNs of %s at start: %s", code, exc)
            self.check_target(None)
            await self._usage_async(quiet=True)
        except BaseException:
            self._loop = None
            if self._owns_async_client and self._async_client is not None:
                await self._async_client.aclose()
                self._async_client = None
                self._owns_async_client = False
            raise
        self._new_schedule()
        self._awake = asyncio.Event()
        self._task = loop.create_task(self._run_task(), name="proxaro-gateway-manager")
        return self

    async def aclose(self) -> None:
        """Async twin of :meth:`close`: cancel the task, close the clients the manager made."""
        self._closed = True
        task = self._task
        self._task = None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._thread is not None:
            await asyncio.to_thread(self.close)
        self._loop = None
        if self._owns_async_client and self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
            self._owns_async_client = False
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
            self._owns_client = False

    async def __aenter__(self) -> GatewayManager:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run_task(self) -> None:
        awake = self._awake
        assert awake is not None
        while True:
            with self._sched_lock:
                jobs = self._sched.due(self._clock()) if self._sched else []
            for job in jobs:
                await self._job_async(job)
            with self._sched_lock:
                delay = (self._sched.next_at() if self._sched else float("inf")) - self._clock()
            try:
                await asyncio.wait_for(awake.wait(), timeout=min(max(delay, 0.0), 60.0))
            except asyncio.TimeoutError:
                pass
            awake.clear()

    async def _job_async(self, job: str) -> None:
        ok = True
        try:
            if job == "credentials":
                loop = asyncio.get_running_loop()
                fut = self._async_inflight.get(loop)
                if fut is None or fut.done():
                    fut = loop.create_task(self._arefresh_once(None, background=True))
                    self._async_inflight[loop] = fut
                await asyncio.shield(fut)
                if self._refresh_failed_at is None:
                    return  # rescheduled by _credentials_fetched
                ok = False
            client = self._aclient()
            if job == "pool":
                self._install_countries(await client.countries.list())
                for code in self.core.take_asn_countries_in_use():
                    await self._fetch_asns_async(code)
                self.core.store.incr("pool_refreshes")
            elif job == "asns":
                for code in self._asns_batch():
                    await self._fetch_asns_async(code)
            elif job == "usage":
                ok = await self._usage_async()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the task must survive any failure
            ok = False
            self._job_failed(job, exc)
        self._job_done(job, ok)

    async def _fetch_asns_async(self, code: str) -> None:
        try:
            asns = await self._aclient().countries.asns(code)
        except (PermissionDeniedError, NotFoundError) as exc:
            self._asns_refused(code, exc)
            return
        self._install_asns(code, asns)

    async def _usage_async(self, *, quiet: bool = False) -> bool:
        try:
            usage = await self._aclient().usage.get()
        except Exception as exc:  # noqa: BLE001 - usage is advisory
            if not quiet:
                logger.warning("could not read usage: %s: %s", type(exc).__name__, exc)
            return False
        self._usage_read(usage)
        return True

    # ================================================================== shared driver pieces

    def _sync_client_or_none(self) -> Any:
        if self._client is None and not self._can_create_clients:
            return None
        return self._sync_client()

    def _sync_client(self) -> Any:
        if self._client is None:
            if not self._can_create_clients:
                raise ConfigurationError(
                    "the sync driver needs client= or an API key (only async_client was given)",
                    param="client",
                )
            from proxaro_scrape.api import Proxaro

            self._client = Proxaro(self._api_key, self._base_url)
            self._owns_client = True
        return self._client

    def _aclient(self) -> Any:
        if self._async_client is None:
            if not self._can_create_clients:
                raise ConfigurationError(
                    "the async driver needs async_client= or an API key (only client was given)",
                    param="async_client",
                )
            from proxaro_scrape.api import AsyncProxaro

            self._async_client = AsyncProxaro(self._api_key, self._base_url)
            self._owns_async_client = True
        return self._async_client

    def _new_schedule(self) -> None:
        creds_interval, pool_ttl, usage_interval = self._intervals
        now = self._clock()
        with self._sched_lock:
            sched = Schedule(
                credentials_interval=creds_interval,
                pool_ttl=pool_ttl,
                usage_interval=usage_interval,
                now=now,
            )
            creds = self.core.creds.current
            if creds is not None:
                sched.done(
                    "credentials",
                    True,
                    now,
                    next_in=sched.credentials_next_in(creds.expires_in(time.time())),
                )
            pool = self.core.pool
            if pool.asn_allowed is not False:
                # Every country's ASNs, fetched once in the background right after start, so
                # that an ASN target is validated from cached data before it is sent.  Later
                # pool refreshes only re-fetch the countries that ASN targets actually use.
                for code in pool.countries:
                    if code not in pool.asns:
                        sched.want_asns(code, now)
            self._sched = sched

    def _poke(self, job: str) -> None:
        """Make ``job`` due now and wake whichever driver runs (from any thread)."""
        loop = self._loop
        if self._task is not None and loop is not None and self._awake is not None:
            awake = self._awake

            def poke() -> None:
                with self._sched_lock:
                    if self._sched is not None:
                        self._sched.poke(job, self._clock())
                awake.set()

            if _running_loop() is loop:
                poke()
            else:
                try:
                    loop.call_soon_threadsafe(poke)
                except RuntimeError:  # the loop is closed: nothing to wake
                    pass
            return
        with self._sched_lock:
            if self._sched is not None:
                self._sched.poke(job, self._clock())
        if self._thread is not None:
            self._wake.set()
        elif job == "credentials" and self.core.creds.current is not None and not self._closed:
            # No driver runs (started elsewhere?): refresh in a short-lived thread.
            threading.Thread(
                target=self._refresh_quietly, name="proxaro-credentials-refresh", daemon=True
            ).start()

    def _refresh_quietly(self) -> None:
        try:
            self._refresh_sync(None, background=True)
        except Exception:  # noqa: BLE001,S110 - logged by _refresh_failed
            pass

    def _want_asns(self, code: str) -> None:
        # Called from the per-request path under the core's lock: record and wake, nothing else.
        with self._sched_lock:
            sched = self._sched
            if sched is None or not sched.want_asns(code, self._clock()):
                return
        self._wake_driver()

    def _wake_driver(self) -> None:
        """Wake whichever driver runs so that it re-reads the schedule (from any thread)."""
        loop, awake = self._loop, self._awake
        if self._task is not None and loop is not None and awake is not None:
            if _running_loop() is loop:
                awake.set()
                return
            try:
                loop.call_soon_threadsafe(awake.set)
            except RuntimeError:  # the loop is closed: nothing to wake
                pass
        elif self._thread is not None:
            self._wake.set()

    def _asns_batch(self) -> list[str]:
        """A few wanted countries at a time, so a long ASN prefetch never holds up a credentials
        poll: the driver comes back to the schedule between batches."""
        with self._sched_lock:
            wanted = sorted(self._sched.wanted_asns) if self._sched else []
        if self.core.pool.asn_allowed is False:
            return []
        return wanted[:ASN_BATCH]

    def _job_done(self, job: str, ok: bool) -> None:
        with self._sched_lock:
            sched = self._sched
            if sched is not None:
                sched.done(job, ok, self._clock())
                if job == "asns" and ok and sched.wanted_asns:
                    sched.poke("asns", self._clock())  # more to fetch: the next batch

    def _job_failed(self, job: str, exc: BaseException) -> None:
        if job == "credentials":
            return  # counted and logged by _refresh_failed
        self.core.store.incr(
            {"pool": "pool_refresh_errors", "asns": "asn_refresh_errors"}.get(job, "usage_errors")
        )
        logger.warning(
            "background %s refresh failed (retrying with backoff): %s: %s",
            job,
            type(exc).__name__,
            exc,
        )

    def _probe_country(self) -> str | None:
        """The country whose ASN listing tells whether ASN targeting is allowed."""
        pool = self.core.pool
        t = self.core.default_target
        if t.country and t.country in pool.countries:
            return t.country
        if not pool.countries:
            return None
        return max(pool.countries.values(), key=lambda c: c.estimated_pool_size).code

    def _install_countries(self, countries: Any) -> None:
        infos = [country_from_model(c) for c in _items(countries)]
        self.core.install_pool(self.core.pool.with_countries(infos))

    def _install_asns(self, code: str, asns: Any) -> None:
        infos = [asn_from_model(a) for a in _items(asns)]
        self.core.install_pool(self.core.pool.with_asns(code, infos))
        with self._sched_lock:
            if self._sched is not None:
                self._sched.wanted_asns.discard(code)

    def _asns_refused(self, code: str, exc: ProxaroError) -> None:
        if isinstance(exc, PermissionDeniedError) and exc.code == "scope_required":
            if self.core.pool.asn_allowed is not False:
                logger.info("ASN targeting is not available on this plan (scope_required)")
            self.core.install_pool(self.core.pool.with_asn_forbidden())
            with self._sched_lock:
                if self._sched is not None:
                    self._sched.wanted_asns.clear()  # no other country will answer otherwise
        elif isinstance(exc, PermissionDeniedError):
            # A read-only key cannot be the reason (listing is a read); note it and move on.
            logger.warning("could not list the ASNs of %s: %s", code, exc)
        else:
            self.core.install_pool(self.core.pool.with_asns(code, ()))
        with self._sched_lock:
            if self._sched is not None:
                self._sched.wanted_asns.discard(code)

    def _usage_read(self, usage: Any) -> None:
        self.core.store.incr("usage_polls")
        total = getattr(usage, "total_bytes", None)
        cap = getattr(usage, "cap_bytes", None)
        self._usage_actions(self.core.usage.update(total, cap))

    def _usage_actions(self, actions: list[str]) -> None:
        usage = self.core.usage
        frac = usage.fraction
        shown = f"{frac:.0%}" if frac is not None else "the threshold"
        for action in actions:
            if action == "warn80":
                logger.warning(
                    "Proxaro usage at %s of the plan's bandwidth cap (80 %% passed)", shown
                )
            elif action == "warn100":
                self.core.store.incr("usage_cap_reached")
                logger.warning(
                    "Proxaro usage reached the plan's bandwidth cap (%s): overage begins; "
                    "routing continues (usage_cap_action='warn')",
                    shown,
                )
            elif action == "stop":
                self.core.store.incr("usage_cap_reached")
                logger.error(
                    "Proxaro usage reached the plan's bandwidth cap (%s): routing stops "
                    "(usage_cap_action='stop')",
                    shown,
                )
                if not self._cap_fired:
                    self._cap_fired = True
                    for callback in list(self._cap_callbacks):
                        self._call_cap(callback)

    @staticmethod
    def _call_cap(callback: Callable[[], Any]) -> None:
        try:
            result = callback()
            if asyncio.iscoroutine(result):
                loop = _running_loop()
                if loop is not None:
                    loop.create_task(result)
                else:
                    result.close()
        except Exception:  # a user callback must not break the manager
            logger.exception("on_usage_cap callback failed")


def _items(value: Any) -> list[Any]:
    data = getattr(value, "data", None)
    if data is not None and not isinstance(value, Mapping):
        return list(data)
    if isinstance(value, Mapping):
        return list(value.get("data") or [])
    return list(value)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _start_error(exc: ProxaroError, what: str) -> ProxaroError:
    """The same error class, with a message that says the manager could not start."""
    if isinstance(exc, APIError):
        text = f"could not start the gateway manager: {what} failed: {exc.message}"
        try:
            return type(exc)(
                text,
                status=exc.status,
                type=exc.type,
                code=exc.code,
                param=exc.param,
                request_id=exc.request_id,
            )
        except TypeError:
            return ProxaroError(f"{text} ({exc})")
    text = f"could not start the gateway manager: {what} failed: {exc}"
    if isinstance(exc, APIConnectionError):
        try:
            return type(exc)(text)
        except TypeError:
            pass
    return ProxaroError(text)
