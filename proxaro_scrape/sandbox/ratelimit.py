"""The sandbox API's per-key rate limits, on world time.

The reference's table gives each plan a number of requests per minute and a burst::

    Plan      Requests / minute   Burst
    Starter   60                  120 for 10s
    Growth    300                 600 for 10s
    Scale     1200                2400 for 10s

and says limits are per key, counted against a sliding 60-second window.

**How the sandbox reads the burst column.**  "600 for 10s" is a *peak rate*: a key may go at up
to 600 requests per minute, but only over a short stretch, measured on a sliding 10-second
window.  So a key is held to two sliding windows at once:

* the minute: at most ``per_minute`` requests in any 60 seconds (Growth: 300);
* the burst: at most ``burst * 10 / 60`` requests in any 10 seconds (Growth: 600 / 6 = 100).

A client pacing itself evenly at the per-minute rate (Growth: 50 per 10 s) never meets the burst
window; a client may go twice as fast for a while, but can never spend its whole minute in one
instant.  The other readings contradict the reference's own words: a bucket of 600 requests
would let a key exceed the 300 of any sliding minute, and "120 requests within 10 seconds" is
more than Starter's 60 per minute.

The ``X-RateLimit-*`` headers describe the minute window, as the reference's example does
(``Limit: 300``, ``Remaining: 284``): ``Limit`` is the per-minute number, ``Remaining`` what is
left of it, ``Reset`` the UNIX time (world clock, rounded up) at which the oldest request still
counted leaves the window, that is when ``Remaining`` next goes up.  The burst window shows in
the additive ``X-RateLimit-Burst-Limit`` / ``X-RateLimit-Burst-Remaining`` headers, and when it
is what refuses a request, in the 429's ``Retry-After``.  Refused requests are not counted, so a
client that waits for ``Retry-After`` always gets through.

Time is the world's (:class:`~proxaro_scrape.sandbox.world.Clock`): tests advance the clock to
make a window pass instead of sleeping.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from proxaro_scrape.sandbox.world import Clock

WINDOW_SECONDS = 60.0
BURST_WINDOW_SECONDS = 10.0


def burst_limit(burst_per_minute: int) -> int:
    """Requests allowed in one 10-second burst window for a burst rate given per minute."""
    return max(1, burst_per_minute * int(BURST_WINDOW_SECONDS) // int(WINDOW_SECONDS))


@dataclass(frozen=True)
class Decision:
    """The verdict for one request, and the numbers its headers carry."""

    allowed: bool
    limit: int
    remaining: int
    reset: int  # UNIX time, world clock, whole seconds rounded up
    burst_limit: int
    burst_remaining: int
    #: World seconds until the request would be allowed (0.0 when it is).
    retry_after: float

    def headers(self) -> dict[str, str]:
        """The rate-limit headers every API response carries."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
            "X-RateLimit-Burst-Limit": str(self.burst_limit),
            "X-RateLimit-Burst-Remaining": str(self.burst_remaining),
        }


class RateLimiter:
    """Sliding 60-second and 10-second windows per bucket (an API key, or a source address).

    >>> rl = RateLimiter(Clock())
    >>> rl.hit("key", per_minute=60, burst_per_minute=120).allowed
    True
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def reset(self) -> None:
        """Forget every request counted so far."""
        self._hits.clear()

    def peek(self, bucket: str, *, per_minute: int, burst_per_minute: int) -> Decision:
        """The current state of ``bucket`` without counting a request."""
        return self._decide(bucket, per_minute, burst_per_minute, count=False)

    def hit(self, bucket: str, *, per_minute: int, burst_per_minute: int) -> Decision:
        """Count one request against ``bucket`` if both windows have room."""
        return self._decide(bucket, per_minute, burst_per_minute, count=True)

    def _decide(self, bucket: str, per_minute: int, burst_per_minute: int, count: bool) -> Decision:
        now = self.clock.now()
        hits = self._hits.setdefault(bucket, deque())
        while hits and hits[0] <= now - WINDOW_SECONDS:
            hits.popleft()
        blimit = burst_limit(burst_per_minute)
        in_burst = _count_since(hits, now - BURST_WINDOW_SECONDS)

        wait = 0.0
        if len(hits) >= per_minute:
            # The request becomes possible when enough old hits leave the minute window.
            wait = max(wait, hits[len(hits) - per_minute] + WINDOW_SECONDS - now)
        if in_burst >= blimit:
            wait = max(wait, hits[len(hits) - blimit] + BURST_WINDOW_SECONDS - now)
        allowed = wait <= 0.0
        if allowed and count:
            hits.append(now)
            in_burst += 1
        if not hits:
            self._hits.pop(bucket, None)
        reset = math.ceil(hits[0] + WINDOW_SECONDS) if hits else math.ceil(now)
        return Decision(
            allowed=allowed,
            limit=per_minute,
            remaining=max(0, per_minute - len(hits)),
            reset=reset,
            burst_limit=blimit,
            burst_remaining=max(0, blimit - in_burst),
            retry_after=0.0 if allowed else wait,
        )


def _count_since(hits: deque[float], since: float) -> int:
    """How many of the (sorted) hits are later than ``since``, scanning from the newest."""
    n = 0
    for t in reversed(hits):
        if t <= since:
            break
        n += 1
    return n
