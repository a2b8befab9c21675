"""The sandbox gateway's bookkeeping: bytes into ``/v1/sessions`` and usage, once per loop turn.

Per-request work stays small on the gateway's hot path: each request or tunnel adds its bytes
to a pending sum, and the sum goes to the world once per event-loop turn (:class:`Turn`), which
is also when the exit chooser re-reads the pool's health.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from proxaro_scrape.sandbox._gateway_answers import Choice
from proxaro_scrape.sandbox.world import World

__all__ = ["Accounting", "Turn"]

#: Two Crockford base32 digits per 10 bits: a 26-digit (130-bit) id in 13 lookups.
_CROCKFORD_PAIRS = [
    a + b for a in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" for b in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
]
_PAIR_SHIFTS = tuple(range(120, -1, -10))


class Turn:
    """Runs its callbacks once at the end of any loop turn in which :meth:`touch` was called.

    ``call_soon`` puts the end after every callback already queued, so it runs before the loop
    reads any later I/O: a client that saw an answer cannot get a request in before it.
    """

    def __init__(self) -> None:
        self._scheduled = False
        self._callbacks: list[Callable[[], None]] = []

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the end of every turn that was touched."""
        self._callbacks.append(callback)

    def touch(self) -> None:
        """Have the callbacks run once this loop turn is over."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._ended)

    def _ended(self) -> None:
        self._scheduled = False
        for callback in self._callbacks:
            callback()


class Accounting:
    """Records one session per request or tunnel, and one per sticky session (updated in place
    as its requests come); usage is summed per (class, country) and flushed once per turn."""

    def __init__(self, world: World, turn: Turn) -> None:
        self.world = world
        self._turn = turn
        self._pending_usage: dict[tuple[str, str], int] = {}
        # Session ids draw from their own generator: the gateway_rng sequence (exit choices,
        # failures) stays the same whatever the accounting does.
        self._id_rng = random.Random(world.seed * 65537 + 3)
        turn.on_end(self.flush)

    def account(self, choice: Choice, started: float, sent: int, recv: int) -> None:
        """Bytes of one request or tunnel into ``/v1/sessions`` and (at the turn's end) usage.

        The usage reaches the world before the loop reads any later I/O, so an API request sent
        after this answer always sees these bytes.
        """
        world = self.world
        ex = choice.exit
        ended = world.clock.now()
        sticky = choice.sticky
        if sticky is None or sticky.record is None:
            rec = world.record_session(
                ex,
                started,
                ended,
                sent,
                recv,
                session_id=self._session_id(ended),
                count_usage=False,
            )
            if sticky is not None:
                sticky.record = rec
        else:
            rec = sticky.record
            rec.ended_at = ended
            rec.bytes_sent += sent
            rec.bytes_recv += recv
        key = (ex.exit_class, ex.country)
        self._pending_usage[key] = self._pending_usage.get(key, 0) + sent + recv
        self._turn.touch()

    def flush(self) -> None:
        """Hand the pending usage to the world now."""
        pending, self._pending_usage = self._pending_usage, {}
        self.world.add_usage_batch(pending)

    def _session_id(self, ts: float) -> str:
        """A ``sess_`` id shaped like the world's ULID-like ids, cheaply (one random draw)."""
        n = (int(ts * 1000) << 80) | self._id_rng.getrandbits(80)
        return "sess_" + "".join([_CROCKFORD_PAIRS[(n >> s) & 1023] for s in _PAIR_SHIFTS])
