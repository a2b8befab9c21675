"""The sandbox rate limiter on a hand-driven clock: windows, burst reading, headers."""

from __future__ import annotations

import math

import pytest

from proxaro_scrape.sandbox.ratelimit import RateLimiter, burst_limit
from proxaro_scrape.sandbox.world import RATE_LIMITS, Clock


class HandClock(Clock):
    """World time that moves only when the test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        super().__init__()
        self.t = start

    def now(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("plan", "per_10s"), [("starter", 20), ("growth", 100), ("scale", 400), ("network", 1600)]
)
def test_burst_reading_per_plan(plan: str, per_10s: int) -> None:
    # "600 for 10s" is a rate of 600 a minute over 10 seconds: 100 requests.
    assert burst_limit(RATE_LIMITS[plan][1]) == per_10s


def test_burst_window_then_minute_window() -> None:
    clock = HandClock()
    rl = RateLimiter(clock)
    limits = {"per_minute": 60, "burst_per_minute": 120}
    for i in range(20):
        d = rl.hit("k", **limits)
        assert d.allowed and d.remaining == 59 - i and d.burst_remaining == 19 - i
        clock.t += 0.1
    refused = rl.hit("k", **limits)
    assert not refused.allowed and refused.remaining == 40 and refused.burst_remaining == 0
    assert refused.retry_after == pytest.approx(10 - 2.0)  # the first hit leaves at t0 + 10
    # Refused requests are not counted.
    assert rl.peek("k", **limits).remaining == 40
    clock.t += refused.retry_after + 0.001
    assert rl.hit("k", **limits).allowed
    # Fill the minute at an even pace that never meets the burst window.
    start = 1_000_000.0
    while rl.peek("k", **limits).remaining:
        clock.t += 0.6
        assert rl.hit("k", **limits).allowed
    assert clock.t - start < 60
    refused = rl.hit("k", **limits)
    assert not refused.allowed and refused.burst_remaining > 0
    assert refused.retry_after == pytest.approx(start + 60 - clock.t)
    assert refused.reset == math.ceil(start + 60)


def test_reset_is_when_the_oldest_counted_request_leaves() -> None:
    clock = HandClock(500.5)
    rl = RateLimiter(clock)
    first = rl.hit("k", per_minute=300, burst_per_minute=600)
    assert first.reset == 561  # ceil(500.5 + 60)
    clock.t = 530.0
    assert rl.hit("k", per_minute=300, burst_per_minute=600).reset == 561
    clock.t = 561.0
    later = rl.hit("k", per_minute=300, burst_per_minute=600)
    assert later.remaining == 298 and later.reset == 590  # the 530.0 hit is now the oldest
    assert rl.peek("other", per_minute=300, burst_per_minute=600).reset == 561  # empty: now


def test_buckets_are_independent_and_reset_forgets() -> None:
    clock = HandClock()
    rl = RateLimiter(clock)
    for _ in range(20):
        rl.hit("a", per_minute=60, burst_per_minute=120)
    assert not rl.hit("a", per_minute=60, burst_per_minute=120).allowed
    assert rl.hit("b", per_minute=60, burst_per_minute=120).allowed
    rl.reset()
    assert rl.hit("a", per_minute=60, burst_per_minute=120).allowed


def test_lowering_the_limit_below_the_count() -> None:
    clock = HandClock()
    rl = RateLimiter(clock)
    for _ in range(50):
        clock.t += 0.1
        assert rl.hit("k", per_minute=300, burst_per_minute=600).allowed
    # The plan drops to Starter: 50 counted, 60 allowed, but the 10-second window is full.
    d = rl.hit("k", per_minute=60, burst_per_minute=120)
    assert d.allowed is False and d.remaining == 10
    clock.t += 100
    assert rl.hit("k", per_minute=60, burst_per_minute=120).allowed


def test_headers() -> None:
    d = RateLimiter(HandClock()).hit("k", per_minute=300, burst_per_minute=600)
    assert d.headers() == {
        "X-RateLimit-Limit": "300",
        "X-RateLimit-Remaining": "299",
        "X-RateLimit-Reset": str(math.ceil(1_000_000.0 + 60)),
        "X-RateLimit-Burst-Limit": "100",
        "X-RateLimit-Burst-Remaining": "99",
    }
