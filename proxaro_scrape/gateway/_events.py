"""Which webhook events the manager acts on: an event is applied only if it is about now.

Delivery is at least once, retried for up to 24 hours, and a signature proves who wrote a body,
not when it was sent: a correctly signed event may be a late retry or a replay of an old one.
So before :meth:`~proxaro_scrape.GatewayManager.handle_event` lets an event change anything,
:func:`event_applies` (a plain function over plain data, no clock read, no I/O) asks whether the
event is about the state the manager is in:

- any event older than :data:`MAX_EVENT_AGE` (Proxaro's 24 hours of retries, plus
  :data:`CLOCK_SKEW`) is not applied: no honest delivery is that late;
- ``usage.threshold.*`` applies only to the current billing period (a calendar month,
  ``YYYY-MM``, as ``GET /v1/usage?period=`` names them): one about a past period, or a future
  one, never stops routing; nor does one created before the manager's last usage reading
  (the reading is newer news: after a plan upgrade, say);
- ``credentials.rotated`` applies only if it is newer than the newest rotation already acted on
  and than the manager's last fetch of the credentials, and not while the refresh a previous
  event asked for is still pending: a burst of replays costs at most one refresh.  Stamps are
  whole seconds; within one, rotations are told apart by their ids (a replay carries an id
  already acted on) and ordered by the milliseconds of their ULID-shaped ids.  A refresh
  can never roll credentials back anyway (it fetches the current ones from
  ``GET /v1/credentials``); this keeps replays from costing API calls and from condemning the
  credentials in use.

:class:`EventGate` is the stateful shell (a few fields, constant memory: deduplication by id
stays the receiver's bounded LRU) and :func:`admit_event` is what ``handle_event`` calls.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "CLOCK_SKEW",
    "MAX_EVENT_AGE",
    "REFRESH_PENDING_SECONDS",
    "EventFacts",
    "EventGate",
    "EventState",
    "Verdict",
    "admit_event",
    "event_applies",
    "facts_of",
    "period_of",
    "ulid_ms",
]

logger = logging.getLogger("proxaro_scrape.gateway")

#: How far the provider's clock and ours may disagree.
CLOCK_SKEW = timedelta(minutes=5)
#: Proxaro retries a delivery for up to 24 hours: an event older than this is a replay.
MAX_EVENT_AGE = timedelta(hours=24) + CLOCK_SKEW
#: A refresh asked for by a ``credentials.rotated`` event is pending until the credentials
#: change or this many seconds pass (a refresh that brings nothing new must not mute the next
#: rotation for long; the gateway's grace is 60 s and the poll runs well inside it).
REFRESH_PENDING_SECONDS = 5.0
#: Event times are whole seconds.
_STAMP = timedelta(seconds=1)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PERIOD = re.compile(r"(\d{4})-(\d{2})")
_USAGE_PREFIX = "usage.threshold."


@dataclass(frozen=True)
class EventFacts:
    """What an event claims, as far as routing cares.

    ``period`` is the billing period (``YYYY-MM``) a usage event is about: its ``data.period``,
    else the month of ``data.period_start``, else the month it was created in; ``""`` when the
    sender gave one that is not a period.  ``rotated_at`` is ``data.rotated_at`` of
    ``credentials.rotated`` (else ``created_at``).
    """

    type: str | None
    created_at: datetime | None = None
    period: str | None = None
    rotated_at: datetime | None = None
    #: The event's id: two rotations stamped in the same second are told apart by it.
    id: str | None = None


@dataclass(frozen=True)
class EventState:
    """What the manager knows now, against which an event is judged.

    ``now`` is wall-clock UTC; ``period`` the current billing period (``YYYY-MM``);
    ``usage_read_at`` when the manager last read ``GET /v1/usage`` (``None``: not known);
    ``rotated_at`` the newest rotation acted on;
    ``refresh_pending`` whether a refresh an event asked for has not finished yet;
    ``credentials_read_at`` when the manager last fetched ``GET /v1/credentials`` (whatever it
    holds reflects every rotation before that).
    """

    now: datetime
    period: str
    usage_read_at: datetime | None = None
    rotated_at: datetime | None = None
    refresh_pending: bool = False
    credentials_read_at: datetime | None = None
    #: Ids of the rotations acted on that are stamped ``rotated_at`` (the stamps are whole
    #: seconds: another rotation in the same second is newer, a replay of one of these is not).
    rotation_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Verdict:
    """Apply the event or not, and why (``reason`` is a short name, for logs and tests)."""

    applies: bool
    reason: str

    def __bool__(self) -> bool:
        return self.applies


def event_applies(event: EventFacts, state: EventState) -> Verdict:
    """Should the manager act on ``event``, given ``state``?  Pure: see the module docstring.

    Reasons: ``"current"`` (applies), ``"too_old"``, ``"bad_period"``, ``"past_period"``,
    ``"future_period"``, ``"older_than_usage_read"``, ``"not_newer"``,
    ``"older_than_credentials"``, ``"refresh_pending"``.  What the event does not say (no
    ``created_at``, no period) is not held against it: a hand-made ``{"type": ..., "data": {}}``
    still applies.
    """
    created = event.created_at
    if created is not None and state.now - created > MAX_EVENT_AGE:
        return Verdict(False, "too_old")
    if event.type is not None and event.type.startswith(_USAGE_PREFIX):
        if event.period == "":
            return Verdict(False, "bad_period")
        if event.period is not None and event.period < state.period:
            return Verdict(False, "past_period")
        if event.period is not None and event.period > state.period:
            return Verdict(False, "future_period")
        if created is not None and state.usage_read_at is not None:
            if created < state.usage_read_at:
                return Verdict(False, "older_than_usage_read")
    elif event.type == "credentials.rotated":
        rotated = event.rotated_at or created
        if rotated is not None and state.rotated_at is not None:
            same = rotated == state.rotated_at
            if rotated < state.rotated_at or (
                same
                and (event.id is None or event.id in state.rotation_ids or _earlier(event, state))
            ):
                return Verdict(False, "not_newer")
        if rotated is not None and state.credentials_read_at is not None:
            # Stamped in whole seconds: only a whole second before the fetch is surely older.
            if rotated + _STAMP <= state.credentials_read_at:
                return Verdict(False, "older_than_credentials")
        if state.refresh_pending:
            return Verdict(False, "refresh_pending")
    return Verdict(True, "current")


def ulid_ms(eid: str | None) -> int | None:
    """The milliseconds a ULID-shaped id (``evt_01HVQ...``: 26 Crockford base-32 characters
    after the prefix, the first ten a UNIX time in ms) was made at; ``None`` for another shape."""
    if not eid:
        return None
    body = eid.rpartition("_")[2].upper()
    if len(body) != 26:
        return None
    ms = 0
    for ch in body[:10]:
        digit = _CROCKFORD.find(ch)
        if digit < 0:
            return None
        ms = ms * 32 + digit
    return ms


def _earlier(event: EventFacts, state: EventState) -> bool:
    """Within the second of the newest rotation acted on, is ``event`` surely older than one of
    those (its id's milliseconds are earlier)?  Ids of another shape, or the same millisecond,
    are not held against it: the cost of acting is one credentials fetch, never a roll-back."""
    mine = ulid_ms(event.id)
    if mine is None:
        return False
    held = [ms for ms in map(ulid_ms, state.rotation_ids) if ms is not None]
    return bool(held) and mine < max(held)


def period_of(moment: datetime) -> str:
    """The billing period (``YYYY-MM``, UTC) ``moment`` falls in."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m")


def facts_of(event: Any) -> tuple[EventFacts, Any, Any]:
    """``(facts, type, data)`` of a ``WebhookEvent`` or of a dict with ``type`` / ``data``
    (and optionally ``created_at``)."""
    if isinstance(event, Mapping):
        etype, data, created = event.get("type"), event.get("data") or {}, event.get("created_at")
    else:
        etype = getattr(event, "type", None)
        data = getattr(event, "data", None) or {}
        created = getattr(event, "created_at", None)
    created_at = _moment(created)
    fields: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    period: str | None = None
    rotated: datetime | None = None
    if isinstance(etype, str) and etype.startswith(_USAGE_PREFIX):
        period = _period(fields, created_at)
    elif etype == "credentials.rotated":
        rotated = _moment(fields.get("rotated_at"))
    eid = event.get("id") if isinstance(event, Mapping) else getattr(event, "id", None)
    facts = EventFacts(
        etype if isinstance(etype, str) else None,
        created_at,
        period,
        rotated,
        eid if isinstance(eid, str) else None,
    )
    return facts, etype, data


def _period(data: Mapping[str, Any], created_at: datetime | None) -> str | None:
    given = data.get("period")
    if given is not None:
        match = _PERIOD.fullmatch(given) if isinstance(given, str) else None
        return given if match and 1 <= int(match[2]) <= 12 else ""
    start = _moment(data.get("period_start"))
    if start is not None:
        return period_of(start)
    return period_of(created_at) if created_at is not None else None


def _moment(value: object) -> datetime | None:
    """An aware UTC datetime from a datetime or an ISO-8601 string; ``None`` otherwise."""
    if isinstance(value, str) and 0 < len(value) <= 64:
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # "0001-01-01T00:00:00+01:00" is before datetime.min in UTC
        return None


class EventGate:
    """The memory :func:`event_applies` needs between events: a few fields, thread-safe.

    ``wall`` (UNIX seconds) and ``clock`` (monotonic seconds) are for tests.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._clock = clock
        self._lock = threading.Lock()
        self._rotated_at: datetime | None = None
        self._rotation_ids: set[str] = set()
        self._pending_until = float("-inf")
        self._pending_version = -1
        # Per kind of reading ("usage", "credentials"): when the last one happened (at least),
        # and the manager's count of them as of the previous event.
        self._read_at: dict[str, datetime] = {}
        self._counts: dict[str, int] = {}
        self._looked_at: datetime | None = None

    def __repr__(self) -> str:
        return f"<EventGate rotated_at={self._rotated_at} read_at={self._read_at}>"

    def note_read(self, kind: str, at: datetime | None = None) -> None:
        """The manager read ``kind`` (``"usage"`` or ``"credentials"``) from the API at ``at``
        (default now); an earlier time than one already noted changes nothing."""
        moment = at if at is not None else datetime.fromtimestamp(self._wall(), timezone.utc)
        with self._lock:
            self._note_read(kind, moment)

    def _note_read(self, kind: str, moment: datetime) -> None:
        known = self._read_at.get(kind)
        if known is None or moment > known:
            self._read_at[kind] = moment

    def admit(
        self,
        facts: EventFacts,
        *,
        credentials_version: int,
        usage_polls: int | None = None,
        credential_fetches: int | None = None,
    ) -> Verdict:
        """Judge one event against the manager's state, and remember what acting on it means.

        ``usage_polls`` and ``credential_fetches`` are the manager's counts of readings: one that
        moved since the previous event means a reading after that event was judged, which
        bounds the time of the last reading from below (sound for refusing older events, never
        too eager).
        """
        now = datetime.fromtimestamp(self._wall(), timezone.utc)
        with self._lock:
            counts = {"usage": usage_polls, "credentials": credential_fetches}
            for kind, count in counts.items():
                if count is None:
                    continue
                before = self._counts.get(kind)
                if before is not None and count != before and self._looked_at is not None:
                    self._note_read(kind, self._looked_at)
                self._counts[kind] = count
            self._looked_at = now
            pending = (
                credentials_version == self._pending_version and self._clock() < self._pending_until
            )
            state = EventState(
                now,
                period_of(now),
                usage_read_at=self._read_at.get("usage"),
                rotated_at=self._rotated_at,
                rotation_ids=frozenset(self._rotation_ids),
                refresh_pending=pending,
                credentials_read_at=self._read_at.get("credentials"),
            )
            verdict = event_applies(facts, state)
            if facts.type == "credentials.rotated" and verdict.reason != "too_old":
                rotated = facts.rotated_at or facts.created_at
                if rotated is not None and (self._rotated_at is None or rotated > self._rotated_at):
                    # Refused as pending or not: the refresh under way fetches these anyway.
                    self._rotated_at = rotated
                    self._rotation_ids = set()
                if rotated is not None and rotated == self._rotated_at and facts.id is not None:
                    if len(self._rotation_ids) < 64:  # bounded: rotations in one second
                        self._rotation_ids.add(facts.id)
                if verdict:
                    self._pending_version = credentials_version
                    self._pending_until = self._clock() + REFRESH_PENDING_SECONDS
        return verdict


_GATES: weakref.WeakKeyDictionary[Any, EventGate] = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def gate_for(core: Any) -> EventGate:
    """The :class:`EventGate` of a manager's routing ``core`` (made when first asked for; gone
    with the core).  Keyed by the core so that the background jobs, which hold the core, can
    tell it of their readings: ``gate_for(core).note_read("usage")``."""
    with _GATES_LOCK:
        gate = _GATES.get(core)
        if gate is None:
            gate = _GATES[core] = EventGate()
        return gate


def admit_event(manager: Any, event: Any) -> tuple[Any, Any] | None:
    """``(type, data)`` of ``event`` if ``manager`` should act on it, else ``None`` (logged).

    What :meth:`~proxaro_scrape.GatewayManager.handle_event` calls first.
    """
    facts, etype, data = facts_of(event)
    counts = manager.stats()
    verdict = gate_for(manager.core).admit(
        facts,
        credentials_version=manager.core.creds.version,
        usage_polls=counts.get("usage_polls"),
        credential_fetches=counts.get("credential_refreshes"),
    )
    if not verdict:
        # A late retry is ordinary (at-least-once delivery); a replay is not, but the answer is
        # the same: nothing changes.  INFO, so that neither floods a log at WARNING.
        logger.info(
            "webhook event %s (%s) not applied: %s",
            getattr(event, "id", None) or "-",
            etype,
            verdict.reason.replace("_", " "),
        )
        return None
    return etype, data
