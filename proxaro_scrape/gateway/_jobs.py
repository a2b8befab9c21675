"""The manager's background work, written once, sans I/O: what to fetch, what to do with it.

Each job is a generator that *yields* the API call it needs as data (a :class:`Call`) and is
*sent* the answer (or has the API's exception thrown in at the ``yield``).  It never touches a
socket, a thread or an event loop, so one job serves both concurrency models: a sync driver
runs it with a blocking client, an async driver with an awaiting one
(:func:`~proxaro_scrape.gateway._drivers.drive`, :func:`~proxaro_scrape.gateway._drivers.adrive`).
When the next run is due is the :class:`~proxaro_scrape.gateway._schedule.Schedule`'s business.

Start-up costs at most three calls (credentials, countries, usage).  ASN listings are fetched
lazily, one country at a time, only for countries an ASN target names: the default target's at
start, a request's in the background (its request is sent meanwhile, the gateway still checks
it), or a caller's on demand before sending (``GatewayManager.check_target``).  The pool view is
the cache every request shares; a pool refresh re-reads only the listings requests used.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from proxaro_scrape.errors import (
    APIConnectionError,
    APIError,
    NotFoundError,
    PermissionDeniedError,
    ProxaroError,
)
from proxaro_scrape.gateway._core import RoutingCore
from proxaro_scrape.gateway._pool import asn_from_model, country_from_model
from proxaro_scrape.gateway._schedule import Schedule
from proxaro_scrape.gateway.target import Target

__all__ = ["Call", "Job", "Jobs"]

logger = logging.getLogger("proxaro_scrape.gateway")

T = TypeVar("T")

#: A failed credentials refresh is not retried by 407 storms for this long (seconds).
REFRESH_COOLDOWN = 1.0
#: A refresh that brought back the credentials already held is not repeated by 407s for this
#: long (seconds); shorter than any rotation grace, so a rotation right after it is still seen.
UNCHANGED_COOLDOWN = 0.25
#: ASN lists fetched per run of the background job, so that a long list of wanted countries
#: never holds up a credentials poll: the driver comes back to the schedule between batches.
ASN_BATCH = 8
#: The longest a driver sleeps without looking at the schedule again (seconds).
MAX_SLEEP = 60.0


@dataclass(frozen=True, slots=True)
class Call:
    """One API call as data: ``client.<resource>.<method>(*args)`` on the sync or async client.

    ``stale`` (credentials only) is the version a 407 or a rotation event condemned: a fleet
    client (:mod:`proxaro_scrape.fleet`) answers from another worker's fresher fetch instead of
    calling the API again.  It is never sent.
    """

    resource: str
    method: str
    args: tuple[Any, ...] = ()
    stale: int | None = None

    def bind(self, client: Any) -> Callable[..., Any]:
        """The bound method of ``client`` this call names (a client with a ``bind_call``
        method, the fleet's, binds it itself)."""
        binder = getattr(type(client), "bind_call", None)
        if binder is not None:
            return binder(client, self)  # type: ignore[no-any-return]
        return getattr(getattr(client, self.resource), self.method)  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return f"{self.resource}.{self.method}({', '.join(map(repr, self.args))})"


#: A job: yields calls, is sent their answers, returns ``T``.
Job = Generator[Call, Any, T]

CREDENTIALS = Call("credentials", "get")
COUNTRIES = Call("countries", "list")
USAGE = Call("usage", "get")


class Jobs:
    """The background jobs and everything they decide, shared by the thread and task drivers.

    Holds the schedule (under its own small lock: drivers, requests and webhook events touch
    it from any thread), the refresh cooldowns and the usage-cap callbacks; the routing state
    itself is the :class:`~proxaro_scrape.gateway._core.RoutingCore`'s.
    """

    def __init__(
        self,
        core: RoutingCore,
        *,
        credentials_interval: float,
        pool_ttl: float | None,
        usage_interval: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.core = core
        self.clock = clock
        self._intervals = (credentials_interval, pool_ttl, usage_interval)
        self.lock = threading.Lock()
        self.schedule: Schedule | None = None
        #: Wakes whichever driver runs (set by the manager); called when a job became due
        #: sooner than the driver's sleep.
        self.wake: Callable[[], None] = lambda: None
        self.refresh_failed_at: float | None = None
        self.unchanged_at: float | None = None
        self.cap_callbacks: list[Callable[[], Any]] = []
        self.cap_fired = False
        self._early_wants: set[str] = set()

    # ------------------------------------------------------------------ schedule

    def new_schedule(self) -> None:
        """A fresh schedule after a start: credentials, pool and usage polls from now."""
        creds_interval, pool_ttl, usage_interval = self._intervals
        now = self.clock()
        sched = Schedule(
            credentials_interval=creds_interval,
            pool_ttl=pool_ttl,
            usage_interval=usage_interval,
            now=now,
        )
        creds = self.core.creds.current
        if creds is not None:
            next_in = sched.credentials_next_in(creds.expires_in(time.time()))
            sched.done("credentials", True, now, next_in=next_in)
        with self.lock:
            # Asked for before the schedule existed (during start): still wanted.
            for code in self._early_wants:
                sched.want_asns(code, now)
            self._early_wants.clear()
            self.schedule = sched

    def due(self) -> list[str]:
        """The jobs due now, credentials first."""
        with self.lock:
            return self.schedule.due(self.clock()) if self.schedule is not None else []

    def sleep_for(self) -> float:
        """Seconds until the next job is due (bounded, so a driver looks again now and then)."""
        with self.lock:
            at = self.schedule.next_at() if self.schedule is not None else float("inf")
        return min(max(at - self.clock(), 0.0), MAX_SLEEP)

    def poke(self, job: str) -> bool:
        """Make ``job`` due now; False when there is no schedule (no driver runs)."""
        with self.lock:
            if self.schedule is None:
                return False
            self.schedule.poke(job, self.clock())
            return True

    def want_asns(self, code: str) -> None:
        """Ask for the ASN listing of ``code`` in the background (the per-request hook)."""
        with self.lock:
            sched = self.schedule
            if sched is None:
                self._early_wants.add(code)
                return
            if not sched.want_asns(code, self.clock()):
                return
        self.wake()

    def done(self, job: str, ok: bool) -> None:
        """Report a run of ``job`` to the schedule."""
        with self.lock:
            sched = self.schedule
            if sched is not None:
                sched.done(job, ok, self.clock())
                if job == "asns" and ok and sched.wanted_asns:
                    sched.poke("asns", self.clock())  # more to fetch: the next batch

    # ------------------------------------------------------------------ the jobs

    def start(self) -> Job[None]:
        """Start-up: credentials, countries, (the default target's ASNs), usage."""
        try:
            self.credentials_fetched((yield CREDENTIALS))
        except ProxaroError as exc:
            raise start_error(exc, "fetching the gateway credentials") from exc
        try:
            countries = yield COUNTRIES
        except ProxaroError as exc:
            raise start_error(exc, "fetching the pool view (/v1/countries)") from exc
        self.install_countries(countries)
        code = self.asns_needed(self.core.default_target)
        if code is not None:
            try:
                yield from self.fetch_asns(code)
            except ProxaroError as exc:  # fetched again in the background
                logger.warning("could not list the ASNs of %s at start: %s", code, exc)
                self.want_asns(code)
        self.core.check(None)
        yield from self.usage(quiet=True)

    def fetch_credentials(self, stale: int | None = None) -> Job[bool]:
        """One credentials fetch; True when new credentials came in.  Never raises: a failure
        is counted and logged, and the last good credentials keep serving.  ``stale``: the
        version a 407 (or a rotation event) condemned, if any (see :class:`Call`)."""
        call = CREDENTIALS if stale is None else Call("credentials", "get", stale=stale)
        try:
            return self.credentials_fetched((yield call))
        except Exception as exc:  # noqa: BLE001 - an unusable answer counts as a failure too
            self.refresh_failed(exc)
            return False

    def run(self, job: str) -> Job[None]:
        """One run of the ``pool``, ``asns`` or ``usage`` job, reported to the schedule."""
        ok = True
        try:
            if job == "pool":
                self.install_countries((yield COUNTRIES))
                for code in self.core.take_asn_countries_in_use():
                    yield from self.fetch_asns(code)
                self.core.store.incr("pool_refreshes")
            elif job == "asns":
                for code in self.asn_batch():
                    if self.core.pool.asn_allowed is False:
                        break  # scope_required: every other listing would be refused too
                    yield from self.fetch_asns(code)
            elif job == "usage":
                ok = yield from self.usage()
            else:
                raise ValueError(f"no background job {job!r}")
        except Exception as exc:  # noqa: BLE001 - a driver must survive any failure
            ok = False
            counter = {"pool": "pool_refresh_errors", "asns": "asn_refresh_errors"}
            self.core.store.incr(counter.get(job, "usage_errors"))
            logger.warning(
                "background %s refresh failed (retrying with backoff): %s: %s",
                job,
                type(exc).__name__,
                exc,
            )
        self.done(job, ok)

    def credentials_ran(self) -> None:
        """After a background credentials refresh: a failure backs the job off (a success
        rescheduled it already, from the credentials' expiry)."""
        if self.refresh_failed_at is not None:
            self.done("credentials", False)

    def fetch_asns(self, code: str) -> Job[None]:
        """The ASN listing of ``code`` into the pool view (a refusal is remembered too)."""
        try:
            asns = yield Call("countries", "asns", (code,))
        except (PermissionDeniedError, NotFoundError) as exc:
            self.asns_refused(code, exc)
            return
        self.install_asns(code, asns)

    def usage(self, *, quiet: bool = False) -> Job[bool]:
        """One usage reading; False when it failed (usage is advisory: never raises)."""
        try:
            reading = yield USAGE
        except Exception as exc:  # noqa: BLE001 - usage is advisory
            if not quiet:
                logger.warning("could not read usage: %s: %s", type(exc).__name__, exc)
            return False
        self.core.store.incr("usage_polls")
        total = getattr(reading, "total_bytes", None)
        cap = getattr(reading, "cap_bytes", None)
        self.usage_actions(self.core.usage.update(total, cap))
        return True

    # ------------------------------------------------------------------ what the answers do

    def asns_needed(self, target: Target | None) -> str | None:
        """The country whose ASN listing validating ``target`` needs and the cache lacks.

        A pinned ASN and the ``HEALTHY_ASN`` selector both name one; ``None`` when nothing is
        to be fetched (no ASN, already cached, the plan refuses ASNs, or the pool view is not
        loaded or lacks the country, which the country list refuses on its own).
        """
        if target is None or target.asn is None or target.country is None:
            return None
        pool = self.core.pool
        if not pool.loaded or pool.asn_allowed is False or target.country in pool.asns:
            return None
        if target.country not in pool.countries:
            return None  # refused from the country list alone
        return target.country

    def asn_batch(self) -> list[str]:
        """A few wanted countries at a time (see :data:`ASN_BATCH`)."""
        with self.lock:
            wanted = sorted(self.schedule.wanted_asns) if self.schedule else []
        if self.core.pool.asn_allowed is False:
            return []
        return wanted[:ASN_BATCH]

    def cooling_down(self) -> bool:
        """Should a 407-driven refresh wait?  (Just failed, or just brought nothing new.)"""
        now = self.clock()
        failed = self.refresh_failed_at
        if failed is not None and now - failed < REFRESH_COOLDOWN:
            return True
        # The API just answered with the credentials we hold (expired ones, say): asking again
        # at once cannot help, and a burst of 407s would otherwise become a burst of API calls.
        same = self.unchanged_at
        return same is not None and now - same < UNCHANGED_COOLDOWN

    def credentials_fetched(self, model: Any) -> bool:
        """Install fetched credentials and reschedule the poll; True when they are new."""
        changed = self.core.install_credentials(model)
        self.refresh_failed_at = None
        self.unchanged_at = None if changed else self.clock()
        creds = self.core.creds.current
        if changed and creds is not None and creds.version > 1:
            logger.info("new gateway credentials in use (version %d)", creds.version)
        sooner = False
        with self.lock:
            sched = self.schedule
            if sched is not None and creds is not None:
                before = sched.next_at()
                next_in = sched.credentials_next_in(creds.expires_in(time.time()))
                sched.done("credentials", True, self.clock(), next_in=next_in)
                sooner = sched.next_at() < before
        if sooner:
            self.wake()  # the driver sleeps until the old due time otherwise
        return changed

    def refresh_failed(self, exc: BaseException) -> None:
        """Count and log a failed credentials refresh; 407 storms cool down for a while."""
        self.refresh_failed_at = self.clock()
        self.core.last_refresh_error = f"{type(exc).__name__}: {exc}"
        self.core.store.incr("credential_refresh_errors")
        logger.warning(
            "could not refresh the gateway credentials (the last good ones keep serving): %s: %s",
            type(exc).__name__,
            exc,
        )

    def install_countries(self, countries: Any) -> None:
        """A fresh country list into the pool view."""
        infos = [country_from_model(c) for c in _items(countries)]
        self.core.install_pool(self.core.pool.with_countries(infos))

    def install_asns(self, code: str, asns: Any) -> None:
        """A country's ASN listing into the pool view."""
        infos = [asn_from_model(a) for a in _items(asns)]
        self.core.install_pool(self.core.pool.with_asns(code, infos))
        self._forget_wish(code)

    def asns_refused(self, code: str, exc: ProxaroError) -> None:
        """An ASN listing the API refused: below Growth, every listing will be."""
        if isinstance(exc, PermissionDeniedError) and exc.code == "scope_required":
            if self.core.pool.asn_allowed is not False:
                logger.info("ASN targeting is not available on this plan (scope_required)")
            self.core.install_pool(self.core.pool.with_asn_forbidden())
            with self.lock:
                if self.schedule is not None:
                    self.schedule.wanted_asns.clear()  # no other country will answer otherwise
        elif isinstance(exc, PermissionDeniedError):
            # A read-only key cannot be the reason (listing is a read); note it and move on.
            logger.warning("could not list the ASNs of %s: %s", code, exc)
        else:
            self.core.install_pool(self.core.pool.with_asns(code, ()))
        self._forget_wish(code)

    def _forget_wish(self, code: str) -> None:
        with self.lock:
            if self.schedule is not None:
                self.schedule.wanted_asns.discard(code)

    def usage_actions(self, actions: list[str]) -> None:
        """Log (and for ``stop``, tell the callbacks once) what the usage guard decided."""
        store = self.core.store
        frac = self.core.usage.fraction
        shown = f"{frac:.0%}" if frac is not None else "the threshold"
        for action in actions:
            if action == "warn80":
                logger.warning(
                    "Proxaro usage at %s of the plan's bandwidth cap (80 %% passed)", shown
                )
            elif action == "warn100":
                store.incr("usage_cap_reached")
                logger.warning(
                    "Proxaro usage reached the plan's bandwidth cap (%s): overage begins; "
                    "routing continues (usage_cap_action='warn')",
                    shown,
                )
            elif action == "stop":
                store.incr("usage_cap_reached")
                logger.error(
                    "Proxaro usage reached the plan's bandwidth cap (%s): routing stops "
                    "(usage_cap_action='stop')",
                    shown,
                )
                if not self.cap_fired:
                    self.cap_fired = True
                    for callback in list(self.cap_callbacks):
                        call_cap(callback)


def call_cap(callback: Callable[[], Any]) -> None:
    """Call an ``on_usage_cap`` callback; a coroutine it returns runs on the running loop."""
    try:
        result = callback()
        if asyncio.iscoroutine(result):
            try:
                asyncio.get_running_loop().create_task(result)
            except RuntimeError:
                result.close()
    except Exception:  # a user callback must not break the manager
        logger.exception("on_usage_cap callback failed")


def start_error(exc: ProxaroError, what: str) -> ProxaroError:
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


def _items(value: Any) -> list[Any]:
    data = getattr(value, "data", None)
    if data is not None and not isinstance(value, Mapping):
        return list(data)
    if isinstance(value, Mapping):
        return list(value.get("data") or [])
    return list(value)
