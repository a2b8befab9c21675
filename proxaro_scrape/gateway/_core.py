"""The sans-I/O routing core: target → route → outcome, with no socket and no sleep.

:class:`RoutingCore` holds the state every decision reads (credentials, pool view, sticky
sessions, circuit breakers, usage guard, counters) and makes the per-request decisions:

- :meth:`RoutingCore.request` validates and resolves a target (from cached data only) and
  returns a :class:`RequestRouting`, the state machine of one logical request;
- :meth:`RequestRouting.next_route` picks the next target of the failover chain whose breakers
  allow it, the sticky session, and the current credentials: a :class:`Route`;
- :meth:`RequestRouting.observe` classifies the answer (:func:`~.outcome.classify`), updates
  breakers, sessions and counters, and says whether to retry, refresh or raise.

The drivers in :mod:`proxaro_scrape.gateway.manager` feed it credentials and pool views from
the API; tests feed it plain data and a fake clock.  Everything the per-request path needs is
cached: the plan of each target per pool version, the failover steps, the username per
(step, session), the proxy URL and ``Proxy-Authorization`` per (username, credentials version).
One ``threading.Lock`` guards the shared state; it is held for microseconds, never across I/O.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import (
    AttemptsExhaustedError,
    ConfigurationError,
    GatewayAuthError,
    GatewayError,
    ProxaroError,
    UsageCapError,
)
from proxaro_scrape.gateway._breakers import CLOSED, BreakerBoard
from proxaro_scrape.gateway._credentials import CredentialsState, GatewayCredentials
from proxaro_scrape.gateway._pool import (
    PoolView,
    check_target,
    failover_chain,
    selector_candidates,
)
from proxaro_scrape.gateway._sessions import SessionTable, StickySession
from proxaro_scrape.gateway._store import MemoryStore, Store
from proxaro_scrape.gateway._usage import UsageGuard
from proxaro_scrape.gateway.outcome import IsBan, Outcome, classify
from proxaro_scrape.gateway.target import HEALTHY_ASN, Target, encode_username

__all__ = ["STICKY_MODES", "RequestRouting", "Route", "RoutingCore"]

logger = logging.getLogger("proxaro_scrape.gateway")

STICKY_MODES = ("off", "domain", "key")
#: How long a (host, exit IP) ban is remembered: a sticky session that lands on a burned exit
#: is rotated after its answer.
BAN_MEMORY_SECONDS = 600.0
_BAN_LEDGER_SIZE = 10_000
_CACHE_LIMIT = 4096


class Route:
    """Where to send one attempt: the gateway, the username for its target, the credentials.

    ``proxy_url`` (``http://user-params:PASSWORD@host:port``) carries the password: hand it to
    the client stack, never log it (``proxy_url_masked`` is for logs).  ``target`` is the
    concrete target after selector resolution and failover, without the sticky session, which
    is ``session_id``.  ``attempt`` is 1-based.  ``credentials_version`` is what to pass to
    ``refresh_credentials`` when this route meets a 407.
    """

    __slots__ = ("username", "target", "session_id", "attempt", "_creds")

    def __init__(
        self,
        username: str,
        creds: GatewayCredentials,
        target: Target,
        session_id: str | None,
        attempt: int,
    ) -> None:
        self.username = username
        self.target = target
        self.session_id = session_id
        self.attempt = attempt
        self._creds = creds

    @property
    def proxy_url(self) -> str:
        """``http://USERNAME-params:PASSWORD@GATEWAY:PORT`` (secret: never log it)."""
        return self._creds.proxy(self.username)[0]

    @property
    def proxy_authorization(self) -> str:
        """The ``Proxy-Authorization`` header value: ``Basic base64(user:pass)`` (secret)."""
        return self._creds.proxy(self.username)[1]

    @property
    def proxy_url_masked(self) -> str:
        """The proxy URL with the password masked: safe for logs."""
        return self._creds.masked_url(self.username)

    @property
    def gateway_url(self) -> str:
        """``http://GATEWAY:PORT``, no credentials."""
        return self._creds.gateway_url

    @property
    def gateway_host(self) -> str:
        """The gateway's host name or address."""
        return self._creds.gateway

    @property
    def gateway_port(self) -> int:
        """The gateway's port."""
        return self._creds.port

    @property
    def password(self) -> Secret:
        """The gateway password (a :class:`~proxaro_scrape._secrets.Secret`)."""
        return self._creds.password

    @property
    def credentials_version(self) -> int:
        """The version of the credentials this route was built with."""
        return self._creds.version

    def __repr__(self) -> str:
        return (
            f"Route(attempt={self.attempt}, target={self.target!r}, "
            f"session_id={self.session_id!r}, proxy={self.proxy_url_masked!r}, "
            f"credentials_version={self.credentials_version})"
        )


class _Step:
    """One target of a failover chain, with everything the hot path precomputes for it."""

    __slots__ = ("target", "keys", "fail_key", "stat_keys", "retry_stat_keys", "label", "_names")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.label = target.describe()
        c = target.country or "*"
        country_key = f"c:{c}"
        if target.city is None and target.asn is None and target.exit_class is None:
            keys = [country_key]
        else:
            geo = f"g:{c}|{target.city or ''}|{target.asn or ''}|{target.exit_class or ''}"
            keys = [geo, country_key]
            if target.asn is not None:
                keys.append(f"a:{c}|{target.asn}")
        self.keys = tuple(keys)
        self.fail_key = keys[0]
        self.stat_keys = (
            "requests",
            f"requests/country/{target.country or 'any'}",
            f"requests/exit_class/{target.exit_class or 'any'}",
        )
        self.retry_stat_keys = (*self.stat_keys, "retries")
        self._names: dict[tuple[str, str | None, int | None], str] = {}

    def username(self, base: str, session_id: str | None, ttl: int | None) -> str:
        key = (base, session_id, ttl)
        name = self._names.get(key)
        if name is None:
            t = self.target
            sesstime = ttl if session_id else None
            name = encode_username(
                base, t.country, t.city, t.asn, t.exit_class, session_id, sesstime
            )
            if len(self._names) >= 256:
                self._names.clear()  # bounded: sticky sessions are many, a username is cheap
            self._names[key] = name
        return name


class _Plan:
    """What :meth:`RoutingCore.request` precomputes per requested target and pool version."""

    __slots__ = ("target", "candidates", "cum_weights", "chains", "fallback", "send_ttl")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.candidates: list[Target] = []
        self.cum_weights: list[float] = []
        self.chains: dict[str, tuple[_Step, ...]] = {}  # by the resolved target's key
        self.fallback: Target | None = None
        self.send_ttl = target.session_ttl is not None


class RequestRouting:
    """The routing state machine of one logical request (see ``GatewayManager.request``).

    Drive it with ``route = rr.next_route()``, send through ``route``, then
    ``outcome = rr.observe(...)``; repeat while ``outcome.retry``.  Not shared between threads.
    """

    __slots__ = (
        "_core",
        "url",
        "_host",
        "target",
        "resolved",
        "session_key",
        "_chain",
        "_idx",
        "_last_idx",
        "_attempts",
        "_budget",
        "_route",
        "_step",
        "_tried",
        "_stale_for",
        "_blind_502",
        "_explicit",
        "_entry",
        "last_outcome",
    )

    def __init__(
        self,
        core: RoutingCore,
        url: str,
        target: Target,
        resolved: Target,
        chain: tuple[_Step, ...],
        session_key: Hashable | None,
        explicit: str | None,
        entry: StickySession | None,
    ) -> None:
        self._core = core
        self.url = url
        self._host: str | None = None
        self.target = target
        self.resolved = resolved
        self.session_key = session_key
        self._chain = chain
        self._idx = 0
        self._last_idx = -1
        self._attempts = 0
        self._budget = core.max_attempts
        self._route: Route | None = None
        self._step: _Step | None = None
        self._tried: list[str] = []
        self._stale_for = -1
        self._blind_502 = 0
        self._explicit = explicit
        self._entry = entry
        self.last_outcome: Outcome | None = None

    @property
    def host(self) -> str:
        """The request URL's host (computed when first needed)."""
        if self._host is None:
            self._host = _host(self.url)
        return self._host

    @property
    def attempts(self) -> int:
        """Routes handed out so far."""
        return self._attempts

    @property
    def tried(self) -> list[str]:
        """What was tried so far, one line per attempt (targets and outcomes; no secret)."""
        return list(self._tried)

    @property
    def route(self) -> Route | None:
        """The last route handed out."""
        return self._route

    def _exhausted(self, why: str) -> AttemptsExhaustedError:
        tried = self.tried
        detail = "; ".join(tried) if tried else "nothing was sent"
        return AttemptsExhaustedError(
            f"{why} for {self.url} (target {self.target.describe()}): {detail}", tried=tried
        )

    def next_route(self) -> Route:
        """The route for the next attempt.

        Raises :class:`~proxaro_scrape.errors.AttemptsExhaustedError` (with ``tried``) when the
        attempt budget is spent or no target of the failover chain is available.
        """
        core = self._core
        with core.lock:
            if self._attempts >= self._budget:
                raise self._exhausted(f"all {self._attempts} attempts failed")
            now = core.clock()
            chain = self._chain
            i = self._idx
            n = len(chain)
            while i < n and not core._available(chain[i], now):
                self._tried.append(f"{chain[i].label}: skipped (circuit open)")
                i += 1
            if i >= n:
                raise self._exhausted("no target of the failover chain is available")
            step = chain[i]
            self._idx = i
            store = core.store
            if i > 0 and i != self._last_idx:
                store.incr("failovers")
                # Per request: debug only (the breaker's opening is the warning worth reading).
                logger.debug("failing over from %s to %s", chain[0].label, step.label)
            self._last_idx = i
            session_id: str | None = None
            ttl: int | None = None
            entry = self._entry
            if entry is not None:
                if not (
                    now < entry.expires_at
                    and (entry.max_requests is None or entry.requests < entry.max_requests)
                    and self._attempts == 0
                ):
                    # Later attempts, or a session that ended: look it up again (a rotation
                    # or an eviction may have happened meanwhile).
                    key = self.session_key
                    entry = core.sessions.get(key, now)
                    if entry is None:
                        entry = core._open_session(
                            key, self.resolved, now, self._explicit, self.target
                        )
                    self._entry = entry
                session_id = entry.session_id
                ttl = entry.ttl_minutes
            creds = core.creds.current
            if creds is None:
                raise ProxaroError(core.NOT_STARTED)
            self._attempts += 1
            route = Route(
                step.username(creds.username, session_id, ttl),
                creds,
                step.target,
                session_id,
                self._attempts,
            )
            self._route = route
            self._step = step
            store.incr_many(step.stat_keys if self._attempts == 1 else step.retry_stat_keys)
            return route

    def observe(
        self,
        status: int | None = None,
        headers: Any = None,
        exception: BaseException | None = None,
        body: Any = None,
    ) -> Outcome:
        """Classify the answer to the last route and decide what to do next.

        Pass ``status`` and ``headers`` of the answer (the CONNECT answer for a failed tunnel,
        when the stack exposes it), or the ``exception`` when there was no answer; ``body``
        only matters to an ``is_ban`` hook.  Returns the :class:`Outcome`.
        """
        core = self._core
        out = classify(
            status,
            headers,
            exception,
            body,
            ban_status_codes=core.ban_status_codes,
            is_ban=core.is_ban,
        )
        return self.observe_outcome(out)

    @property
    def ban_status_codes(self) -> frozenset[int]:
        """The statuses that mean "banned" (the manager's ``ban_status_codes``)."""
        return self._core.ban_status_codes

    @property
    def is_ban(self) -> IsBan | None:
        """The user's ``is_ban(status, headers, body)`` hook, or ``None``."""
        return self._core.is_ban

    def observe_outcome(self, out: Outcome) -> Outcome:
        """Apply an already classified answer to the last route: breakers, sessions, counters,
        the attempt budget; returns the final :class:`Outcome` (``retry`` refined).

        The integration contract (:mod:`proxaro_scrape.gateway.edge`) classifies what a stack
        saw, under the trust rules, and hands the result here.
        """
        core = self._core
        route, step = self._route, self._step
        if route is None or step is None:
            raise ProxaroError("observe() comes after next_route()")
        kind = out.kind
        retry = out.retry
        refresh = out.refresh
        error = out.error
        with core.lock:
            now = core.clock()
            store = core.store
            ex = out.exit
            if ex is not None and ex.ip and store.exit_seen(ex.ip):
                store.incr("exits_used")
            blind = False
            if kind == "exit_failure" and out.gateway_error is None:
                # A failed CONNECT with a bare 502: no_exit or exit_failed, the header is lost.
                # Twice in a row on the same target reads as a dead region for this request,
                # when there is another target to fail over to (else: keep retrying).
                self._blind_502 += 1
                if self._blind_502 >= 2 and self._idx + 1 < len(self._chain):
                    kind = "region_dead"
                    blind = True
            else:
                self._blind_502 = 0
            store.incr(f"outcomes/{kind}")
            key = self.session_key
            if kind == "success":
                store.incr("successes")
                b = core.breakers
                for k in step.keys:
                    if b.state(k, now) != CLOSED and b.success(k, now):
                        store.incr("breakers_closed")
                        logger.info("%s answers again: circuit closed", step.label)
                if key is not None:
                    entry: StickySession | None = store.session_get(key)
                    if entry is not None:
                        entry.requests += 1
                        ip = ex.ip if ex is not None else None
                        if ip and core._bans and core._is_banned(self.host, ip, now):
                            # The session landed on an exit this host banned recently.
                            core.sessions.rotate(key, now, explicit=self._explicit)
                            store.incr("sessions_rotated")
            elif kind == "stale_credentials":
                current = core.creds.version
                if route.credentials_version < current:
                    refresh = False  # newer credentials are already in: just resend
                    retry = True
                elif self._stale_for == route.credentials_version:
                    retry = refresh = False
                    hint = ""
                    if core.last_refresh_error is not None:
                        hint = f" (the last credentials refresh failed: {core.last_refresh_error})"
                    error = GatewayAuthError(
                        f"the gateway refused the credentials (407 auth_failed) even after a "
                        f"refresh{hint}",
                        status=out.status,
                        error=out.gateway_error,
                    )
                else:
                    self._stale_for = route.credentials_version
                    retry = refresh = True
                    self._budget += 1  # the resend after a refresh is free
            elif kind == "ban":
                store.incr("bans")
                store.incr(f"bans/country/{(ex and ex.country) or step.target.country or 'any'}")
                if ex is not None and ex.ip:
                    core._note_ban(self.host, ex.ip, now)
                if key is not None:
                    core.sessions.rotate(key, now, explicit=self._explicit)
                    store.incr("sessions_rotated")
            elif kind in ("exit_failure", "timeout", "connection_error"):
                if key is not None:
                    core.sessions.rotate(key, now, explicit=self._explicit)
                    store.incr("sessions_rotated")
            elif kind == "region_dead":
                store.incr("region_dead")
                b = core.breakers
                if blind and b.state(step.fail_key, now) == CLOSED:
                    # Ordinary exit failures (a few percent of exits) also give two bare 502s
                    # in a row now and then: such guesswork moves this request on, but never
                    # opens the breaker every request shares.  That takes the gateway's
                    # explicit no_exit, or the pool view.
                    opened = False
                else:
                    opened = b.failure(step.fail_key, now)
                for k in step.keys[1:]:
                    if b.state(k, now) != CLOSED:
                        b.failure(k, now)  # a failed half-open probe reopens it
                if opened:
                    store.incr("breakers_opened")
                    logger.warning("no live exit for %s: circuit open, failing over", step.label)
                self._idx += 1
                if not core.failover_enabled:
                    retry = False
                    error = GatewayError(
                        f"no live exit for {step.label} (502 no_exit) and failover is off",
                        status=out.status,
                        error=out.gateway_error,
                    )
                elif self._idx >= len(self._chain):
                    retry = False
            line = f"{route.attempt}. {step.label} → {kind}"
            if out.status is not None:
                line += f" ({out.status}{' ' + out.gateway_error if out.gateway_error else ''})"
            self._tried.append(line)
            if retry and self._attempts >= self._budget:
                retry = refresh = False
            if not retry and kind != "success" and error is None:
                error = self._exhausted(f"all {self._attempts} attempts failed")
                store.incr("exhausted")
            if (
                kind == out.kind
                and retry == out.retry
                and refresh == out.refresh
                and (error is out.error)
            ):
                result = out
            else:
                result = Outcome(kind, retry, refresh, error, ex, out.status, out.gateway_error)
            self.last_outcome = result
            return result


class RoutingCore:
    """The shared, sans-I/O state and decisions.  ``GatewayManager`` wraps it with drivers.

    ``clock`` returns monotonic seconds; ``rng`` draws selector picks and breaker jitter; both
    are injectable so that tests control time and chance.
    """

    NOT_STARTED = (
        "the gateway manager has no credentials yet: call mgr.start() (or await mgr.astart()) "
        "before routing"
    )

    def __init__(
        self,
        *,
        target: Target | Mapping[str, Any] | None = None,
        sticky: str = "off",
        session_ttl: int = protocol.DEFAULT_SESSTIME_MINUTES,
        session_max_requests: int | None = None,
        session_lru_size: int = 10_000,
        failover: bool | Sequence[Target | Mapping[str, Any]] = True,
        max_attempts: int = 5,
        ban_status_codes: Collection[int] = (403, 429),
        is_ban: IsBan | None = None,
        usage_cap_action: str = "warn",
        breaker_base_backoff: float = 5.0,
        breaker_max_backoff: float = 300.0,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if sticky not in STICKY_MODES:
            raise ConfigurationError(
                f"sticky is one of {', '.join(STICKY_MODES)}, got {sticky!r}", param="sticky"
            )
        if (
            isinstance(session_ttl, bool)
            or not isinstance(session_ttl, int)
            or not protocol.MIN_SESSTIME_MINUTES <= session_ttl <= protocol.MAX_SESSTIME_MINUTES
        ):
            raise ConfigurationError(
                f"session_ttl is whole minutes from {protocol.MIN_SESSTIME_MINUTES} to "
                f"{protocol.MAX_SESSTIME_MINUTES}, got {session_ttl!r}",
                param="session_ttl",
            )
        if session_max_requests is not None and (
            isinstance(session_max_requests, bool)
            or not isinstance(session_max_requests, int)
            or session_max_requests < 1
        ):
            raise ConfigurationError(
                "session_max_requests is a positive number or None", param="session_max_requests"
            )
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError("max_attempts is a positive number", param="max_attempts")
        if is_ban is not None and not callable(is_ban):
            raise ConfigurationError("is_ban is a callable(status, headers, body)", param="is_ban")
        try:
            codes = frozenset(int(c) for c in ban_status_codes)
        except (TypeError, ValueError):
            raise ConfigurationError(
                "ban_status_codes is a list of HTTP statuses", param="ban_status_codes"
            ) from None
        if usage_cap_action not in ("warn", "stop"):
            raise ConfigurationError(
                f"usage_cap_action is 'warn' or 'stop', got {usage_cap_action!r}",
                param="usage_cap_action",
            )
        if (
            isinstance(session_lru_size, bool)
            or not isinstance(session_lru_size, int)
            or (session_lru_size < 1)
        ):
            raise ConfigurationError(
                "session_lru_size is a positive number", param="session_lru_size"
            )
        self.default_target = Target.coerce(target) or Target()
        self.sticky = sticky
        self.max_attempts = max_attempts
        self.ban_status_codes = codes
        self.is_ban = is_ban
        self.failover_enabled = failover is not False
        self._explicit_chain: tuple[Target, ...] | None = None
        if failover is not True and failover is not False:
            if isinstance(failover, (str, bytes, Mapping)) or not isinstance(failover, Sequence):
                raise ConfigurationError(
                    "failover is True, False or a list of targets", param="failover"
                )
            chain = []
            for item in failover:
                t = Target.coerce(item)
                if t is None:
                    raise ConfigurationError("a failover target cannot be None", param="failover")
                chain.append(t)
            self._explicit_chain = tuple(chain)
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - load spreading, not a secret
        self.store: Store = store or MemoryStore(session_lru_size)
        self.sessions = SessionTable(
            self.store, ttl_minutes=session_ttl, max_requests=session_max_requests
        )
        self.breakers = BreakerBoard(
            self.store,
            base_backoff=breaker_base_backoff,
            max_backoff=breaker_max_backoff,
            rng=self.rng,
        )
        self.creds = CredentialsState()
        self.pool = PoolView()
        self.usage = UsageGuard(usage_cap_action)
        self.lock = threading.Lock()
        self.last_refresh_error: str | None = None
        self._plans: dict[str, _Plan] = {}  # by Target._key, per pool version
        self._steps: dict[Target, _Step] = {}
        self._coerced: dict[Any, Target] = {}
        self._warned: set[str] = set()
        self._bans: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._asn_in_use: set[str] = set()
        #: Called (outside the per-request lock's critical work) with a country code whose ASNs
        #: the pool view lacks; the manager wakes its driver to fetch them.
        self.want_asns: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ per request

    def request(
        self,
        url: str,
        target: Target | Mapping[str, Any] | None = None,
        session_key: Hashable | None = None,
    ) -> RequestRouting:
        """Start routing one logical request.  See ``GatewayManager.request``."""
        if self.usage.stopped:
            raise UsageCapError(
                "the plan's bandwidth cap is reached and usage_cap_action is 'stop': routing "
                "is stopped (raise the cap or set usage_cap_action='warn')"
            )
        if target is None:
            t = self.default_target
        elif type(target) is Target:
            t = target
        else:
            t = self._coerce(target)
        explicit = t.session
        if explicit is not None:
            key: Hashable | None = ("s", explicit, t.geo._key)
        elif session_key is not None:
            key = ("k", session_key, t._key)
        elif self.sticky == "domain":
            key = ("d", _host(url), t._key)
        else:
            key = None
        entry: StickySession | None = None
        with self.lock:
            plan = self._plans.get(t._key)
            if plan is None:
                plan = self._plan(t)
            if key is not None:
                now = self.clock()
                entry = self.store.session_get(key)
                if entry is not None and not (
                    now < entry.expires_at
                    and (entry.max_requests is None or entry.requests < entry.max_requests)
                ):
                    self.store.session_pop(key)
                    entry = None
                if entry is None:
                    entry = self._open_session(key, self._pick(plan), now, explicit, t)
                resolved = entry.target
            else:
                resolved = self._pick(plan)
            chain = plan.chains.get(resolved._key)
            if chain is None:
                chain = self._chain(plan, resolved)
        return RequestRouting(self, url, t, resolved, chain, key, explicit, entry)

    def _coerce(self, target: Any) -> Target:
        try:
            cache_key: Any = tuple(sorted(target.items())) if isinstance(target, Mapping) else None
            hash(cache_key)
        except TypeError:
            cache_key = None
        if cache_key is not None:
            hit = self._coerced.get(cache_key)
            if hit is not None:
                return hit
        t = Target.coerce(target)
        assert t is not None
        if cache_key is not None:
            if len(self._coerced) >= _CACHE_LIMIT:
                self._coerced.clear()
            self._coerced[cache_key] = t
        return t

    def _open_session(
        self, key: Hashable, resolved: Target, now: float, explicit: str | None, target: Target
    ) -> StickySession:
        self.store.incr("sessions_opened")
        if explicit is not None:
            return self.sessions.open(
                key,
                resolved.geo,
                now,
                session_id=explicit,
                ttl_minutes=target.session_ttl,
                send_ttl=target.session_ttl is not None,
            )
        return self.sessions.open(key, resolved, now)

    def _plan(self, t: Target) -> _Plan:
        """Validate ``t`` against the pool view and precompute its resolution (lock held)."""
        pool = self.pool
        for warning in check_target(pool, t):
            if warning not in self._warned:
                self._warned.add(warning)
                logger.warning("%s", warning)
        plan = _Plan(t)
        geo = t.geo
        if t.asn is not None and t.country is not None:
            self._asn_in_use.add(t.country)
        if t.is_selector:
            cands = selector_candidates(pool, geo)
            if not cands:
                # The pool view cannot resolve it yet (ASNs not fetched, or not loaded): send
                # the country-level target meanwhile; the driver fetches what is missing.
                fb = geo.replace(asn=None) if geo.asn == HEALTHY_ASN else geo
                if fb.is_selector:
                    fb = Target(exit_class=fb.exit_class)
                plan.fallback = fb
                cands = [(fb, 1)]
                if geo.asn == HEALTHY_ASN and geo.country is not None:
                    self._want_later(geo.country)
            total = 0.0
            for cand, weight in cands:
                total += weight
                plan.candidates.append(cand.geo)
                plan.cum_weights.append(total)
        else:
            plan.candidates.append(geo)
            plan.cum_weights.append(1.0)
            if t.asn is not None and t.country is not None and t.country not in pool.asns:
                if pool.asn_allowed is not False and pool.loaded:
                    # Learn the ASNs so that the next pool version can validate this one.
                    self._want_later(t.country)
        if len(self._plans) >= _CACHE_LIMIT:
            self._plans.clear()
        self._plans[t._key] = plan
        return plan

    def _want_later(self, code: str) -> None:
        hook = self.want_asns
        if hook is not None:
            # Called under the lock: the hook only records the wish and wakes the driver.
            hook(code)

    def _pick(self, plan: _Plan) -> Target:
        cands = plan.candidates
        if len(cands) == 1:
            return cands[0]
        x = self.rng.random() * plan.cum_weights[-1]
        return cands[min(bisect.bisect_right(plan.cum_weights, x), len(cands) - 1)]

    def _chain(self, plan: _Plan, resolved: Target) -> tuple[_Step, ...]:
        if self._explicit_chain is not None:
            explicit: list[Target] = []
            for t in self._explicit_chain:
                if t.is_selector:
                    cands = selector_candidates(self.pool, t.geo)
                    cands.sort(key=lambda c: -c[1])
                    explicit.extend(c.geo for c, _ in cands)
                else:
                    explicit.append(t.geo)
            targets = failover_chain(self.pool, resolved, explicit)
        else:
            alternatives: list[Target] = []
            if len(plan.candidates) > 1:
                weights = dict(zip(plan.candidates, _diffs(plan.cum_weights)))
                alternatives = sorted(
                    (c for c in plan.candidates if c != resolved), key=lambda c: -weights[c]
                )
            targets = failover_chain(
                self.pool, resolved, self.failover_enabled, alternatives=alternatives
            )
        steps = []
        for t in targets:
            step = self._steps.get(t)
            if step is None:
                if len(self._steps) >= _CACHE_LIMIT:
                    self._steps.clear()
                step = self._steps[t] = _Step(t)
            steps.append(step)
        chain = tuple(steps)
        plan.chains[resolved._key] = chain
        return chain

    def _available(self, step: _Step, now: float) -> bool:
        get = self.store.breaker_get
        for k in step.keys:
            st = get(k)
            if st is not None and st.state != CLOSED:
                break
        else:
            return True  # the common case: every breaker of the step closed
        b = self.breakers
        for k in step.keys:
            if b.is_open(k, now):
                return False
        for k in step.keys:
            b.allow(k, now)  # grants the half-open probe of a breaker whose backoff is over
        return True

    def _note_ban(self, host: str, ip: str, now: float) -> None:
        bans = self._bans
        bans[(host, ip)] = now + BAN_MEMORY_SECONDS
        bans.move_to_end((host, ip))
        while len(bans) > _BAN_LEDGER_SIZE:
            bans.popitem(last=False)

    def _is_banned(self, host: str, ip: str, now: float) -> bool:
        if not self._bans:
            return False
        until = self._bans.get((host, ip))
        return until is not None and until > now

    # ------------------------------------------------------------------ state updates

    def take_asn_countries_in_use(self) -> list[str]:
        """Countries whose ASNs requests used since the last call (their lists need refreshing)."""
        with self.lock:
            used, self._asn_in_use = self._asn_in_use, set()
        return sorted(code for code in used if code in self.pool.asns)

    def install_pool(self, pool: PoolView) -> None:
        """Swap in a new pool view and feed its ``pool_health`` to the breakers."""
        with self.lock:
            now = self.clock()
            self.pool = pool
            self._plans.clear()
            b = self.breakers
            for code, info in pool.countries.items():
                if b.set_remote(f"c:{code}", info.pool_health == "down", now):
                    logger.info("pool view: %s is %s", code, info.pool_health)
            for code, asns in pool.asns.items():
                for a in asns:
                    b.set_remote(f"a:{code}|{a.asn}", a.pool_health != "healthy", now)

    def install_credentials(self, model: Any) -> bool:
        """Take freshly fetched credentials; True when they are new (a rotation)."""
        with self.lock:
            first = self.creds.current is None
            changed = self.creds.install(model)
            self.last_refresh_error = None
            self.store.incr("credential_refreshes")
            if changed and not first:
                self.store.incr("rotations")
            return changed

    def stats(self) -> dict[str, int]:
        """Counters plus a few gauges, as flat ``str → int``."""
        with self.lock:
            out = self.store.counters()
            out["logical_requests"] = out.get("requests", 0) - out.get("retries", 0)
            out["sessions"] = self.store.session_count()
            out["credentials_version"] = self.creds.version
            out["breakers_open"] = sum(
                1 for _, st in self.store.breaker_items() if st.state != CLOSED
            )
        return out


def _diffs(cum: list[float]) -> list[float]:
    prev = 0.0
    out = []
    for c in cum:
        out.append(c - prev)
        prev = c
    return out


def _host(url: str) -> str:
    """The lower-cased host of ``url`` (fast: this is on the per-request path)."""
    parts = url.split("/", 3)
    if len(parts) > 2 and parts[1] == "" and parts[0][-1:] == ":":
        hostport = parts[2]
        if "?" not in hostport and "#" not in hostport and "@" not in hostport:
            if hostport[:1] != "[":
                return hostport.partition(":")[0].lower()
    return _host_slow(url)


def _host_slow(url: str) -> str:
    i = url.find("://")
    rest = url[i + 3 :] if i >= 0 else url
    end = len(rest)
    for ch in "/?#":
        j = rest.find(ch)
        if 0 <= j < end:
            end = j
    hostport = rest[:end]
    at = hostport.rfind("@")
    if at >= 0:
        hostport = hostport[at + 1 :]
    if hostport.startswith("["):
        close = hostport.find("]")
        return hostport[: close + 1].lower() if close > 0 else hostport.lower()
    colon = hostport.find(":")
    if colon >= 0:
        hostport = hostport[:colon]
    return hostport.lower()
