"""The fleet's store: local memory for every decision, an outbox for what the others must know.

:class:`FleetStore` is a :class:`~proxaro_scrape.gateway._store.MemoryStore`, so the routing
core reads and writes this process's memory only (no Redis call on the request path).  The
few writes worth sharing (a breaker opened or closed, a ban of an exit by a site, a sticky
session rotated, an exit seen for the first time) also append an event to a bounded outbox,
which the fleet's thread writes to Redis and publishes; events the others published are
applied here by the same thread, under the core's lock (:meth:`FleetStore.apply`).

Sticky sessions are named, not shared: a session key's id is an HMAC of the key, of the time
window it lives in (``sesstime`` long, aligned on the wall clock) and of how many times it was
rotated in that window.  Two workers that route one key at the same moment therefore send the
same ``-session-<id>`` and leave through the same exit without asking anyone; a rotation (a
ban, a dead exit) is the one thing published, and a worker that hears of it moves on too.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from proxaro_scrape import protocol
from proxaro_scrape.fleet._keys import Keyspace
from proxaro_scrape.gateway._breakers import CLOSED, HALF_OPEN, OPEN, BreakerState
from proxaro_scrape.gateway._sessions import StickySession
from proxaro_scrape.gateway._store import MemoryStore

__all__ = ["Event", "FleetStore"]

#: One change for the others: ``[kind, ...fields]`` (JSON-ready).
Event = list[Any]
#: Events kept while Redis is away (the oldest go first: state is resynced anyway).
OUTBOX_SIZE = 10_000


class FleetStore(MemoryStore):
    """A :class:`MemoryStore` that tells the fleet what changed (see the module docstring).

    ``clock`` is the routing core's clock (monotonic seconds); ``wall`` the wall clock that
    the fleet agrees on (session windows, expiry times written to Redis).
    """

    def __init__(
        self,
        keyspace: Keyspace,
        *,
        session_lru_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(session_lru_size)
        self.keyspace = keyspace
        self.clock = clock
        self.wall = wall
        self.outbox: deque[Event] = deque(maxlen=OUTBOX_SIZE)
        #: session-key digest → (window, rotations, explicit id): what this worker knows.
        self._rotations: OrderedDict[str, tuple[int, int, str | None]] = OrderedDict()
        #: session-key digest → the local key, to apply another worker's rotation.
        self._keys: OrderedDict[str, Hashable] = OrderedDict()
        self.session_naming = self

    # ------------------------------------------------------------------ session naming

    def open(self, key: Hashable, ttl_minutes: int, now: float) -> tuple[str, float]:
        """``(session_id, expires_at)`` of a new session of ``key``: the same on every worker."""
        digest = self._remember(key)
        span = ttl_minutes * 60.0
        wall = self.wall()
        window = math.floor(wall / span)
        margin = min(30.0, span * 0.05)
        end = (window + 1) * span
        if end - wall <= margin:
            window += 1  # too little left of this window: the next one's session, early
            end += span
        rotations = self._rotation_count(digest, window)
        self._note(digest, window, rotations, None)
        # Never longer than a session the gateway starts now would live.
        lifetime = min(end - wall, span) - margin
        return self._name(digest, window, rotations, None), now + lifetime

    def rotate(self, key: Hashable, explicit: str | None, now: float) -> str:
        """The next id of ``key`` (published: every worker that routes it moves on too)."""
        digest = self._remember(key)
        known = self._rotations.get(digest)
        window = 0 if explicit is not None else known[0] if known else self._window_of(key)
        rotations = (known[1] if known is not None and known[0] == window else 0) + 1
        self._note(digest, window, rotations, explicit)
        self.outbox.append(["rot", digest, window, rotations, explicit])
        return self._name(digest, window, rotations, explicit)

    def pick(self, key: Hashable) -> float:
        """A fraction in ``[0, 1)`` fixed by ``key``: every worker picks the same target."""
        return int(self.keyspace.mac(f"pick|{self.keyspace.digest(key)}", 13), 16) / 16.0**13

    def _name(self, digest: str, window: int, rotations: int, explicit: str | None) -> str:
        if explicit is not None:
            if rotations == 0:
                return explicit
            tail = f"r{rotations:x}"
            return explicit[: protocol.MAX_SESSION_ID_LENGTH - len(tail)] + tail
        return "f" + self.keyspace.mac(f"{digest}|{window}|{rotations}", 19)

    def _window_of(self, key: Hashable) -> int:
        entry: StickySession | None = self._sessions.get(key)
        ttl = entry.ttl_minutes if entry is not None and entry.ttl_minutes else 10
        return math.floor(self.wall() / (ttl * 60.0))

    def _rotation_count(self, digest: str, window: int) -> int:
        known = self._rotations.get(digest)
        return known[1] if known is not None and known[0] == window else 0

    def _note(self, digest: str, window: int, rotations: int, explicit: str | None) -> None:
        rot = self._rotations
        rot[digest] = (window, rotations, explicit)
        rot.move_to_end(digest)
        while len(rot) > self.session_lru_size:
            rot.popitem(last=False)

    def _remember(self, key: Hashable) -> str:
        digest = self.keyspace.digest(key)
        keys = self._keys
        keys[digest] = key
        keys.move_to_end(digest)
        while len(keys) > self.session_lru_size:
            keys.popitem(last=False)
        return digest

    # ------------------------------------------------------------------ shared writes

    def breaker_put(self, key: str, value: Any) -> None:
        super().breaker_put(key, value)
        st: BreakerState = value
        if st.state != CLOSED:
            now = self.clock()
            until = st.retry_at if st.state == OPEN else st.probe_deadline
            self.outbox.append(["brk", key, OPEN, max(0.0, until - now), st.opened])

    def breaker_pop(self, key: str) -> None:
        had = self._breakers.get(key)
        super().breaker_pop(key)
        if had is not None and had.state != CLOSED:
            self.outbox.append(["brk", key, CLOSED, 0.0, 0])

    def ban_put(self, host: str, ip: str, until: float) -> None:
        super().ban_put(host, ip, until)
        self.outbox.append(["ban", host, ip, max(0.0, until - self.clock())])

    def exit_seen(self, ip: str) -> bool:
        first = super().exit_seen(ip)
        if first:
            self.outbox.append(["exit", ip])
        return first

    # ------------------------------------------------------------------ the others' news

    def apply(self, event: Event) -> bool:
        """Apply another worker's event (the caller holds the core's lock); True if used."""
        kind = event[0] if event else None
        now = self.clock()
        if kind == "brk" and len(event) == 5:
            _, key, state, left, opened = event
            if state == CLOSED:
                had = self._breakers.get(key)
                if had is not None and had.state != CLOSED:
                    MemoryStore.breaker_pop(self, key)
                return True
            st = self._breakers.get(key) or BreakerState()
            if st.state == HALF_OPEN:
                return True  # our own probe is out: its answer decides
            retry_at = now + float(left)
            if st.state == OPEN:
                retry_at = max(st.retry_at, retry_at)  # never shorten a longer local backoff
            st.state, st.retry_at, st.failures = OPEN, retry_at, 0
            st.opened = max(st.opened, int(opened))
            MemoryStore.breaker_put(self, key, st)
            return True
        if kind == "ban" and len(event) == 4:
            _, host, ip, left = event
            MemoryStore.ban_put(self, str(host), str(ip), now + float(left))
            return True
        if kind == "rot" and len(event) == 5:
            _, digest, window, rotations, explicit = event
            return self._apply_rotation(str(digest), int(window), int(rotations), explicit)
        return False

    def _apply_rotation(
        self, digest: str, window: int, rotations: int, explicit: str | None
    ) -> bool:
        known = self._rotations.get(digest)
        if known is not None and (known[0], known[1]) >= (window, rotations):
            return False  # we rotated as far already (the same ban seen here too)
        self._note(digest, window, rotations, explicit)
        key = self._keys.get(digest)
        entry: StickySession | None = self._sessions.get(key) if key is not None else None
        if entry is not None:
            entry.session_id = self._name(digest, window, rotations, explicit)
            entry.requests = 0
            entry.rotations += 1
        return True

    def state_events(self) -> list[Event]:
        """What this worker knows that Redis should hold (after Redis lost its data)."""
        now = self.clock()
        events: list[Event] = []
        for key, st in self._breakers.items():
            if st.state != CLOSED:
                until = st.retry_at if st.state == OPEN else st.probe_deadline
                events.append(["brk", key, OPEN, max(0.0, until - now), st.opened])
        for (host, ip), until in self._bans.items():
            if until > now:
                events.append(["ban", host, ip, until - now])
        for digest, (window, rotations, explicit) in self._rotations.items():
            if rotations:
                events.append(["rot", digest, window, rotations, explicit])
        return events
