"""Which exit serves a request: the sandbox gateway's view of the pool, and sticky sessions.

Choices the protocol leaves open, made here (see also the gateway's module docstring):

- Degraded ASNs: a request whose targeting names no ASN is served by healthy exits when any
  match, as a real pool routes around trouble; degraded exits serve it only when nothing healthy
  matches, or when the targeting names the ASN.  A degraded exit fails
  ``world.degraded_failure_rate`` of its requests with 502 ``exit_failed``.
- A sticky session keeps its exit for ``sesstime`` minutes from its first request.  If that exit
  dies (its country or ASN goes down) the session answers 502 ``exit_failed`` once and is
  forgotten, so the next request with the same id gets a new exit (or ``no_exit``).

Every draw comes from the world's seeded ``gateway_rng``, so a run is the same for a seed.
"""

from __future__ import annotations

import operator

from proxaro_scrape import protocol
from proxaro_scrape.sandbox._gateway_accounting import Turn
from proxaro_scrape.sandbox._gateway_answers import Choice, Refusal, Sticky
from proxaro_scrape.sandbox.targeting import Targeting
from proxaro_scrape.sandbox.world import Asn, Country, Exit, World

__all__ = ["ExitChooser"]

_POOL_HEALTH = operator.attrgetter("pool_health")
#: Sticky sessions remembered at most (the oldest are forgotten first beyond this).
_STICKY_MAX = 200_000


class ExitChooser:
    """Picks the exit of each request or tunnel and keeps the live sticky sessions."""

    def __init__(self, world: World, turn: Turn) -> None:
        self.world = world
        self._turn = turn
        self._sticky: dict[tuple[object, ...], Sticky] = {}
        # Pool view cache, rebuilt whenever the world's health fingerprint changes.
        self._fingerprint: list[str] = []
        self._health_of: list[Country | Asn] = []
        self._health_shape: tuple[int, int] = (-1, -1)
        self._down_countries: set[str] = set()
        self._asn_health: dict[str, str] = {}
        self._live: dict[tuple[str | None, ...], list[Exit]] = {}
        self._view_checked = False
        turn.on_end(self._new_turn)

    def _new_turn(self) -> None:
        self._view_checked = False

    def _refresh_pool_view(self) -> None:
        """Rebuild the cached pool view if any country's or ASN's health changed.

        The health of every country and ASN is read once per loop turn that serves requests
        (whoever changed it, the controls or a test poking the world), in one C-level pass.
        Once per turn is enough: a client that saw a change answered cannot get a request in
        before the next turn.
        """
        if self._view_checked:
            return
        self._view_checked = True
        self._turn.touch()
        world = self.world
        shape = (len(world.exits), len(world.countries))
        if shape != self._health_shape:
            self._health_shape = shape
            self._health_of = [*world.countries.values()]
            self._health_of += [a for asns in world.asns.values() for a in asns]
        fingerprint = list(map(_POOL_HEALTH, self._health_of))
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        self._down_countries = {
            code for code, c in world.countries.items() if c.pool_health == "down"
        }
        self._asn_health = {a.asn: a.pool_health for asns in world.asns.values() for a in asns}
        self._live.clear()

    def _live_exits(self, t: Targeting) -> list[Exit]:
        key = t.pool_key
        exits = self._live.get(key)
        if exits is None:
            exits = self.world.live_exits(t.country, t.city, t.asn_label, t.exit_class)
            if t.asn is None:
                healthy = [e for e in exits if self._asn_health.get(e.asn) == "healthy"]
                if healthy:
                    exits = healthy
            self._live[key] = exits
        return exits

    def _exit_alive(self, ex: Exit) -> bool:
        return ex.country not in self._down_countries and self._asn_health.get(ex.asn) != "down"

    def choose(self, t: Targeting) -> Choice:
        """Pick the exit for one request or tunnel (raises :class:`Refusal`)."""
        self._refresh_pool_view()
        world = self.world
        rng = world.gateway_rng
        if t.session is None:
            exits = self._live_exits(t)
            if not exits:
                raise Refusal(protocol.ERROR_NO_EXIT)
            choice = Choice(exits[int(rng.random() * len(exits))])
        else:
            key = (t.base, t.session, t.pool_key)
            now = world.clock.now()
            sticky = self._sticky.get(key)
            if sticky is not None and sticky.expires_at <= now:
                del self._sticky[key]
                sticky = None
            if sticky is not None and not self._exit_alive(sticky.exit):
                del self._sticky[key]
                raise Refusal(
                    protocol.ERROR_EXIT_FAILED, "the session's exit went offline; start a new one"
                )
            if sticky is None:
                exits = self._live_exits(t)
                if not exits:
                    raise Refusal(protocol.ERROR_NO_EXIT)
                sticky = Sticky(
                    t.session,
                    exits[int(rng.random() * len(exits))],
                    now + t.session_minutes * 60.0,
                )
                if len(self._sticky) >= _STICKY_MAX:
                    self._forget_sessions(now)
                self._sticky[key] = sticky
            choice = Choice(sticky.exit, sticky)
        # The exit's own failures, drawn from the seeded gateway rng (deterministic per seed).
        if self._asn_health.get(choice.exit.asn) == "degraded":
            if rng.random() < world.degraded_failure_rate:
                raise Refusal(protocol.ERROR_EXIT_FAILED, choice=choice)
        drop = world.knobs.exit_drop_rate
        if drop > 0 and rng.random() < drop:
            raise Refusal(protocol.ERROR_EXIT_FAILED, choice=choice)
        return choice

    def forget_expired(self, world_now: float) -> None:
        """Forget the sticky sessions whose lifetime is over."""
        for k in [k for k, s in self._sticky.items() if s.expires_at <= world_now]:
            del self._sticky[k]

    def _forget_sessions(self, now: float) -> None:
        self.forget_expired(now)
        while len(self._sticky) >= _STICKY_MAX:
            del self._sticky[next(iter(self._sticky))]
