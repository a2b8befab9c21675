"""World time for the sandbox: a clock that tests and demos may speed up or advance.

Kept apart from the world's data so that the pieces that only need time (the rate limiter,
the webhook deliverer's backoff) depend on this small module and nothing else.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

__all__ = ["Clock", "iso"]


class Clock:
    """World time: real time, optionally sped up, plus any manual advances.

    ``speed`` is world seconds per real second (60 = a minute passes every second).

    >>> clock = Clock(speed=60.0)
    >>> clock.advance(3600)          # an hour of world time passes at once
    """

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        self._real0 = time.monotonic()
        self._world0 = time.time() if start is None else start
        self._speed = speed
        self._offset = 0.0

    @property
    def speed(self) -> float:
        """World seconds per real second; setting it never makes the clock jump."""
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        if value <= 0:
            raise ValueError("clock speed must be positive")
        # Re-anchor so that changing the speed does not jump the clock.
        now = self.now()
        self._real0 = time.monotonic()
        self._world0 = now
        self._offset = 0.0
        self._speed = value

    def now(self) -> float:
        """World time as a UNIX timestamp."""
        return self._world0 + (time.monotonic() - self._real0) * self._speed + self._offset

    def advance(self, seconds: float) -> None:
        """Move world time forward by ``seconds`` at once."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds

    def real_seconds(self, world_seconds: float) -> float:
        """How many real seconds ``world_seconds`` of world time take at the current speed."""
        return world_seconds / self._speed

    def datetime(self) -> datetime:
        """World time as an aware UTC :class:`~datetime.datetime`."""
        return datetime.fromtimestamp(self.now(), tz=timezone.utc)


def iso(ts: float) -> str:
    """A UNIX timestamp as the API writes it: ``2026-04-22T14:30:00Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
