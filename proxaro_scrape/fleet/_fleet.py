"""One worker's link to the fleet: a Redis connection, a thread, and the rules of one-for-all.

The thread (:meth:`Fleet._run`) is the only code that talks to Redis in the background: every
50 ms it applies what the other workers published, writes and publishes this worker's outbox
(:class:`~proxaro_scrape.fleet._state.FleetStore`), adds the counters' increments to the
fleet's totals and renews the leader's lease.  The API calls of the manager's jobs ask
:meth:`Fleet.before` first (see :mod:`~proxaro_scrape.fleet._client`).

What lives in Redis, under ``<prefix>:<account digest>:`` (see :mod:`~proxaro_scrape.fleet._keys`):

================  ===========================================================================
``creds``         the gateway credentials, sealed, with when they were fetched
``lock:creds``    the credentials refresh lock (10 s TTL: a killed holder never blocks it)
``lease``         the leader's lease (5 s TTL, renewed every second): the leader alone polls
                  the pool view and usage; another worker takes over when it lapses
``pool``          the country list the leader fetched; ``asns:<cc>`` a country's ASN listing
``usage``         the last usage reading
``brk:<key>``     an open circuit breaker, expiring when it lets a probe through
``ban:<host>|<ip>`` a ban of an exit by a site, expiring with it
``rot:<digest>``  a sticky session key's rotations (its digest, never the key)
``counters``      the fleet's counters (a hash); ``exits`` a HyperLogLog of the exits seen
``bucket``        the account's API rate-limit token bucket
``worker:<id>``   a live worker (10 s TTL)
================  ===========================================================================

When Redis goes away nothing on the request path notices: the thread logs one warning, the
jobs call the API themselves, and when Redis is back the thread writes what this worker knows
(breakers, bans, rotations, credentials, counters if Redis lost them) and reads the rest.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxaro_scrape.api import Asn, Country, Credentials
from proxaro_scrape.fleet._keys import Keyspace
from proxaro_scrape.fleet._oneforall import _BUCKET, LEASE_TTL_MS, OneForAll, same_credentials, text
from proxaro_scrape.fleet._state import FleetStore

if TYPE_CHECKING:
    from proxaro_scrape.gateway._core import RoutingCore
    from proxaro_scrape.gateway._jobs import Jobs

__all__ = ["Fleet"]

logger = logging.getLogger("proxaro_scrape.fleet")

TICK = 0.05
COUNTER_FLUSH = 0.5
#: Backoff of reconnection attempts while Redis is away (seconds).
RECONNECT_MIN, RECONNECT_MAX = 0.1, 2.0
#: Sticky-session rotations are kept this long in Redis (a day and an hour: the longest
#: ``sesstime`` plus a margin).
ROTATION_TTL = 90_000

# Compare-and-delete / compare-and-extend: only the holder releases or renews.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


class Fleet(OneForAll):
    """The fleet state of one manager (see the module docstring).

    ``api_rate`` is the account's API budget in requests per minute that the workers share
    (the plan's: 60 on Starter); the bucket holds half a minute's worth.
    """

    def __init__(
        self,
        url: str,
        keyspace: Keyspace,
        store: FleetStore,
        *,
        api_rate: float = 60.0,
        credentials_interval: float = 30.0,
        pool_ttl: float | None = 300.0,
    ) -> None:
        self.url = url
        self.where = masked_url(url)
        self.keys = keyspace
        self.store = store
        self.worker = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.api_rate = api_rate
        self._creds_interval = credentials_interval
        self._pool_ttl = pool_ttl or 300.0
        # Fail fast, no retries: a worker whose Redis is away carries on locally at once.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        self._pubsub: Any = None
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._bucket = self._redis.register_script(_BUCKET)
        #: Is Redis reachable (as the thread last saw it)?
        self.up = False
        self._ever_up = False
        self._warned = False
        self.leader = False
        self.core: RoutingCore | None = None
        self.jobs: Jobs | None = None
        #: Called with ``(type, data)`` for a webhook event another worker received.
        self.on_event: Callable[[str, Any], None] | None = None
        self._flushed: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._seq = itertools.count()

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<Fleet {self.where} {self.keys.base} worker={self.worker} redis {state}>"

    # ================================================================== life

    def start(self, core: RoutingCore, jobs: Jobs) -> None:
        """Connect (bounded by the 1 s timeouts) and start the thread; Redis may be down."""
        self.core, self.jobs = core, jobs
        if self._thread is not None:
            return
        self._stop.clear()
        self._connect()
        self._thread = threading.Thread(target=self._run, name="proxaro-fleet", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; flush the counters and give back the lease if Redis is there."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        if self.up:
            try:
                self._flush(counters=True)
                self._release(keys=[self.keys.key("lease")], args=[self.worker])
                self._redis.delete(self.keys.key("worker", self.worker))
            except redis.RedisError:
                pass
        self.leader = False
        self._close_pubsub()
        self._redis.close()

    def _run(self) -> None:
        delay = RECONNECT_MIN
        last_counters = last_lease = 0.0
        while not self._stop.is_set():
            if not self.up:
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RECONNECT_MAX)
                self._connect()
                continue
            delay = RECONNECT_MIN
            try:
                self._drain_messages()
                now = time.monotonic()
                counters = now - last_counters >= COUNTER_FLUSH
                if counters:
                    last_counters = now
                self._flush(counters=counters)
                if self.leader and now - last_lease >= 1.0:
                    last_lease = now
                    renewed = self._renew(
                        keys=[self.keys.key("lease")], args=[self.worker, LEASE_TTL_MS]
                    )
                    self.leader = bool(renewed)
            except (redis.RedisError, OSError) as exc:
                self._went_down(exc)
            except Exception:  # noqa: BLE001 - the thread must outlive any bad message
                logger.exception("fleet thread: unexpected error (carrying on)")

    def _connect(self) -> None:
        self._close_pubsub()
        try:
            self._redis.ping()
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.keys.channel)
            self._pubsub = pubsub
            resynced = self._resync()
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return
        again = self._ever_up
        with self._lock:
            self.up = self._ever_up = True
            self._warned = False
        if again:
            logger.warning("Redis at %s is back: fleet state resynced (%s)", self.where, resynced)
        else:
            logger.info("fleet state on Redis at %s (%s)", self.where, resynced)

    def _went_down(self, exc: BaseException) -> None:
        """Redis failed a call (from any thread): local state from now on, one warning.

        The thread reconnects; it alone touches the subscription."""
        with self._lock:
            warn, self._warned = not self._warned, True
            self.up = False
            self.leader = False
        if warn:
            # One warning per outage; the request path never waits for Redis anyway.
            logger.warning(
                "Redis at %s unreachable (%s): this worker carries on with its local state "
                "and resyncs when Redis is back",
                self.where,
                type(exc).__name__,
            )

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001, S110 - a dead connection closes badly
                pass

    # ================================================================== messages

    def _publish(self, kind: str, body: Any = None) -> None:
        msg = json.dumps({"w": self.worker, "t": kind, "b": body}, separators=(",", ":"))
        self._redis.publish(self.keys.channel, msg)

    def broadcast_event(self, etype: str, data: Any) -> None:
        """Hand a webhook event this worker received to every other worker (best effort)."""
        if not self.up:
            return
        try:
            self._publish("hook", {"type": etype, "data": data})
        except (redis.RedisError, TypeError, ValueError) as exc:
            logger.warning("could not hand the %s event to the fleet: %s", etype, exc)

    def _drain_messages(self) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        msg = pubsub.get_message(timeout=TICK)
        while msg is not None:
            if msg.get("type") == "message":
                self._on_message(msg.get("data"))
            msg = pubsub.get_message(timeout=0)

    def _on_message(self, raw: Any) -> None:
        try:
            msg = json.loads(raw)
        except (TypeError, ValueError):
            return
        if not isinstance(msg, dict) or msg.get("w") == self.worker:
            return
        kind, body = msg.get("t"), msg.get("b")
        core, jobs = self.core, self.jobs
        if core is None or jobs is None:
            return
        if kind == "ev" and isinstance(body, list):
            with core.lock:
                for event in body:
                    if isinstance(event, list):
                        self.store.apply(event)
        elif kind == "creds":
            self._take_credentials()
        elif kind == "pool":
            data = self._get_json("pool")
            if data is not None:
                jobs.install_countries([Country.from_dict(c) for c in data["v"]])
        elif kind == "asns" and isinstance(body, str):
            data = self._get_json("asns", body)
            if data is not None:
                jobs.install_asns(body, [Asn.from_dict(a) for a in data["v"]])
        elif kind == "usage":
            data = self._get_json("usage")
            if data is not None:
                reading = data["v"]
                jobs.usage_actions(
                    core.usage.update(reading.get("total_bytes"), reading.get("cap_bytes"))
                )
        elif kind == "hook" and isinstance(body, dict) and self.on_event is not None:
            self.on_event(str(body.get("type")), body.get("data"))

    def _take_credentials(self) -> None:
        """Another worker fetched credentials: take them if they differ from ours."""
        blob = self._read_credentials()
        core, jobs = self.core, self.jobs
        if blob is None or core is None or jobs is None:
            return
        current = core.creds.current
        if current is None or not same_credentials(blob["c"], current):
            jobs.credentials_fetched(Credentials.from_dict(blob["c"]))

    # ================================================================== writes

    def _flush(self, *, counters: bool) -> None:
        outbox = self.store.outbox
        events = []
        while outbox:
            try:
                events.append(outbox.popleft())
            except IndexError:
                break
        pipe = self._redis.pipeline(transaction=False)
        shared = self._write_events(pipe, events)
        if shared:
            pipe.publish(
                self.keys.channel,
                json.dumps({"w": self.worker, "t": "ev", "b": shared}, separators=(",", ":")),
            )
        if counters:
            local = self.store.counters()
            deltas = {k: v - self._flushed.get(k, 0) for k, v in local.items()}
            for key, n in deltas.items():
                if n:
                    pipe.hincrby(self.keys.key("counters"), key, n)
            pipe.set(self.keys.key("worker", self.worker), self.leader and "leader" or "1", ex=10)
        if not events and not counters:
            return
        try:
            pipe.execute()
        except (redis.RedisError, OSError):
            for event in reversed(events):
                outbox.appendleft(event)  # written at the resync instead
            raise
        if counters:
            self._flushed = local

    def _write_events(self, pipe: Any, events: list[Any]) -> list[Any]:
        """Queue the Redis writes of ``events`` on ``pipe``; the ones to publish."""
        shared = []
        wall = time.time()
        for event in events:
            kind = event[0]
            if kind == "exit":
                pipe.pfadd(self.keys.key("exits"), event[1])
                continue
            shared.append(event)
            if kind == "brk":
                _, key, state, left, opened = event
                name = self.keys.key("brk", key)
                if state == "closed":
                    pipe.delete(name)
                else:
                    value = json.dumps([wall + left, opened])
                    pipe.set(name, value, px=max(1, int(left * 1000)))
            elif kind == "ban":
                _, host, ip, left = event
                pipe.set(self.keys.key("ban", f"{host}|{ip}"), "1", px=max(1, int(left * 1000)))
            elif kind == "rot":
                _, digest, window, rotations, explicit = event
                pipe.set(
                    self.keys.key("rot", digest),
                    json.dumps([window, rotations, explicit]),
                    ex=ROTATION_TTL,
                )
        return shared

    def _resync(self) -> str:
        """Write what this worker knows, read what the fleet knows (after a (re)connect)."""
        r = self._redis
        if not r.exists(self.keys.key("worker", self.worker)):
            self._flushed = {}  # Redis lost this worker's counters (or never had them)
        mine = self.store.state_events()
        pipe = r.pipeline(transaction=False)
        self._write_events(pipe, mine)
        core = self.core
        current = core.creds.current if core is not None else None
        if current is not None:
            pipe.set(self.keys.key("creds"), self._seal_current(current), nx=True)
        pipe.execute()
        found = 0
        wall = time.time()
        events: list[Any] = []
        for kind in ("brk", "ban", "rot"):
            names = list(itertools.islice(r.scan_iter(self.keys.key(kind, "*"), count=500), 10_000))
            if not names:
                continue
            values = r.mget(names)
            cut = len(self.keys.key(kind, ""))
            for name, value in zip(names, values):
                if value is None:
                    continue
                tail = text(name)[cut:]
                try:
                    data = json.loads(value)
                except ValueError:
                    continue
                if kind == "brk":
                    events.append(["brk", tail, "open", max(0.0, data[0] - wall), data[1]])
                elif kind == "ban":
                    host, _, ip = tail.rpartition("|")
                    pttl = r.pttl(name)
                    events.append(["ban", host, ip, max(0, pttl) / 1000.0])
                else:
                    events.append(["rot", tail, data[0], data[1], data[2]])
        if core is not None:
            with core.lock:
                found = sum(1 for e in events if self.store.apply(e))
        return f"{len(mine)} entries written, {found} read"

    def stats(self) -> dict[str, int]:
        """The fleet's counters (every worker's, added up), live workers, exits seen.

        Blocking (a few Redis calls): for reports, never on the request path.  Empty while
        Redis is away.
        """
        try:
            r = self._redis
            raw = r.hgetall(self.keys.key("counters"))
            out = {text(k): int(v) for k, v in raw.items()}
            out["workers"] = sum(1 for _ in r.scan_iter(self.keys.key("worker", "*"), count=500))
            out["exits_used"] = int(r.pfcount(self.keys.key("exits")))
            return out
        except (redis.RedisError, OSError):
            return {}


def masked_url(url: str) -> str:
    """The Redis URL with its password masked (safe to log)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "redis://?"
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:****@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
