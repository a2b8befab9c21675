"""The live routing state of the requests in flight, kept out of ``request.meta``.

A logical request (one page the spider asked for, across the retries the middleware makes) has
a :class:`~proxaro_scrape.gateway.RequestRouting` that must live between attempts.  Scrapy
queues requests on disk (``JOBDIR``) and in Redis (scrapy-redis) by pickling them, so
``request.meta`` can only hold plain data: it holds a flight id (a short string), and the
middleware looks the state up here, as ``HttpProxyMiddleware`` keeps strings and flags in meta
and its live state in itself.

Ids carry a prefix drawn per process, so an id that comes back from a queue written by another
process (a resumed ``JOBDIR`` crawl, another scrapy-redis worker) is simply unknown here and
starts a new logical request instead of taking over someone else's.  The registry is bounded:
a crawl whose frontier holds more retries than :data:`MAX_FLIGHTS` forgets the oldest, which
then start afresh too (their attempt budget restarts), and nothing grows without end.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict
from typing import Any

__all__ = ["MAX_FLIGHTS", "Flight", "Flights"]

#: Most logical requests remembered at once.  Requests in the downloader are a few dozen
#: (``CONCURRENT_REQUESTS``); the rest are retries waiting in the scheduler.
MAX_FLIGHTS = 20_000


class Flight:
    """One logical request's routing state, between its attempts."""

    __slots__ = ("rr", "route", "pending", "resend")

    def __init__(self, rr: Any) -> None:
        self.rr = rr
        #: The route of the attempt now out (or the last one).
        self.route: Any = None
        #: An attempt went out and its answer has not been observed yet.
        self.pending = False
        #: The next pass through ``process_request`` continues this logical request (a retry
        #: the middleware made) rather than starting a new one.
        self.resend = False


class Flights:
    """Flight id → :class:`Flight`, bounded, oldest forgotten first."""

    def __init__(self, maxsize: int = MAX_FLIGHTS) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        #: How many flights were forgotten to stay within ``maxsize``.
        self.evicted = 0
        self._items: OrderedDict[str, Flight] = OrderedDict()
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, fid: object) -> bool:
        return fid in self._items

    def add(self, flight: Flight) -> str:
        """Remember ``flight``; its id (plain text, for ``request.meta``)."""
        fid = f"{self._prefix}-{next(self._ids)}"
        items = self._items
        items[fid] = flight
        while len(items) > self.maxsize:
            items.popitem(last=False)
            self.evicted += 1
        return fid

    def get(self, fid: Any) -> Flight | None:
        """The flight of ``fid``; ``None`` for an id this process does not know (or forgot)."""
        if fid is None:
            return None
        try:
            return self._items.get(fid)
        except TypeError:  # an unhashable value someone put under our key: not ours
            return None

    def touch(self, fid: Any) -> None:
        """Mark ``fid`` as recently used (it is being retried): the last to be forgotten."""
        if fid in self._items:
            self._items.move_to_end(fid)

    def finish(self, fid: Any) -> None:
        """Forget ``fid`` (its request ended); unknown ids are ignored."""
        if fid is not None:
            try:
                self._items.pop(fid, None)
            except TypeError:
                pass

    def clear(self) -> None:
        """Forget every flight (the spider closed)."""
        self._items.clear()
