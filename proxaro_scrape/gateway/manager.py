"""``GatewayManager``: the public face of the gateway core.

The per-request API is sans-I/O (:mod:`~proxaro_scrape.gateway._core`): no API call, no
blocking, no sleeping, one trivial lock.  Integrations drive it through the integration
contract (:mod:`proxaro_scrape.gateway.edge`: ``run_sync`` / ``run_async``); by hand::

    mgr = GatewayManager(target={"country": "us"}, sticky="domain")
    mgr.start()                                   # or: await mgr.astart()
    rr = mgr.request(url)                         # TargetError / UsageCapError before sending
    while True:
        route = rr.next_route()                   # AttemptsExhaustedError when the budget is spent
        resp = send(url, proxy=route.proxy_url)   # no answer: edge.observe_failure(rr, ...)
        step = decide(observe_answer(rr, resp.status, resp.headers, tunnel=False))
        if step.action == "return":
            return resp
        if step.action == "raise":
            raise step.error
        if step.refresh:
            mgr.refresh_credentials(route.credentials_version)   # async: await mgr.arefresh_...

Everything the manager does in the background is written once, sans I/O, in
:mod:`~proxaro_scrape.gateway._jobs`, and run by one of two drivers
(:mod:`~proxaro_scrape.gateway._drivers`): :meth:`GatewayManager.start` starts a daemon thread,
:meth:`GatewayManager.astart` an asyncio task on the running loop.  Either polls the
credentials (every ``credentials_poll_interval``, and ahead of ``expires_at``), refreshes the
pool view every ``pool_ttl``, fetches the ASN listings that targets ask for, and polls usage
every ``usage_poll_interval``.

Start-up costs at most three API calls (credentials, countries, usage), a fourth only when the
default target names an ASN.  An ASN listing is fetched for the countries ASN targets name,
once, into the shared pool view: a request's in the background (it is sent meanwhile, and the
gateway still checks it), or before anything is sent with :meth:`GatewayManager.check_target`
/ :meth:`GatewayManager.acheck_target`.

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
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import ConfigurationError, ProxaroError
from proxaro_scrape.gateway._clients import Clients
from proxaro_scrape.gateway._core import RequestRouting, RoutingCore
from proxaro_scrape.gateway._credentials import GatewayCredentials
from proxaro_scrape.gateway._drivers import TaskDriver, ThreadDriver, adrive, drive
from proxaro_scrape.gateway._fleet_link import (
    ENV_REDIS_URL,
    fleet_client,
    make_fleet,
    usage_or_other_event,
)
from proxaro_scrape.gateway._jobs import Jobs, call_cap
from proxaro_scrape.gateway._pool import PoolView
from proxaro_scrape.gateway._store import Store
from proxaro_scrape.gateway.config import GatewayConfig, check_option_names
from proxaro_scrape.gateway.target import Target

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from proxaro_scrape.gateway.config import GatewayOptions

__all__ = ["GatewayManager"]

logger = logging.getLogger("proxaro_scrape.gateway")

#: Longest a sync caller waits for another caller's refresh (seconds).
REFRESH_WAIT = 60.0


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
    - the options, each checked once by :class:`~proxaro_scrape.gateway.GatewayConfig`: give
      ``config=GatewayConfig(...)``, or the same names as keywords (both: the keywords override
      the config's).  ``target`` (the default :class:`Target` or dict), ``sticky`` (``"off"``,
      ``"domain"`` or ``"key"``), ``session_ttl`` (minutes), ``session_max_requests``,
      ``session_lru_size``, ``failover`` (``True``, ``False`` or a list of targets),
      ``max_attempts``, ``ban_status_codes``, ``is_ban(status, headers, body)``,
      ``credentials_poll_interval``, ``pool_ttl`` and ``usage_poll_interval`` (seconds;
      ``None`` turns a poll off), ``usage_cap_action`` (``"warn"`` or ``"stop"``),
      ``breaker_base_backoff`` / ``breaker_max_backoff`` (seconds).
    - ``redis_url`` (else ``PROXARO_REDIS_URL``): make this manager one worker of a fleet that
      shares its state through Redis (:mod:`proxaro_scrape.fleet`, the ``redis`` extra);
      ``redis_prefix`` starts every key (``"proxaro"``), and ``fleet_api_rate`` is the API
      budget per minute the fleet's workers share (the plan's; 60 is Starter's).
    - ``store`` (a shared :class:`~proxaro_scrape.gateway._store.Store`), ``clock`` (monotonic
      seconds) and ``rng`` for tests.

    A bad option raises :class:`~proxaro_scrape.errors.ConfigurationError` whose ``param`` is
    the option's name, before anything is sent.
    """

    def __init__(
        self,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        config: GatewayConfig | None = None,
        store: Store | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        redis_url: str | None = None,
        redis_prefix: str = "proxaro",
        fleet_api_rate: float = 60.0,
        **options: Unpack[GatewayOptions],
    ) -> None:
        if config is not None and not isinstance(config, GatewayConfig):
            raise ConfigurationError(
                f"config is a GatewayConfig, got {type(config).__name__}", param="config"
            )
        if options:
            check_option_names(options)
            config = config.replace(**options) if config is not None else GatewayConfig(**options)
        elif config is None:
            config = GatewayConfig()
        self._clients = Clients(api_key, base_url, client, async_client)
        #: The options this manager runs with (frozen, validated).
        self.config = config
        self._clock = clock or time.monotonic
        self._fleet: Any = None
        url = redis_url if redis_url is not None else os.environ.get(ENV_REDIS_URL) or None
        if url is not None:
            if store is not None:
                raise ConfigurationError(
                    "give redis_url or store, not both (a fleet brings its own store)",
                    param="redis_url",
                )
            self._fleet = make_fleet(
                url, redis_prefix, fleet_api_rate, config, self._clients.api_key(), self._clock
            )
            store = self._fleet.store
        self.core = RoutingCore(config, store=store, clock=self._clock, rng=rng)
        self._jobs = Jobs(
            self.core,
            credentials_interval=config.credentials_poll_interval,
            pool_ttl=config.pool_ttl,
            usage_interval=config.usage_poll_interval,
            clock=self._clock,
        )
        self._jobs.wake = self._wake_driver
        self.core.want_asns = self._jobs.want_asns
        self._thread_driver: ThreadDriver | None = None
        self._task_driver: TaskDriver | None = None
        # Single-flight credential refreshes.
        self._refresh_lock = threading.Lock()
        self._sync_inflight: threading.Event | None = None
        self._async_inflight: dict[asyncio.AbstractEventLoop, asyncio.Future[bool]] = {}
        #: The credentials version a rotation event condemned (for the next refresh).
        self._condemned: int | None = None
        self._closed = False
        if self._fleet is not None:
            self._fleet.on_event = self._fleet_event

    def __repr__(self) -> str:
        creds = self.core.creds.current
        where = creds.gateway_url if creds else "not started"
        mode = {"thread": "sync", "task": "async"}.get(self.driver or "", "stopped")
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
        ``session_key`` (hashable) makes the request sticky under that key (a Scrapy cookiejar, a
        user id...).  Raises :class:`~proxaro_scrape.errors.UsageCapError` when the usage guard
        stopped routing.  No API call, no blocking: an ASN target whose country's ASN listing
        is not cached yet is sent as it is (the gateway checks it) and the listing is fetched in
        the background; see :meth:`check_target` to validate one before sending.
        """
        if self.core.creds.current is None:
            raise ProxaroError(RoutingCore.NOT_STARTED)
        return self.core.request(url, target, session_key)

    def check_target(self, target: Target | Mapping[str, Any] | None) -> Target:
        """Validate ``target`` (syntax and, once started, against the pool view) and return it.

        When the target names an ASN (or ``HEALTHY_ASN``) of a country whose ASN listing is
        not cached yet, that listing is fetched first: one API call, blocking, cached in the
        pool view that every later request shares.  On the manager's own event loop nothing
        may block: there it validates from cached data and fetches in the background; use
        :meth:`acheck_target` from a coroutine.  Raises
        :class:`~proxaro_scrape.errors.TargetError`.
        """
        t = Target.coerce(target) or self.core.default_target
        code = self._jobs.asns_needed(t)
        if code is not None:
            home = self._task_driver.loop if self._task_driver is not None else None
            here = _running_loop()
            try:
                if here is not None and here is home:
                    pass  # never block the loop: the core asks the task to fetch it
                elif self._clients.sync_or_none() is not None:
                    drive(self._jobs.fetch_asns(code), self._sync_api())
                elif home is not None and home.is_running():
                    job = adrive(self._jobs.fetch_asns(code), self._async_api())
                    asyncio.run_coroutine_threadsafe(job, home).result(REFRESH_WAIT)
            except (ProxaroError, TimeoutError) as exc:
                self._asns_unavailable(code, exc)
        return self.core.check(t)

    async def acheck_target(self, target: Target | Mapping[str, Any] | None) -> Target:
        """Async twin of :meth:`check_target`: the ASN listing it may need is awaited.

        The way to validate a target before sending from a coroutine (a Scrapy spider's
        ``proxaro_target`` at spider open, say).
        """
        t = Target.coerce(target) or self.core.default_target
        code = self._jobs.asns_needed(t)
        if code is not None:
            driver = self._task_driver
            try:
                if (
                    driver is not None
                    and driver.loop is asyncio.get_running_loop()
                    and self._clients.async_ is not None
                ):
                    await adrive(self._jobs.fetch_asns(code), self._async_api())
                elif self._clients.sync_or_none() is not None:
                    await asyncio.to_thread(drive, self._jobs.fetch_asns(code), self._sync_api())
            except ProxaroError as exc:
                self._asns_unavailable(code, exc)
        return self.core.check(t)

    def _asns_unavailable(self, code: str, exc: Exception) -> None:
        # The API could not say (down, rate limited): check from what is cached; the
        # background job fetches the listing later, and the gateway checks the target anyway.
        logger.warning(
            "could not list the ASNs of %s to check a target (checked from cached data): %s",
            code,
            exc,
        )
        self._jobs.want_asns(code)

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
    def fleet(self) -> Any:
        """The :class:`~proxaro_scrape.fleet.Fleet` this manager is a worker of, or ``None``."""
        return self._fleet

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

    @property
    def driver(self) -> str | None:
        """What runs the background work: ``"thread"`` (after :meth:`start`), ``"task"``
        (after :meth:`astart`) or ``None`` (not started, or closed)."""
        if self._thread_driver is not None:
            return "thread"
        return "task" if self._task_driver is not None else None

    def breakers(self) -> dict[str, str]:
        """Every circuit breaker that is not closed: key → ``open`` / ``half_open``."""
        with self.core.lock:
            return self.core.breakers.snapshot()

    def on_usage_cap(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once when usage reaches 100 % and ``usage_cap_action`` is stop."""
        self._jobs.cap_callbacks.append(callback)
        if self._jobs.cap_fired:
            call_cap(callback)

    # ================================================================== events

    def handle_event(self, event: Any) -> None:
        """React to a webhook event (non-blocking; safe from any thread or loop).

        Accepts a ``WebhookEvent`` or a dict with ``"type"``, ``"data"`` (and ``"created_at"``);
        one about a state that is gone (a past period, a replay) changes nothing (``_events``).
        ``credentials.rotated`` refreshes the credentials at once in the background; usage
        thresholds feed the usage guard; ``allowlist.updated`` is logged; others are ignored.
        """
        from proxaro_scrape.gateway._events import admit_event  # loaded with the first event

        if (known := admit_event(self, event)) is None:
            return
        etype, data = known
        self._on_event(etype, data, remote=False)
        if self._fleet is not None and isinstance(etype, str):
            # Every worker of the fleet hears of it, whichever one the webhook reached.
            self._fleet.broadcast_event(etype, data if isinstance(data, Mapping) else {})

    def _fleet_event(self, etype: str, data: Any) -> None:
        """A webhook event another worker of the fleet received (the fleet's thread)."""
        self._on_event(etype, data or {}, remote=True)

    def _on_event(self, etype: Any, data: Any, *, remote: bool) -> None:
        if etype == "credentials.rotated":
            self.core.store.incr("rotation_events")
            if remote:
                # The worker that received it fetches once and announces the new ones.
                logger.info("credentials.rotated event (from the fleet): new credentials follow")
                return
            logger.info("credentials.rotated event: refreshing the gateway credentials now")
            self._condemned = self.core.creds.version or None
            self._poke_credentials()
        else:
            usage_or_other_event(self.core, self._jobs, etype, data)

    def _poke_credentials(self) -> None:
        """Refresh the credentials at once, in the background, from any thread."""
        if self._jobs.poke("credentials") and self.driver is not None:
            self._wake_driver()
        elif self.core.creds.current is not None and not self._closed:
            # No driver runs (started elsewhere?): refresh in a short-lived thread.
            threading.Thread(
                target=self._refresh_sync,
                args=(self._take_condemned(),),
                kwargs={"background": True},
                name="proxaro-credentials-refresh",
                daemon=True,
            ).start()

    def _take_condemned(self) -> int | None:
        condemned, self._condemned = self._condemned, None
        return condemned

    def _sync_api(self) -> Any:
        """The sync client the jobs call the API with (behind the fleet when there is one)."""
        return fleet_client(self._fleet, False, self._clients.get_sync())

    def _async_api(self) -> Any:
        """The async twin of :meth:`_sync_api`."""
        return fleet_client(self._fleet, True, self._clients.get_async())

    def _wake_driver(self) -> None:
        """Wake whichever driver runs so that it re-reads the schedule (from any thread)."""
        driver = self._task_driver or self._thread_driver
        if driver is not None:
            driver.wake()

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
        if self._clients.sync_or_none() is None:
            loop = self._task_driver.loop if self._task_driver is not None else None
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
            if self._jobs.cooling_down():
                return False
            fut = loop.create_task(self._arefresh_once(seen_version))
            self._async_inflight[loop] = fut
        return await asyncio.shield(fut)

    def _newer(self, seen_version: int | None) -> bool:
        return seen_version is not None and self.core.creds.version > seen_version

    def _refresh_sync(self, seen_version: int | None, *, background: bool = False) -> bool:
        with self._refresh_lock:
            if self._newer(seen_version):
                return False
            inflight = self._sync_inflight
            if inflight is None:
                if not background and self._jobs.cooling_down():
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
            return drive(self._jobs.fetch_credentials(seen_version), self._sync_api())
        except Exception as exc:  # noqa: BLE001 - no client, say: a failed refresh all the same
            self._jobs.refresh_failed(exc)
            return False
        finally:
            with self._refresh_lock:
                self._sync_inflight = None
            inflight.set()

    async def _arefresh_once(self, seen_version: int | None) -> bool:
        loop = asyncio.get_running_loop()
        driver = self._task_driver
        home = driver.loop if driver is not None else None
        try:
            if self._clients.async_ is not None and loop is home:
                return await adrive(self._jobs.fetch_credentials(seen_version), self._async_api())
            if self._clients.sync_or_none() is not None:
                # No async client on this loop (a sync-started manager under Scrapy, say):
                # the sync single-flight refresh, in a worker thread.
                return await asyncio.to_thread(self._refresh_sync, seen_version)
            if home is not None and home.is_running() and self._clients.async_ is not None:
                cfut = asyncio.run_coroutine_threadsafe(self._arefresh_once(seen_version), home)
                return await asyncio.wrap_future(cfut)
            raise ProxaroError("no client to refresh the credentials with: astart() first")
        except Exception as exc:  # noqa: BLE001 - the last good credentials keep serving
            self._jobs.refresh_failed(exc)
            return False
        finally:
            if self._async_inflight.get(loop) is asyncio.current_task():
                del self._async_inflight[loop]

    # ================================================================== sync driver

    def start(self) -> GatewayManager:
        """Fetch the credentials and the pool view, then start the background thread.

        At most three API calls (credentials, countries, usage; a fourth when the default
        target names an ASN).  Raises a clear :class:`~proxaro_scrape.errors.ProxaroError`
        (the API's own error class when it answered) if the API cannot give them; validates
        the default target.
        """
        if self.driver is not None:
            return self
        self._closed = False
        client = self._sync_api()
        if self._fleet is not None:
            self._fleet.start(self.core, self._jobs)
        try:
            drive(self._jobs.start(), client)
        except BaseException:
            self._close_fleet()
            self._clients.close_sync()
            raise
        self._jobs.new_schedule()
        self._thread_driver = ThreadDriver(self._jobs, self._thread_job)
        self._thread_driver.start()
        return self

    def _thread_job(self, name: str) -> None:
        if name == "credentials":
            self._refresh_sync(self._take_condemned(), background=True)
            self._jobs.credentials_ran()
        else:
            drive(self._jobs.run(name), self._sync_api())

    def close(self) -> None:
        """Stop the background thread (or task) and close the clients the manager created."""
        self._closed = True
        thread, self._thread_driver = self._thread_driver, None
        if thread is not None:
            thread.stop()
        task, self._task_driver = self._task_driver, None
        if task is not None:
            task.cancel()
        self._close_fleet()
        self._clients.close_sync()

    def _close_fleet(self) -> None:
        if self._fleet is not None:
            self._fleet.close()

    def __enter__(self) -> GatewayManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== async driver

    async def astart(self) -> GatewayManager:
        """Async twin of :meth:`start`: the background work is a task on the running loop."""
        if self.driver is not None:
            return self
        self._closed = False
        client = self._async_api()
        if self._fleet is not None:
            await asyncio.to_thread(self._fleet.start, self.core, self._jobs)
        try:
            await adrive(self._jobs.start(), client)
        except BaseException:
            await asyncio.to_thread(self._close_fleet)
            await self._clients.aclose()
            raise
        self._jobs.new_schedule()
        self._task_driver = TaskDriver(self._jobs, self._task_job)
        return self

    async def _task_job(self, name: str) -> None:
        if name == "credentials":
            loop = asyncio.get_running_loop()
            fut = self._async_inflight.get(loop)
            if fut is None or fut.done():
                fut = loop.create_task(self._arefresh_once(self._take_condemned()))
                self._async_inflight[loop] = fut
            await asyncio.shield(fut)
            self._jobs.credentials_ran()
        else:
            await adrive(self._jobs.run(name), self._async_api())

    async def aclose(self) -> None:
        """Async twin of :meth:`close`: cancel the task, close the clients the manager made."""
        self._closed = True
        task, self._task_driver = self._task_driver, None
        if task is not None:
            if task.loop is asyncio.get_running_loop():
                await task.stop()
            else:
                task.cancel()
        if self._thread_driver is not None:
            await asyncio.to_thread(self.close)
        elif self._fleet is not None:
            await asyncio.to_thread(self._close_fleet)
        await self._clients.aclose()

    async def __aenter__(self) -> GatewayManager:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
