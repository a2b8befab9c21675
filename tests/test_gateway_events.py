"""Which webhook events the manager applies: tables of cases, both sides of every bound.

The decision is :func:`event_applies` (pure); :class:`EventGate` is its memory between events
(driven here by fake clocks); the sandbox end to end is ``test_webhooks_stale.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from proxaro_scrape.gateway._events import (
    MAX_EVENT_AGE,
    REFRESH_PENDING_SECONDS,
    EventFacts,
    EventGate,
    EventState,
    event_applies,
    facts_of,
    ulid_ms,
)
from proxaro_scrape.webhooks import parse_event

NOW = datetime(2026, 4, 15, 12, 0, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
U100 = "usage.threshold.100"
U80 = "usage.threshold.80"
ROT = "credentials.rotated"


def usage(
    period: str | None = "2026-04",
    created: datetime | None = NOW - timedelta(minutes=1),
    type_: str = U100,
) -> EventFacts:
    return EventFacts(type_, created, period)


def rotated(rotated_at: datetime | None, created: datetime | None = None) -> EventFacts:
    return EventFacts(ROT, created or rotated_at or NOW, None, rotated_at)


def state(**kw: Any) -> EventState:
    return EventState(**{"now": NOW, "period": "2026-04", **kw})


# Two ULID-shaped event ids one millisecond apart (the first ten characters are the ms).
ULID_EARLY = "evt_01J00000000000000000000000"
ULID_LATE = "evt_01J00000010000000000000000"
READ_AT = NOW - timedelta(minutes=10)
HELD = NOW - timedelta(hours=1)

# (case, event, state, applies, reason)
CASES: list[tuple[str, EventFacts, EventState, bool, str]] = [
    # --- the billing period: same / previous / next / not a period / not given
    ("same period", usage(), state(), True, "current"),
    ("same period, 80 %", usage(type_=U80), state(), True, "current"),
    ("previous period", usage("2026-03"), state(), False, "past_period"),
    ("a year ago, same month", usage("2025-04"), state(), False, "past_period"),
    ("previous period, 80 %", usage("2026-03", type_=U80), state(), False, "past_period"),
    ("next period", usage("2026-05"), state(), False, "future_period"),
    ("a year ahead, same month", usage("2027-04"), state(), False, "future_period"),
    ("period is not YYYY-MM", usage(""), state(), False, "bad_period"),
    ("no period, no created_at (a dict)", usage(None, None), state(), True, "current"),
    # --- created_at against the last usage reading (strictly before is stale)
    ("1 s before the read", usage(created=READ_AT - SEC), state(usage_read_at=READ_AT), False,
     "older_than_usage_read"),
    ("at the read", usage(created=READ_AT), state(usage_read_at=READ_AT), True, "current"),
    ("1 s after the read", usage(created=READ_AT + SEC), state(usage_read_at=READ_AT), True,
     "current"),
    ("no read yet", usage(created=READ_AT - SEC), state(), True, "current"),
    ("no created_at, read known", usage(created=None), state(usage_read_at=READ_AT), True,
     "current"),
    # --- age: Proxaro retries for 24 h (+ skew); older is a replay, whatever the type
    ("exactly the max age", usage(created=NOW - MAX_EVENT_AGE), state(), True, "current"),
    ("1 s past the max age", usage(created=NOW - MAX_EVENT_AGE - SEC), state(), False,
     "too_old"),
    ("rotation 1 s past the max age", rotated(NOW - MAX_EVENT_AGE - SEC), state(), False,
     "too_old"),
    ("allowlist 1 s past the max age", EventFacts("allowlist.updated", NOW - MAX_EVENT_AGE - SEC),
     state(), False, "too_old"),
    ("allowlist, fresh", EventFacts("allowlist.updated", NOW), state(), True, "current"),
    # --- credentials.rotated against the newest rotation acted on
    ("rotation 1 s older than held", rotated(HELD - SEC), state(rotated_at=HELD), False,
     "not_newer"),
    ("rotation same as held", rotated(HELD), state(rotated_at=HELD), False, "not_newer"),
    # stamps are whole seconds: in the same second, the event's id tells a replay from another
    ("same second, an id acted on", EventFacts(ROT, HELD, None, HELD, "evt_1"),
     state(rotated_at=HELD, rotation_ids=frozenset({"evt_1"})), False, "not_newer"),
    ("same second, another id", EventFacts(ROT, HELD, None, HELD, "evt_2"),
     state(rotated_at=HELD, rotation_ids=frozenset({"evt_1"})), True, "current"),
    # ... and ULID-shaped ids order them by the millisecond (a late "first" after "second")
    ("same second, an earlier ms", EventFacts(ROT, HELD, None, HELD, ULID_EARLY),
     state(rotated_at=HELD, rotation_ids=frozenset({ULID_LATE})), False, "not_newer"),
    ("same second, a later ms", EventFacts(ROT, HELD, None, HELD, ULID_LATE),
     state(rotated_at=HELD, rotation_ids=frozenset({ULID_EARLY})), True, "current"),
    ("same second, the same ms", EventFacts(ROT, HELD, None, HELD, ULID_EARLY[:-1] + "Z"),
     state(rotated_at=HELD, rotation_ids=frozenset({ULID_EARLY})), True, "current"),
    ("same second, an id of another shape", EventFacts(ROT, HELD, None, HELD, "evt_2"),
     state(rotated_at=HELD, rotation_ids=frozenset({ULID_LATE})), True, "current"),
    ("rotation 1 s newer than held", rotated(HELD + SEC), state(rotated_at=HELD), True,
     "current"),
    ("rotation, none held yet", rotated(HELD), state(), True, "current"),
    ("rotation without rotated_at: created_at counts",
     EventFacts(ROT, HELD - SEC), state(rotated_at=HELD), False, "not_newer"),
    ("rotation without any time (a dict)", EventFacts(ROT), state(rotated_at=HELD), True,
     "current"),
    # --- credentials.rotated against the manager's last fetch of the credentials
    ("rotated 1 s before the last fetch", rotated(READ_AT - SEC),
     state(credentials_read_at=READ_AT), False, "older_than_credentials"),
    ("rotated at the last fetch", rotated(READ_AT), state(credentials_read_at=READ_AT), True,
     "current"),
    ("rotated 1 s after the last fetch", rotated(READ_AT + SEC),
     state(credentials_read_at=READ_AT), True, "current"),
    ("newer rotation while a refresh is pending", rotated(HELD + SEC),
     state(rotated_at=HELD, refresh_pending=True), False, "refresh_pending"),
    ("newer rotation, no refresh pending", rotated(HELD + SEC),
     state(rotated_at=HELD, refresh_pending=False), True, "current"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("event", "st", "applies", "reason"),
    [pytest.param(e, s, a, r, id=name) for name, e, s, a, r in CASES],
)
def test_event_applies(event: EventFacts, st: EventState, applies: bool, reason: str) -> None:
    verdict = event_applies(event, st)
    assert (verdict.applies, verdict.reason) == (applies, reason)
    assert bool(verdict) is applies


def body(type_: str, created: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"object": "event", "id": "evt_1", "type": type_, "created_at": created, "data": data}


# (case, event as delivered, period the facts name)
PERIODS: list[tuple[str, Any, str | None]] = [
    ("data.period", body(U100, "2026-04-15T12:00:00Z", {"period": "2026-03"}), "2026-03"),
    ("data.period_start", body(U100, "2026-04-15T12:00:00Z",
                               {"period_start": "2026-04-01T00:00:00Z"}), "2026-04"),
    ("created_at's month (last second of March)",
     body(U100, "2026-03-31T23:59:59Z", {}), "2026-03"),
    ("created_at's month (first second of April)",
     body(U100, "2026-04-01T00:00:00Z", {}), "2026-04"),
    ("created_at with an offset is read in UTC",
     body(U100, "2026-04-01T01:30:00+02:00", {}), "2026-03"),
    ("month 13", body(U100, "2026-04-15T12:00:00Z", {"period": "2026-13"}), ""),
    ("month 00", body(U100, "2026-04-15T12:00:00Z", {"period": "2026-00"}), ""),
    ("a number", body(U100, "2026-04-15T12:00:00Z", {"period": 202604}), ""),
    ("a dict without created_at", {"type": U100, "data": {}}, None),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "period"), [pytest.param(r, p, id=name) for name, r, p in PERIODS])
def test_facts_name_the_period(raw: dict[str, Any], period: str | None) -> None:
    as_dict, _, _ = facts_of(raw)
    assert as_dict.period == period
    if "created_at" in raw:  # the parsed WebhookEvent says the same as the dict
        parsed, _, _ = facts_of(parse_event(raw))
        assert parsed == as_dict


def test_facts_of_a_rotation_and_of_junk() -> None:
    facts, etype, data = facts_of(
        parse_event(body(ROT, "2026-04-15T12:00:05Z", {"rotated_at": "2026-04-15T12:00:00Z"}))
    )
    assert etype == ROT and data == {"rotated_at": "2026-04-15T12:00:00Z"}
    assert facts.rotated_at == datetime(2026, 4, 15, 12, 0, tzinfo=timezone.utc)
    junk, etype, data = facts_of({"type": 7, "data": "x", "created_at": "yesterday"})
    assert junk == EventFacts(None) and etype == 7 and data == "x"
    assert facts_of({"type": ROT, "data": {"rotated_at": 5}})[0].rotated_at is None


class Clocks:
    """A wall clock and a monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.wall_now = NOW.timestamp()
        self.mono = 1000.0

    def wall(self) -> float:
        return self.wall_now

    def clock(self) -> float:
        return self.mono

    def gate(self) -> EventGate:
        return EventGate(wall=self.wall, clock=self.clock)


def rotation(at: datetime) -> EventFacts:
    return facts_of({"type": ROT, "created_at": at.isoformat(), "data": {"rotated_at": at}})[0]


def test_a_burst_of_replayed_rotations_costs_one_refresh() -> None:
    c = Clocks()
    gate = c.gate()
    old = rotation(NOW - timedelta(hours=3))
    verdicts = [gate.admit(old, credentials_version=1) for _ in range(50)]
    assert [v.reason for v in verdicts] == ["current"] + ["not_newer"] * 49
    # Older ones still, in any order: never newer than the one acted on.
    for hours in (5, 4, 3.5):
        older = rotation(NOW - timedelta(hours=hours))
        assert gate.admit(older, credentials_version=1).reason == "not_newer"


def test_distinct_rotations_in_a_burst_share_the_pending_refresh() -> None:
    c = Clocks()
    gate = c.gate()
    reasons = [
        gate.admit(rotation(NOW - timedelta(minutes=m)), credentials_version=1).reason
        for m in (30, 20, 10)  # each newer than the last
    ]
    assert reasons == ["current", "refresh_pending", "refresh_pending"]
    # The newest is remembered even though refused: its replay later is not newer.
    c.mono += REFRESH_PENDING_SECONDS + 1
    again = gate.admit(rotation(NOW - timedelta(minutes=10)), credentials_version=1)
    assert again.reason == "not_newer"


@pytest.mark.parametrize(
    ("after", "version", "reason"),
    [
        (REFRESH_PENDING_SECONDS - 0.01, 1, "refresh_pending"),  # still pending
        (REFRESH_PENDING_SECONDS, 1, "current"),  # the window is over
        (0.01, 2, "current"),  # the credentials changed: the refresh is done
    ],
)
def test_the_pending_refresh_ends(after: float, version: int, reason: str) -> None:
    c = Clocks()
    gate = c.gate()
    assert gate.admit(rotation(NOW - timedelta(minutes=2)), credentials_version=1)
    c.mono += after
    newer = rotation(NOW - timedelta(minutes=1))
    assert gate.admit(newer, credentials_version=version).reason == reason


def test_a_usage_reading_between_two_events_makes_the_first_stale() -> None:
    c = Clocks()
    gate = c.gate()
    first = usage(created=NOW - SEC)
    assert gate.admit(first, credentials_version=1, usage_polls=1)
    c.wall_now += 60
    # No reading since: a replay of the first still applies (nothing newer is known).
    assert gate.admit(first, credentials_version=1, usage_polls=1)
    c.wall_now += 60
    # A reading happened (the count moved): it is later than the previous look, so than `first`.
    stale = gate.admit(first, credentials_version=1, usage_polls=2)
    assert stale.reason == "older_than_usage_read"
    fresh = usage(created=NOW + timedelta(seconds=119))
    assert gate.admit(fresh, credentials_version=1, usage_polls=2)


def test_a_credentials_fetch_between_two_events_makes_older_rotations_stale() -> None:
    c = Clocks()
    gate = c.gate()
    allowlist = EventFacts("allowlist.updated", NOW)
    assert gate.admit(allowlist, credentials_version=1, credential_fetches=1)
    looked = NOW
    c.wall_now += 600
    # A poll fetched the credentials since (the count moved): they reflect every rotation
    # before the previous look, whatever the gate remembers of rotation events (nothing here).
    old = rotation(looked - SEC)
    verdict = gate.admit(old, credentials_version=1, credential_fetches=2)
    assert verdict.reason == "older_than_credentials"
    newer = rotation(looked + SEC)  # maybe after that fetch: acted on
    assert gate.admit(newer, credentials_version=1, credential_fetches=2)


def test_readings_can_be_noted_explicitly() -> None:
    c = Clocks()
    gate = c.gate()
    gate.note_read("usage", READ_AT)
    gate.note_read("usage", READ_AT - timedelta(hours=1))  # an older one never moves it back
    assert gate.admit(usage(created=READ_AT - SEC), credentials_version=1).reason == (
        "older_than_usage_read"
    )
    assert gate.admit(usage(created=READ_AT), credentials_version=1)
    assert "EventGate" in repr(gate)


def test_two_rotations_in_one_second_both_apply_and_their_replays_do_not() -> None:
    c = Clocks()
    gate = c.gate()
    at = NOW - timedelta(seconds=30)

    def event(eid: str) -> EventFacts:
        data = {"rotated_at": at.isoformat()}
        return facts_of({"id": eid, "type": ROT, "created_at": at.isoformat(), "data": data})[0]

    assert gate.admit(event("evt_a"), credentials_version=1).reason == "current"
    # The first one's refresh brought version 2; a second rotation stamped the same second:
    assert gate.admit(event("evt_b"), credentials_version=2).reason == "current"
    c.mono += REFRESH_PENDING_SECONDS + 1
    assert gate.admit(event("evt_a"), credentials_version=3).reason == "not_newer"
    assert gate.admit(event("evt_b"), credentials_version=3).reason == "not_newer"


def test_ulid_ms_reads_the_time_of_a_sandbox_id() -> None:
    from proxaro_scrape.sandbox.world import World

    world = World()
    before = int(world.clock.now() * 1000)
    eid = world.new_id("evt")
    after = int(world.clock.now() * 1000)
    assert before <= ulid_ms(eid) <= after  # type: ignore[operator]
    assert ulid_ms(ULID_LATE) == ulid_ms(ULID_EARLY) + 1  # type: ignore[operator]
    for other in ("evt_1", "", None, "evt_" + "I" * 26, "evt_" + "0" * 25):
        assert ulid_ms(other) is None
