"""The sans-I/O routing core: target → route → outcome, with no socket and no sleep.

:class:`RoutingCore` holds the state every decision reads (credentials, pool view, sticky
sessions, circuit breakers, usage guard, counters) and makes the shared decisions:
:meth:`RoutingCore.request` validates and resolves a target (from cached data only) and returns
a :class:`~proxaro_scrape.gateway._request.RequestRouting`, the state machine of one logical
request, which hands out :class:`~proxaro_scrape.gateway._route.Route` objects and applies
outcomes.

The drivers in :mod:`proxaro_scrape.gateway.manager` feed it credentials and pool views from
the API; tests feed it plain data and a fake clock.  Its options come from one
:class:`~proxaro_scrape.gateway.config.GatewayConfig`, validated there, never here.  Everything
the per-request path needs is cached: the plan of each target per pool version, the failover
steps, the username per (step, session), the proxy URL and ``Proxy-Authorization`` per
(username, credentials version).  One ``threading.Lock`` guards the shared state; it is held
for microseconds, never across I/O.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from proxaro_scrape.errors import ConfigurationError, UsageCapError
from proxaro_scrape.gateway._breakers import CLOSED, BreakerBoard
from proxaro_scrape.gateway._credentials import CredentialsState
from proxaro_scrape.gateway._pool import (
    PoolView,
    check_target,
    failover_chain,
    selector_candidates,
)
from proxaro_scrape.gateway._request import RequestRouting
from proxaro_scrape.gateway._route import Plan, Route, Step, host_of
from proxaro_scrape.gateway._sessions import SessionTable, StickySession
from proxaro_scrape.gateway._store import MemoryStore, Store
from proxaro_scrape.gateway._usage import UsageGuard
from proxaro_scrape.gateway.config import STICKY_MODES, GatewayConfig, check_option_names
from proxaro_scrape.gateway.target import HEALTHY_ASN, Target

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from proxaro_scrape.gateway.config import GatewayOptions

__all__ = ["STICKY_MODES", "RequestRouting", "Route", "RoutingCore"]

logger = logging.getLogger("proxaro_scrape.gateway")

#: How long a (host, exit IP) ban is remembered: a sticky session that lands on a burned exit
#: is rotated after its answer.
BAN_MEMORY_SECONDS = 600.0
_CACHE_LIMIT = 4096
#: The per-request path calls it by this name (tests too).
_host = host_of


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
        config: GatewayConfig | None = None,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        **options: Unpack[GatewayOptions],
    ) -> None:
        if options:
            check_option_names(options)
            config = config.replace(**options) if config is not None else GatewayConfig(**options)
        elif config is None:
            config = GatewayConfig()
        self.config = config
        self.default_target = config.target
        #: Mutable on purpose: a benchmark compares modes on one core.
        self.sticky = config.sticky
        self.max_attempts = config.max_attempts
        self.ban_status_codes = config.ban_status_codes
        self.is_ban = config.is_ban
        failover = config.failover
        self.failover_enabled = failover is not False
        self._explicit_chain: tuple[Target, ...] | None = (
            failover if isinstance(failover, tuple) else None
        )
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - load spreading, not a secret
        self.store: Store = store or MemoryStore(config.session_lru_size)
        self.sessions = SessionTable(
            self.store, ttl_minutes=config.session_ttl, max_requests=config.session_max_requests
        )
        self.breakers = BreakerBoard(
            self.store,
            base_backoff=config.breaker_base_backoff,
            max_backoff=config.breaker_max_backoff,
            rng=self.rng,
        )
        self.creds = CredentialsState()
        self.pool = PoolView()
        self.usage = UsageGuard(config.usage_cap_action)
        self.lock = threading.Lock()
        self.last_refresh_error: str | None = None
        self._plans: dict[str, Plan] = {}  # by Target._key, per pool version
        self._steps: dict[Target, Step] = {}
        self._warned: set[str] = set()
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
        if type(url) is not str and not isinstance(url, str):
            raise ConfigurationError(f"url must be a str, got {type(url).__name__}", param="url")
        if session_key is not None:
            try:
                hash(session_key)  # a str caches its hash: this costs nothing per request
            except TypeError:
                raise ConfigurationError(
                    f"session_key must be hashable (a str, an int, a tuple of those...), "
                    f"got {type(session_key).__name__}",
                    param="session_key",
                ) from None
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
                    entry = self._open_session(key, self._pick(plan, key), now, explicit, t)
                resolved = entry.target
            else:
                resolved = self._pick(plan)
            chain = plan.chains.get(resolved._key)
            if chain is None:
                chain = self._chain(plan, resolved)
        return RequestRouting(self, url, t, resolved, chain, key, explicit, entry)

    def check(self, target: Target | Mapping[str, Any] | None) -> Target:
        """Validate ``target`` against the current pool view (cached data only) and return it.

        ``None`` is the default target.  Raises :class:`~proxaro_scrape.errors.TargetError`.
        """
        t = Target.coerce(target) or self.default_target
        with self.lock:
            if t._key not in self._plans:
                self._plan(t)
        return t

    def _coerce(self, target: Any) -> Target:
        t = Target.coerce(target)  # a dict is checked once, then found (Target.coerce's cache)
        assert t is not None
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

    def _plan(self, t: Target) -> Plan:
        """Validate ``t`` against the pool view and precompute its resolution (lock held)."""
        pool = self.pool
        for warning in check_target(pool, t):
            if warning not in self._warned:
                self._warned.add(warning)
                logger.warning("%s", warning)
        plan = Plan(t)
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

    def _pick(self, plan: Plan, key: Hashable | None = None) -> Target:
        cands = plan.candidates
        if len(cands) == 1:
            return cands[0]
        naming = self.store.session_naming
        if key is not None and naming is not None:
            # A fleet: the session key, not a local draw, picks, so that every worker resolves
            # one sticky session to the same target (and so the same exit).
            x = naming.pick(key) * plan.cum_weights[-1]
        else:
            x = self.rng.random() * plan.cum_weights[-1]
        return cands[min(bisect.bisect_right(plan.cum_weights, x), len(cands) - 1)]

    def _chain(self, plan: Plan, resolved: Target) -> tuple[Step, ...]:
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
                step = self._steps[t] = Step(t)
            steps.append(step)
        chain = tuple(steps)
        plan.chains[resolved._key] = chain
        return chain

    def _available(self, step: Step, now: float) -> bool:
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
        self.store.ban_put(host, ip, now + BAN_MEMORY_SECONDS)

    def _is_banned(self, host: str, ip: str, now: float) -> bool:
        until = self.store.ban_until(host, ip)
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
