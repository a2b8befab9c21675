"""When the drivers call the API: a sans-I/O schedule of background jobs.

Jobs: ``credentials`` (poll well inside the rotation grace, and ahead of ``expires_at``),
``pool`` (the country list, every ``pool_ttl``), ``asns`` (the ASNs of countries asked for but
not fetched yet), ``usage`` (slow).  The sync driver (a thread) and the async driver (a task) run
the same loop: ask :meth:`Schedule.due`, do the I/O, report with :meth:`Schedule.done`, sleep
until :meth:`Schedule.next_at` or until poked.  A failed job backs off exponentially (1 s, 2 s,
4 s ... capped at its interval) instead of hammering an API that is down.
"""

from __future__ import annotations

import math

__all__ = ["Schedule"]

#: Refresh credentials this long before ``expires_at``.
EXPIRY_MARGIN = 60.0
#: How often to ask for credentials that are about to expire (or expired) and not yet renewed.
EXPIRED_POLL = 5.0
#: Never reschedule a job sooner than this after a success.
MIN_INTERVAL = 1.0


class Schedule:
    """Due times (monotonic seconds) of the background jobs.  ``None`` interval = never."""

    def __init__(
        self,
        *,
        credentials_interval: float,
        pool_ttl: float | None,
        usage_interval: float | None,
        now: float,
    ) -> None:
        self.intervals: dict[str, float | None] = {
            "credentials": credentials_interval,
            "pool": pool_ttl,
            "usage": usage_interval,
            "asns": None,
        }
        self._due: dict[str, float] = {}
        for job, interval in self.intervals.items():
            self._due[job] = now + interval if interval else math.inf
        self._failures: dict[str, int] = dict.fromkeys(self.intervals, 0)
        #: Countries whose ASNs were asked for and are not fetched yet.
        self.wanted_asns: set[str] = set()

    def due(self, now: float) -> list[str]:
        """The jobs due at ``now``, credentials first."""
        return [job for job in ("credentials", "pool", "asns", "usage") if self._due[job] <= now]

    def next_at(self) -> float:
        """When the next job is due (``inf`` when none is)."""
        return min(self._due.values())

    def poke(self, job: str, now: float) -> None:
        """Make ``job`` due at once (a webhook event, a 407 elsewhere, a new country...)."""
        self._due[job] = min(self._due[job], now)

    def want_asns(self, code: str, now: float) -> bool:
        """Ask for the ASNs of ``code``; True when this is news (the driver should be woken)."""
        if code in self.wanted_asns:
            return False
        self.wanted_asns.add(code)
        self.poke("asns", now)
        return True

    def done(self, job: str, ok: bool, now: float, *, next_in: float | None = None) -> None:
        """Report a job's run.  ``next_in`` overrides the interval after a success."""
        interval = self.intervals[job]
        if ok:
            self._failures[job] = 0
            delay = next_in if next_in is not None else interval
            self._due[job] = now + max(MIN_INTERVAL, delay) if delay else math.inf
            return
        self._failures[job] += 1
        cap = interval or 30.0
        self._due[job] = now + min(cap, 2.0 ** (self._failures[job] - 1))

    def failures(self, job: str) -> int:
        """Consecutive failures of ``job``."""
        return self._failures[job]

    def credentials_next_in(self, expires_in: float | None) -> float:
        """Seconds to the next credentials poll: the interval, or sooner ahead of expiry."""
        interval = self.intervals["credentials"] or 30.0
        if expires_in is None:
            return interval
        lead = expires_in - EXPIRY_MARGIN
        if lead > 0:
            return max(MIN_INTERVAL, min(interval, lead))
        # Inside the margin (or past expiry) and still the same credentials: ask again soon,
        # but not in a tight loop.
        return min(interval, EXPIRED_POLL)
