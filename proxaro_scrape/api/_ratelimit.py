"""The API's rate-limit headers and the client-side :class:`Pacer` that keeps under them.

Pure bookkeeping over the ``now`` each call is given: the clients do the sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from proxaro_scrape.api import _validate
from proxaro_scrape.errors import ConfigurationError

# ---------------------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class RateLimit:
    """The last ``X-RateLimit-*`` values the API sent: the per-key sliding 60 s budget."""

    limit: int | None
    remaining: int | None
    reset: datetime | None
    #: When the values were read (UNIX time).
    observed_at: float = 0.0

    def seconds_until_reset(self, now: float | None = None) -> float | None:
        """Seconds until ``reset`` (0 when it passed), ``None`` when the API did not say."""
        if self.reset is None:
            return None
        now = time.time() if now is None else now
        return max(0.0, self.reset.timestamp() - now)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if math.isfinite(number) else None


def parse_rate_limit(headers: Mapping[str, str], *, now: float) -> RateLimit | None:
    """The ``X-RateLimit-*`` headers, or ``None`` when there are none.  Garbage reads ``None``."""
    limit = _int_header(headers, "x-ratelimit-limit")
    remaining = _int_header(headers, "x-ratelimit-remaining")
    reset_ts = _int_header(headers, "x-ratelimit-reset")
    if limit is None and remaining is None and reset_ts is None:
        return None
    reset = None
    if reset_ts is not None:
        try:
            reset = datetime.fromtimestamp(reset_ts, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            reset = None
    return RateLimit(limit=limit, remaining=remaining, reset=reset, observed_at=now)


class Pacer:
    """Client-side pacing that keeps a process under its plan's request budget.

    Off by default.  Share one instance between every client of a process that uses the same
    key: ``pacer = Pacer(); Proxaro(pacer=pacer); AsyncProxaro(pacer=pacer)``.

    The budget is ``limit`` requests per ``window`` seconds when given, else learned from the
    API's ``X-RateLimit-Limit`` (per 60 s), times ``headroom`` to leave a margin for other users
    of the key.  Requests are spread evenly over the window, with at most ``burst`` of them
    back to back (default: a sixth of the budget, ten seconds' worth), so that the API's burst
    window is never met either; and never more than the budget in any sliding window.  When
    the API reports ``Remaining: 0`` the pacer holds requests until ``X-RateLimit-Reset``.

    :meth:`reserve` is pure bookkeeping over the ``now`` it is given (no sleeping): the clients
    sleep what it returns, the sync one with ``time.sleep``, the async one with ``asyncio.sleep``.
    """

    def __init__(
        self,
        limit: int | None = None,
        *,
        window: float = 60.0,
        headroom: float = 0.9,
        burst: int | None = None,
    ) -> None:
        for name, value in (("limit", limit), ("burst", burst)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{name} must be an int >= 1", param=name)
        window = _validate.number(window, "window", minimum=0.0, strict=True, what="seconds")
        headroom = _validate.number(headroom, "headroom", minimum=0.0, maximum=1.0, strict=True)
        self.limit = limit
        self.window = float(window)
        self.headroom = float(headroom)
        self.burst = burst
        self._learned: int | None = None
        self._sent: deque[float] = deque()
        self._tat = float("-inf")  # GCRA's theoretical arrival time of the next request
        self._not_before = 0.0
        self._lock = threading.Lock()

    @property
    def budget(self) -> int | None:
        """Requests allowed per window, or ``None`` while unknown (then nothing is delayed)."""
        base = self.limit or self._learned
        if base is None:
            return None
        return max(1, math.floor(base * self.headroom))

    def reserve(self, now: float, *, within: float | None = None) -> float:
        """Book a slot for one request; return how many seconds to wait before sending it.

        ``within``: the most the caller can wait.  A wait of that or more books nothing (the
        request will not be sent, so its slot must not delay the next one): the caller sees
        the wait, and gives up.
        """
        with self._lock:
            slot = max(now, self._not_before)
            budget = self.budget
            interval = gcra = 0.0
            if budget is not None:
                interval = self.window / budget
                burst = min(self.burst or max(1, budget // 6), budget)
                # Even spacing with a burst tolerance (GCRA)...
                slot = gcra = max(slot, self._tat - (burst - 1) * interval)
                # ...and never more than `budget` in any sliding window.
                while len(self._sent) > budget:
                    self._sent.popleft()
                if len(self._sent) >= budget:
                    slot = max(slot, self._sent[-budget] + self.window)
                if self._sent:
                    slot = max(slot, self._sent[-1])  # first come, first served: stays sorted
            wait = slot - now
            if within is not None and wait >= within:
                return wait
            if budget is not None:
                self._tat = max(self._tat, gcra) + interval
                self._sent.append(slot)
            # Sub-microsecond waits are float noise of the arithmetic above, not pacing.
            return wait if wait > 1e-6 else 0.0

    def observe(self, rate_limit: RateLimit, now: float) -> None:
        """Learn from the API's own view: its limit, and a spent budget's reset time."""
        with self._lock:
            if rate_limit.limit is not None and rate_limit.limit > 0:
                self._learned = rate_limit.limit
            if rate_limit.remaining is not None and rate_limit.remaining <= 0:
                wait = rate_limit.seconds_until_reset(now)
                if wait:
                    self._not_before = max(self._not_before, now + min(wait, self.window))

    def __repr__(self) -> str:
        return f"Pacer(budget={self.budget}, window={self.window})"
