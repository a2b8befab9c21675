"""The fleet's store and keyspace as plain data: no Redis, no thread, a fake clock."""

from __future__ import annotations

import pytest

pytest.importorskip("redis")

from proxaro_scrape._secrets import Secret  # noqa: E402
from proxaro_scrape.fleet import FleetStore, Keyspace  # noqa: E402
from proxaro_scrape.gateway._core import RoutingCore  # noqa: E402

KEY = Secret("proxaro_test_0123456789abcdef")


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_800_000_000.0 + 60.0  # one minute into a ten-minute window

    def __call__(self) -> float:
        return self.mono


def make(clock: Clock) -> FleetStore:
    return FleetStore(Keyspace(KEY, "proxaro"), clock=clock, wall=lambda: clock.wall)


def test_the_keyspace_names_the_account_by_a_digest_and_seals_what_it_stores() -> None:
    ks = Keyspace(KEY, "pfx")
    assert ks.key("lease").startswith("pfx:") and KEY.reveal() not in ks.key("lease")
    assert Keyspace(KEY, "pfx").account == ks.account != Keyspace(Secret("other"), "pfx").account
    token = ks.seal({"password": Secret("hunter2"), "n": 1})
    assert b"hunter2" not in token
    assert ks.open(token) == {"password": "hunter2", "n": 1}
    assert Keyspace(Secret("other"), "pfx").open(token) is None  # another account's key
    assert ks.open(token[:-4] + b"AAAA") is None and ks.open(None) is None
    assert ks.digest(("k", "cart42")) == Keyspace(KEY, "x").digest(("k", "cart42"))
    assert "cart42" not in ks.digest(("k", "cart42"))


def test_two_workers_name_one_session_alike_and_follow_each_others_rotations() -> None:
    clock = Clock()
    a, b = make(clock), make(clock)
    key = ("k", "cart42", ())
    id_a, until_a = a.open(key, 10, clock())
    id_b, until_b = b.open(key, 10, clock())
    assert id_a == id_b and id_a.isalnum() and len(id_a) <= 32
    assert until_a == until_b == clock() + 540 - 30  # the window's end, less the margin
    assert a.open(("k", "other", ()), 10, clock())[0] != id_a
    assert a.pick(key) == b.pick(key) and 0 <= a.pick(key) < 1

    rotated = a.rotate(key, None, clock())
    assert rotated != id_a
    event = a.outbox.pop()
    assert event[0] == "rot" and "cart42" not in repr(event)
    assert b.apply(event)
    assert b.open(key, 10, clock())[0] == rotated  # b opens the rotated one too
    assert not b.apply(event)  # already there: the same ban seen twice moves nothing

    clock.wall += 600  # the next window: a new session for everyone
    assert a.open(key, 10, clock())[0] == b.open(key, 10, clock())[0] not in (id_a, rotated)


def test_near_a_windows_end_the_next_windows_session_is_used_early() -> None:
    clock = Clock()
    clock.wall = 1_800_000_000.0 + 600 - 10  # 10 s before the end, inside the margin
    a = make(clock)
    session, until = a.open(("d", "shop"), 10, clock())
    clock.wall += 11
    assert make(clock).open(("d", "shop"), 10, clock())[0] == session
    assert until <= clock.mono + 600


def test_explicit_sessions_keep_their_name_until_rotated() -> None:
    clock = Clock()
    a, b = make(clock), make(clock)
    key = ("s", "basket", ())
    first = a.rotate(key, "basket", clock())
    assert first == "basketr1"
    b.apply(a.outbox.pop())
    assert b.rotate(key, "basket", clock()) == "basketr2"


def test_breakers_and_bans_go_out_and_come_in() -> None:
    clock = Clock()
    a, b = make(clock), make(clock)
    core_a = RoutingCore(store=a, clock=clock)
    core_b = RoutingCore(store=b, clock=clock)
    assert core_a.breakers.failure("c:de", clock())
    out = [e for e in a.outbox if e[0] == "brk"]
    assert out and out[-1][2] == "open"
    for event in out:
        b.apply(event)
    assert core_b.breakers.is_open("c:de", clock())
    clock.mono += 3600
    assert core_b.breakers.allow("c:de", clock())  # its own probe once the backoff is over

    core_a._note_ban("shop.test", "203.0.113.9", clock())
    b.apply(a.outbox.pop())
    assert core_b._is_banned("shop.test", "203.0.113.9", clock())
    assert not core_b._is_banned("shop.test", "203.0.113.10", clock())

    a.breaker_pop("c:de")
    b.apply(a.outbox.pop())
    assert b.breaker_get("c:de") is None  # a's probe got through: closed everywhere
    assert not b.apply(["nonsense"]) and not b.apply([])


def test_state_events_say_what_redis_should_hold_after_it_lost_everything() -> None:
    clock = Clock()
    a = make(clock)
    core = RoutingCore(store=a, clock=clock)
    core.breakers.failure("c:fr", clock())
    core._note_ban("shop.test", "198.51.100.1", clock())
    a.rotate(("d", "shop"), None, clock())
    kinds = sorted(e[0] for e in a.state_events())
    assert kinds == ["ban", "brk", "rot"]
