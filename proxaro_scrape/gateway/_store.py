"""Where the manager's mutable routing state lives, behind a small interface.

The decisions (``_core``, ``_sessions``, ``_breakers``) only talk to a :class:`Store`: sticky
sessions, circuit breakers, the bans per (site, exit), the exits seen and the stats counters.
:class:`MemoryStore` keeps them in this process; the fleet's store
(:mod:`proxaro_scrape.fleet`) subclasses it, so that every decision still reads local memory
and the changes worth sharing are handed to a background thread.  Keys are plain strings or
tuples of strings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any, Protocol

__all__ = ["MemoryStore", "SessionNaming", "Store"]

_BAN_LEDGER_SIZE = 10_000


class SessionNaming(Protocol):
    """How a shared store names sticky sessions, so that every worker of a fleet gives one
    session key the same gateway session id (and so the same exit) without asking anyone."""

    def open(self, key: Hashable, ttl_minutes: int, now: float) -> tuple[str, float]:
        """``(session_id, expires_at)`` for a new session of ``key`` (``now``: the core's clock)."""

    def rotate(self, key: Hashable, explicit: str | None, now: float) -> str:
        """The next session id of ``key`` after a ban or an exit failure."""

    def pick(self, key: Hashable) -> float:
        """A number in ``[0, 1)`` fixed by ``key``: a selector picks the same target everywhere."""


class Store(ABC):
    """The state the routing decisions read and write.  Not thread-safe by itself: the core
    calls it under its own (trivial) lock."""

    #: Set by a shared store: session ids that agree across workers (else per-process ids).
    session_naming: SessionNaming | None = None

    # Sticky sessions: a bounded LRU.
    @abstractmethod
    def session_get(self, key: Hashable) -> Any | None:
        """The session stored under ``key`` (marking it recently used), or ``None``."""

    @abstractmethod
    def session_put(self, key: Hashable, value: Any) -> None:
        """Store a session, evicting the least recently used one beyond the bound."""

    @abstractmethod
    def session_pop(self, key: Hashable) -> None:
        """Forget a session."""

    @abstractmethod
    def session_count(self) -> int:
        """How many sessions are stored."""

    # Circuit breakers, by target key.
    @abstractmethod
    def breaker_get(self, key: str) -> Any | None:
        """The breaker state of ``key``, or ``None`` (closed, never failed)."""

    @abstractmethod
    def breaker_put(self, key: str, value: Any) -> None:
        """Store a breaker state."""

    @abstractmethod
    def breaker_pop(self, key: str) -> None:
        """Forget a breaker (closed again)."""

    @abstractmethod
    def breaker_items(self) -> Iterator[tuple[str, Any]]:
        """Every stored breaker state."""

    # Exits seen, for the "exits_used" figure: bounded too.
    @abstractmethod
    def exit_seen(self, ip: str) -> bool:
        """Record an exit IP; True the first time it is seen (within the bound)."""

    # Bans per (host, exit IP): a sticky session landing on a burned exit is rotated.
    @abstractmethod
    def ban_put(self, host: str, ip: str, until: float) -> None:
        """Remember that ``host`` banned exit ``ip`` until ``until`` (the core's clock)."""

    @abstractmethod
    def ban_until(self, host: str, ip: str) -> float | None:
        """Until when ``host`` bans ``ip`` (``None``: no ban remembered)."""

    # Counters.
    @abstractmethod
    def incr(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a counter."""

    def incr_many(self, keys: tuple[str, ...]) -> None:
        """Add 1 to each counter of ``keys`` (one call on the per-request path)."""
        for key in keys:
            self.incr(key)

    @abstractmethod
    def counters(self) -> dict[str, int]:
        """A snapshot of every counter."""


class MemoryStore(Store):
    """The in-process store: an ``OrderedDict`` LRU for sessions and exits, dicts for the rest.

    ``session_lru_size`` bounds the sticky-session table (so a million distinct sticky keys
    cost no more memory than ``session_lru_size`` of them); ``exits_lru_size`` bounds the set of
    exits remembered for the ``exits_used`` figure.
    """

    def __init__(self, session_lru_size: int = 10_000, exits_lru_size: int = 100_000) -> None:
        if session_lru_size < 1:
            raise ValueError("session_lru_size must be at least 1")
        self.session_lru_size = session_lru_size
        self.exits_lru_size = exits_lru_size
        self._sessions: OrderedDict[Hashable, Any] = OrderedDict()
        self._breakers: dict[str, Any] = {}
        self._exits: OrderedDict[str, None] = OrderedDict()
        self._counters: Counter[str] = Counter()
        self._bans: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.evictions = 0

    def session_get(self, key: Hashable) -> Any | None:
        value = self._sessions.get(key)
        if value is not None:
            self._sessions.move_to_end(key)
        return value

    def session_put(self, key: Hashable, value: Any) -> None:
        sessions = self._sessions
        sessions[key] = value
        sessions.move_to_end(key)
        while len(sessions) > self.session_lru_size:
            sessions.popitem(last=False)
            self.evictions += 1

    def session_pop(self, key: Hashable) -> None:
        self._sessions.pop(key, None)

    def session_count(self) -> int:
        return len(self._sessions)

    def breaker_get(self, key: str) -> Any | None:
        return self._breakers.get(key)

    def breaker_put(self, key: str, value: Any) -> None:
        self._breakers[key] = value

    def breaker_pop(self, key: str) -> None:
        self._breakers.pop(key, None)

    def breaker_items(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self._breakers.items()))

    def exit_seen(self, ip: str) -> bool:
        exits = self._exits
        if ip in exits:
            exits.move_to_end(ip)
            return False
        exits[ip] = None
        if len(exits) > self.exits_lru_size:
            exits.popitem(last=False)
        return True

    def ban_put(self, host: str, ip: str, until: float) -> None:
        bans = self._bans
        bans[(host, ip)] = until
        bans.move_to_end((host, ip))
        while len(bans) > _BAN_LEDGER_SIZE:
            bans.popitem(last=False)

    def ban_until(self, host: str, ip: str) -> float | None:
        # The common case (no ban at all) costs one truth test.
        return self._bans.get((host, ip)) if self._bans else None

    def incr(self, key: str, n: int = 1) -> None:
        self._counters[key] += n

    def incr_many(self, keys: tuple[str, ...]) -> None:
        counters = self._counters
        for key in keys:
            counters[key] += 1

    def counters(self) -> dict[str, int]:
        return dict(self._counters)
