"""Sticky sessions: session keys → gateway session ids, with a lifetime and a request budget.

A *session key* says which requests should share one exit: the target domain
(``sticky="domain"``), a caller's key (``session_key=...``, e.g. a Scrapy cookiejar), or an
explicit ``Target(session=...)``.  Each key maps to a :class:`StickySession`: the session id
sent as ``-session-<id>``, the concrete target it was resolved to (a selector picks a country
once per session, not once per request), when it expires and how many requests it served.

A session ends when its lifetime is over (a little before the gateway's ``sesstime``, so that a
request never rides a session that dies under it), when it has served ``max_requests``, or when
a ban or an exit failure rotates it (a new id, so a new exit).  The table is a bounded LRU in
the :class:`~proxaro_scrape.gateway._store.Store`.  A shared store brings its own
:class:`~proxaro_scrape.gateway._store.SessionNaming`: ids derived from the session key, so
that every worker of a fleet sends one key through one gateway session.
"""

from __future__ import annotations

import itertools
import secrets
import string
from collections.abc import Hashable
from dataclasses import dataclass

from proxaro_scrape import protocol
from proxaro_scrape.gateway._store import Store
from proxaro_scrape.gateway.target import Target

__all__ = ["SessionTable", "StickySession"]

_ALNUM = string.ascii_letters + string.digits


@dataclass(slots=True)
class StickySession:
    """One sticky session: the id the gateway sees and the target it serves."""

    session_id: str
    target: Target
    ttl_minutes: int | None
    expires_at: float
    max_requests: int | None
    requests: int = 0
    rotations: int = 0

    def alive(self, now: float) -> bool:
        """Still usable at ``now`` (monotonic seconds)?"""
        if now >= self.expires_at:
            return False
        return self.max_requests is None or self.requests < self.max_requests


class SessionTable:
    """Sticky sessions by key, stored in a bounded LRU.

    ``ttl_minutes`` is the default ``sesstime``; ``max_requests`` (``None`` = unlimited) ends a
    session after that many requests.  Session ids are a random per-process prefix plus a
    counter: unique without a random draw per session.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl_minutes: int = protocol.DEFAULT_SESSTIME_MINUTES,
        max_requests: int | None = None,
        prefix: str | None = None,
    ) -> None:
        self.store = store
        self.ttl_minutes = ttl_minutes
        self.max_requests = max_requests
        self._prefix = prefix or "".join(secrets.choice(_ALNUM) for _ in range(8))
        self._counter = itertools.count(1)

    def new_id(self, base: str | None = None) -> str:
        """A fresh session id; ``base`` (an explicit session) keeps its start readable."""
        n = next(self._counter)
        if base is None:
            return f"{self._prefix}{n:x}"
        tail = f"r{n:x}"
        return base[: protocol.MAX_SESSION_ID_LENGTH - len(tail)] + tail

    @staticmethod
    def lifetime(ttl_minutes: int) -> float:
        """Seconds a session is used for: the ``sesstime`` minus a margin of 5 % (≤ 30 s)."""
        seconds = ttl_minutes * 60.0
        return seconds - min(30.0, seconds * 0.05)

    def get(self, key: Hashable, now: float) -> StickySession | None:
        """The live session of ``key``, or ``None`` (expired and used-up ones are dropped)."""
        entry: StickySession | None = self.store.session_get(key)
        if entry is None:
            return None
        if not entry.alive(now):
            self.store.session_pop(key)
            return None
        return entry

    def open(
        self,
        key: Hashable,
        target: Target,
        now: float,
        *,
        session_id: str | None = None,
        ttl_minutes: int | None = None,
        send_ttl: bool = True,
    ) -> StickySession:
        """Start a session for ``key`` serving ``target`` (its id is new unless given)."""
        ttl = ttl_minutes or self.ttl_minutes
        expires_at = now + self.lifetime(ttl)
        naming = self.store.session_naming
        if session_id is None and naming is not None:
            session_id, expires_at = naming.open(key, ttl, now)
        entry = StickySession(
            session_id=session_id or self.new_id(),
            target=target,
            ttl_minutes=ttl if send_ttl else None,
            expires_at=expires_at,
            max_requests=self.max_requests,
        )
        self.store.session_put(key, entry)
        return entry

    def rotate(self, key: Hashable, now: float, *, explicit: str | None = None) -> None:
        """Give ``key`` a new session id (a new exit) after a ban or an exit failure.

        The rotated session keeps its target and lifetime settings and starts afresh.
        """
        entry: StickySession | None = self.store.session_get(key)
        if entry is None:
            return
        ttl = entry.ttl_minutes or self.ttl_minutes
        naming = self.store.session_naming
        if naming is not None:
            # The fleet's sessions live in windows every worker agrees on: keep its end.
            entry.session_id = naming.rotate(key, explicit, now)
        else:
            entry.session_id = self.new_id(explicit)
            entry.expires_at = now + self.lifetime(ttl)
        entry.requests = 0
        entry.rotations += 1

    def __len__(self) -> int:
        return self.store.session_count()
