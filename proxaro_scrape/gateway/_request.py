"""``RequestRouting``: the routing state machine of ONE logical request, sans I/O.

:meth:`RequestRouting.next_route` picks the next target of the failover chain whose breakers
allow it, the sticky session and the current credentials.  :meth:`RequestRouting.observe_outcome`
applies a classified answer: one small handler per outcome kind updates breakers, sessions and
counters and may refine what to do next (retry, refresh the credentials first, or raise); then
the attempt budget has the last word.  Everything shared lives in
:class:`~proxaro_scrape.gateway._core.RoutingCore` and is touched under its lock only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from proxaro_scrape.errors import (
    AttemptsExhaustedError,
    GatewayAuthError,
    GatewayError,
    ProxaroError,
)
from proxaro_scrape.gateway._breakers import CLOSED
from proxaro_scrape.gateway._route import Route, Step, host_of
from proxaro_scrape.gateway._sessions import StickySession
from proxaro_scrape.gateway.outcome import KINDS, IsBan, Outcome, classify
from proxaro_scrape.gateway.target import Target

if TYPE_CHECKING:
    from proxaro_scrape.gateway._core import RoutingCore

__all__ = ["RequestRouting"]

logger = logging.getLogger("proxaro_scrape.gateway")

#: A handler's verdict: ``(retry, refresh, error)`` (``error`` ``None``: the classification's
#: own), or ``None`` for "as classified".
Verdict = tuple[bool, bool, "ProxaroError | None"]
_RETRY: Verdict = (True, False, None)
_RETRY_AFTER_REFRESH: Verdict = (True, True, None)
_GIVE_UP: Verdict = (False, False, None)
# Built once: a counter key per kind, not an f-string per answer.
_OUTCOME_KEYS = {kind: f"outcomes/{kind}" for kind in KINDS}


def _tried_line(entry: str | tuple[int, str, str, int | None, str | None]) -> str:
    """``2. country=de → ban (429)``: one attempt of ``tried`` in words."""
    if isinstance(entry, str):
        return entry
    attempt, label, kind, status, gateway_error = entry
    line = f"{attempt}. {label} → {kind}"
    if status is not None:
        line += f" ({status}{' ' + gateway_error if gateway_error else ''})"
    return line


class RequestRouting:
    """The routing state machine of one logical request (see ``GatewayManager.request``).

    Drive it with ``route = rr.next_route()``, send through ``route``, then
    ``outcome = rr.observe(...)`` (or classify under the trust rules and call
    :meth:`observe_outcome`); repeat while ``outcome.retry``.  Not shared between threads.
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
        chain: tuple[Step, ...],
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
        self._step: Step | None = None
        # A line per attempt, kept as its parts: most requests succeed at once and nobody
        # reads their lines, so they are worded only when asked for (``tried``).
        self._tried: list[str | tuple[int, str, str, int | None, str | None]] = []
        self._stale_for = -1
        self._blind_502 = 0
        self._explicit = explicit
        self._entry = entry
        self.last_outcome: Outcome | None = None

    @property
    def host(self) -> str:
        """The request URL's host (computed when first needed)."""
        if self._host is None:
            self._host = host_of(self.url)
        return self._host

    @property
    def attempts(self) -> int:
        """Routes handed out so far."""
        return self._attempts

    @property
    def tried(self) -> list[str]:
        """What was tried so far, one line per attempt (targets and outcomes; no secret)."""
        return [_tried_line(x) for x in self._tried]

    @property
    def route(self) -> Route | None:
        """The last route handed out."""
        return self._route

    @property
    def ban_status_codes(self) -> frozenset[int]:
        """The statuses that mean "banned" (the manager's ``ban_status_codes``)."""
        return self._core.ban_status_codes

    @property
    def is_ban(self) -> IsBan | None:
        """The user's ``is_ban(status, headers, body)`` hook, or ``None``."""
        return self._core.is_ban

    def _exhausted(self, why: str) -> AttemptsExhaustedError:
        tried = self.tried
        detail = "; ".join(tried) if tried else "nothing was sent"
        return AttemptsExhaustedError(
            f"{why} for {self.url} (target {self.target.describe()}): {detail}", tried=tried
        )

    # ------------------------------------------------------------------ routes

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

    # ------------------------------------------------------------------ outcomes

    def observe(
        self,
        status: int | None = None,
        headers: Any = None,
        exception: BaseException | None = None,
        body: Any = None,
    ) -> Outcome:
        """Classify the answer to the last route and decide what to do next (legacy form).

        Pass ``status`` and ``headers`` of the answer (the CONNECT answer for a failed tunnel,
        when the stack exposes it), or the ``exception`` when there was no answer; ``body``
        only matters to an ``is_ban`` hook.  Returns the :class:`Outcome`.  Integrations use
        :mod:`proxaro_scrape.gateway.edge`, which applies the trust rules first.
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
        with core.lock:
            now = core.clock()
            store = core.store
            ex = out.exit
            if ex is not None and ex.ip and store.exit_seen(ex.ip):
                store.incr("exits_used")
            kind = self._reading(out)
            store.incr(_OUTCOME_KEYS.get(kind) or f"outcomes/{kind}")
            handler = _HANDLERS.get(kind)
            verdict = handler(self, out, step, now) if handler is not None else None
            if verdict is None:
                retry, refresh, error = out.retry, out.refresh, out.error
            else:
                retry, refresh, error = verdict
                if error is None:
                    error = out.error  # a handler that raises nothing new keeps the class's
            self._tried.append((route.attempt, step.label, kind, out.status, out.gateway_error))
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
                result = out  # the common case: nothing refined, nothing allocated
            else:
                result = Outcome(kind, retry, refresh, error, ex, out.status, out.gateway_error)
            self.last_outcome = result
            return result

    def _reading(self, out: Outcome) -> str:
        """The kind this request acts on: the classified one, except for a blind 502."""
        if out.kind == "exit_failure" and out.gateway_error is None:
            # A failed CONNECT with a bare 502: no_exit or exit_failed, the header is lost.
            # Twice in a row on the same target reads as a dead region for this request,
            # when there is another target to fail over to (else: keep retrying).
            self._blind_502 += 1
            if self._blind_502 >= 2 and self._idx + 1 < len(self._chain):
                return "region_dead"
            return "exit_failure"
        self._blind_502 = 0
        return out.kind

    # One handler per kind, called under the core's lock; each returns a Verdict or None.

    def _on_success(self, out: Outcome, step: Step, now: float) -> Verdict | None:
        core = self._core
        store = core.store
        store.incr("successes")
        b = core.breakers
        for k in step.keys:
            if b.state(k, now) != CLOSED and b.success(k, now):
                store.incr("breakers_closed")
                logger.info("%s answers again: circuit closed", step.label)
        key = self.session_key
        if key is not None:
            entry: StickySession | None = store.session_get(key)
            if entry is not None:
                entry.requests += 1
                ex = out.exit
                ip = ex.ip if ex is not None else None
                if ip and core._is_banned(self.host, ip, now):
                    # The session landed on an exit this host banned recently.
                    self._rotate_session(now)
        return None

    def _on_stale_credentials(self, out: Outcome, step: Step, now: float) -> Verdict | None:
        core = self._core
        route = self._route
        assert route is not None
        if route.credentials_version < core.creds.version:
            return _RETRY  # newer credentials are already in: just resend
        if self._stale_for == route.credentials_version:
            hint = ""
            if core.last_refresh_error is not None:
                hint = f" (the last credentials refresh failed: {core.last_refresh_error})"
            error = GatewayAuthError(
                f"the gateway refused the credentials (407 auth_failed) even after a refresh{hint}",
                status=out.status,
                error=out.gateway_error,
            )
            return (False, False, error)
        self._stale_for = route.credentials_version
        self._budget += 1  # the resend after a refresh is free
        return _RETRY_AFTER_REFRESH

    def _on_ban(self, out: Outcome, step: Step, now: float) -> Verdict | None:
        core = self._core
        store = core.store
        ex = out.exit
        store.incr("bans")
        store.incr(f"bans/country/{(ex and ex.country) or step.target.country or 'any'}")
        if ex is not None and ex.ip:
            core._note_ban(self.host, ex.ip, now)
        self._rotate_session(now)
        return None

    def _on_exit_failure(self, out: Outcome, step: Step, now: float) -> Verdict | None:
        # exit_failure, timeout, connection_error: this exit is of no use, take another.
        self._rotate_session(now)
        return None

    def _on_region_dead(self, out: Outcome, step: Step, now: float) -> Verdict | None:
        core = self._core
        store = core.store
        store.incr("region_dead")
        b = core.breakers
        if out.kind != "region_dead" and b.state(step.fail_key, now) == CLOSED:
            # Guessed from two bare 502s (see _reading): ordinary exit failures (a few percent
            # of exits) give that now and then too.  Such guesswork moves this request on,
            # but never opens the breaker every request shares; that takes the gateway's
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
            error = GatewayError(
                f"no live exit for {step.label} (502 no_exit) and failover is off",
                status=out.status,
                error=out.gateway_error,
            )
            return (False, False, error)
        if self._idx >= len(self._chain):
            return _GIVE_UP
        return None

    def _on_refused(self, out: Outcome, step: Step, now: float) -> Verdict | None:
        # bad_targeting, source_not_allowed, scope_required, tls_error: the classification's
        # error is raised as it is; no exit, session or breaker is to blame.
        return None

    def _rotate_session(self, now: float) -> None:
        key = self.session_key
        if key is not None:
            core = self._core
            core.sessions.rotate(key, now, explicit=self._explicit)
            core.store.incr("sessions_rotated")


_Handler = Callable[[RequestRouting, Outcome, Step, float], "Verdict | None"]
_HANDLERS: dict[str, _Handler] = {
    "success": RequestRouting._on_success,
    "stale_credentials": RequestRouting._on_stale_credentials,
    "ban": RequestRouting._on_ban,
    "exit_failure": RequestRouting._on_exit_failure,
    "timeout": RequestRouting._on_exit_failure,
    "connection_error": RequestRouting._on_exit_failure,
    "region_dead": RequestRouting._on_region_dead,
    "bad_targeting": RequestRouting._on_refused,
    "source_not_allowed": RequestRouting._on_refused,
    "scope_required": RequestRouting._on_refused,
    "tls_error": RequestRouting._on_refused,
}
