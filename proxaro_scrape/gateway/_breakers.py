"""Circuit breakers per target key: keep traffic away from dead regions, and bring it back.

A breaker is *closed* (traffic flows), *open* (the key is skipped until ``retry_at``) or
*half-open* (one probe request is let through; its outcome closes the breaker or opens it again
with twice the backoff).  Backoff is exponential with jitter: ``base * 2**(n-1)`` capped at
``max_backoff``, times a random factor in ``[1 - jitter, 1 + jitter]`` so that a fleet of
workers does not probe in lockstep.

Two sources feed the same state machine:

- **local observations**: a ``502 no_exit`` for a target opens its breaker
  (``failure_threshold`` consecutive failures, 1 by default since ``no_exit`` is the gateway's
  own verdict), and a success closes it (while open, only the half-open probe's counts: a
  success routed before the breaker opened is stale);
- **the remote pool view**: a country or pinned ASN whose ``pool_health`` turns down (or
  degraded) opens its breaker at once; when it turns healthy again the breaker closes.  A probe
  that succeeds in between closes it too: the freshest evidence wins.

Time is passed in (monotonic seconds) and the random source is injectable: pure and testable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from proxaro_scrape.gateway._store import Store

__all__ = ["BreakerBoard", "BreakerState"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class BreakerState:
    """The state of one breaker (absent from the store = closed, never failed)."""

    state: str = CLOSED
    failures: int = 0  # consecutive failures while closed
    opened: int = 0  # consecutive openings: the backoff exponent
    retry_at: float = 0.0  # when an open breaker lets a probe through
    probe_deadline: float = 0.0  # a probe not reported by then is assumed lost
    remote_down: bool = False  # the pool view says down (or degraded for an ASN)


class BreakerBoard:
    """Every breaker, by key, over a :class:`~proxaro_scrape.gateway._store.Store`."""

    def __init__(
        self,
        store: Store,
        *,
        base_backoff: float = 5.0,
        max_backoff: float = 300.0,
        jitter: float = 0.2,
        failure_threshold: int = 1,
        probe_timeout: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if base_backoff <= 0 or max_backoff < base_backoff:
            raise ValueError("need 0 < base_backoff <= max_backoff")
        self.store = store
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.failure_threshold = max(1, failure_threshold)
        self.probe_timeout = probe_timeout
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def backoff(self, opened: int) -> float:
        """Seconds an breaker opened ``opened`` times in a row stays open (with jitter)."""
        delay = min(self.max_backoff, self.base_backoff * (2 ** max(0, opened - 1)))
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * self.rng.random() - 1.0)
        return delay

    def state(self, key: str, now: float) -> str:
        """``closed``, ``open`` or ``half_open`` (an open breaker past ``retry_at`` reads open
        until a probe is granted)."""
        st: BreakerState | None = self.store.breaker_get(key)
        return CLOSED if st is None else st.state

    def allow(self, key: str, now: float) -> bool:
        """May a request go to ``key`` now?  Grants the half-open probe when one is due."""
        st: BreakerState | None = self.store.breaker_get(key)
        if st is None or st.state == CLOSED:
            return True
        if st.state == OPEN:
            if now < st.retry_at:
                return False
            st.state = HALF_OPEN
            st.probe_deadline = now + self.probe_timeout
            self.store.breaker_put(key, st)
            return True
        # Half-open: one probe at a time, unless the probe was lost.
        if now >= st.probe_deadline:
            st.probe_deadline = now + self.probe_timeout
            self.store.breaker_put(key, st)
            return True
        return False

    def is_open(self, key: str, now: float) -> bool:
        """Would :meth:`allow` refuse (without granting a probe)?"""
        st: BreakerState | None = self.store.breaker_get(key)
        if st is None or st.state == CLOSED:
            return False
        if st.state == OPEN:
            return now < st.retry_at
        return now < st.probe_deadline

    def success(self, key: str, now: float) -> bool:
        """A request to ``key`` succeeded; True when this closed an open/half-open breaker."""
        st: BreakerState | None = self.store.breaker_get(key)
        if st is None:
            return False
        if st.state == OPEN:
            # An open breaker lets nothing through, so this request was routed before it
            # opened (over a kept-alive tunnel, say, whose exit outlives the region): stale
            # evidence.  Closing on it made the breaker flap under load, sending a share of
            # the traffic back to the dead region.  Only the half-open probe closes it.
            return False
        reopened = st.state != CLOSED
        self.store.breaker_pop(key)
        if st.remote_down:
            # Keep the remote flag so that the next pool view saying "down" again is not
            # mistaken for a new transition; the local evidence closes the breaker.
            self.store.breaker_put(key, BreakerState(remote_down=True))
        return reopened

    def failure(self, key: str, now: float) -> bool:
        """A request to ``key`` found it dead; True when this opened the breaker."""
        st: BreakerState | None = self.store.breaker_get(key)
        if st is None:
            st = BreakerState()
        if st.state == CLOSED:
            st.failures += 1
            if st.failures < self.failure_threshold:
                self.store.breaker_put(key, st)
                return False
        was_closed = st.state == CLOSED
        self._open(st, now)
        self.store.breaker_put(key, st)
        return was_closed

    def set_remote(self, key: str, down: bool, now: float) -> bool:
        """The pool view says ``key`` is down (or not).  True when the state changed."""
        st: BreakerState | None = self.store.breaker_get(key)
        if down:
            if st is not None and st.remote_down:
                return False  # no transition: keep whatever local evidence decided since
            if st is None:
                st = BreakerState()
            st.remote_down = True
            if st.state == CLOSED:
                self._open(st, now)
            self.store.breaker_put(key, st)
            return True
        if st is None or not st.remote_down:
            return False
        self.store.breaker_pop(key)
        return True

    def _open(self, st: BreakerState, now: float) -> None:
        st.opened += 1
        st.failures = 0
        st.state = OPEN
        st.retry_at = now + self.backoff(st.opened)

    def snapshot(self) -> dict[str, str]:
        """Every breaker that is not closed: key → state."""
        return {k: st.state for k, st in self.store.breaker_items() if st.state != CLOSED}
