"""One for all: the fleet's answers to the jobs' API calls (:mod:`~proxaro_scrape.fleet._client`).

Credentials: single-flight across the fleet.  A worker that needs them reads the sealed copy in
Redis; when that will not do (older than the poll interval, about to expire, or the very
credentials a 407 condemned, unless a fetch made since the 407 brought them again: fetches are
numbered) it takes ``lock:creds`` and fetches, and the others wait for its announcement instead
of calling too.  A 407 storm on any number of workers costs one call (two
if the lock's holder dies).

Pool view and usage: the holder of the ``lease`` polls; the others read its answers (and are
told on the channel when they change).  ASN listings are shared per country.  Every call that
does reach the API first takes a token from the account's bucket, so a fleet starting together
stays under the plan's rate limit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis

from proxaro_scrape.api import Asn, Country, Credentials, Usage

if TYPE_CHECKING:
    from proxaro_scrape.fleet._keys import Keyspace
    from proxaro_scrape.fleet._state import FleetStore
    from proxaro_scrape.gateway._core import RoutingCore
    from proxaro_scrape.gateway._jobs import Call

__all__ = ["OneForAll", "Plan", "same_credentials", "text"]

logger = logging.getLogger("proxaro_scrape.fleet")

LOCK_TTL_MS = 10_000
LEASE_TTL_MS = 5_000
#: How long a worker waits for another's fetch before calling the API itself (seconds).
WAIT_FOR_OTHERS = 15.0
#: Credentials fetched this recently are not fetched again, even by a 407 (seconds).
RECENT = 0.25

# A token bucket on Redis's clock: 0 (go) or the milliseconds to wait.
_BUCKET = """
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('time')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('hmget', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]) or cap, tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('hset', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('pexpire', KEYS[1], 120000)
return wait
"""


@dataclass
class Plan:
    """What :meth:`Fleet.before` decided for one call: an answer (``cached``) or a fetch,
    possibly holding the ``lock`` key (released by :meth:`Fleet.after` / :meth:`Fleet.failed`)."""

    cached: bool
    value: Any = None
    lock: str | None = None


class OneForAll:
    """The API side of :class:`~proxaro_scrape.fleet._fleet.Fleet` (its base class)."""

    keys: Keyspace
    store: FleetStore
    worker: str
    api_rate: float
    up: bool
    leader: bool
    core: RoutingCore | None
    _redis: Any
    _release: Any
    _bucket: Any
    _creds_interval: float
    _pool_ttl: float
    _stop: Any

    def _went_down(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _publish(self, kind: str, body: Any = None) -> None:
        raise NotImplementedError

    def before(self, call: Call) -> Plan:
        """Decide for one API call of a job: answer it from Redis, wait for another worker's
        fetch, or fetch (see :mod:`~proxaro_scrape.fleet._client`).  Never raises."""
        if not self.up:
            return Plan(False)
        try:
            if call.resource == "credentials":
                plan = self._before_credentials(call.stale)
            elif call.resource == "countries" and call.method == "list":
                plan = self._before_leader("pool", None, Country)
            elif call.resource == "countries" and call.method == "asns":
                plan = self._before_asns(str(call.args[0]))
            elif call.resource == "usage":
                plan = self._before_leader("usage", None, Usage)
            else:
                plan = Plan(False)
            if not plan.cached:
                self._take_token()
            return plan
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return Plan(False)

    def after(self, call: Call, plan: Plan, answer: Any) -> None:
        """A fetch answered: write it for the others, announce it, release the lock."""
        self.store.incr(f"fleet/api_calls/{call.resource}")
        if not self.up:
            return
        try:
            r, wall = self._redis, time.time()
            if call.resource == "credentials":
                # Numbered: a worker that asked before this fetch knows it for an answer made
                # after its own question (see _before_credentials), whatever the clocks say.
                seq = int(r.incr(self.keys.key("creds", "seq")))
                blob = self.keys.seal({"c": answer.to_dict(), "at": wall, "seq": seq})
                r.set(self.keys.key("creds"), blob)
                self._publish("creds")
            elif call.resource == "countries" and call.method == "list":
                self._put_json("pool", None, [c.to_dict() for c in answer], wall)
                self._publish("pool")
            elif call.resource == "countries" and call.method == "asns":
                code = str(call.args[0])
                self._put_json("asns", code, [a.to_dict() for a in answer], wall)
                self._publish("asns", code)
            elif call.resource == "usage":
                self._put_json("usage", None, answer.to_dict(), wall)
                self._publish("usage")
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
        except (TypeError, ValueError, AttributeError) as exc:
            logger.warning("could not share the answer of %s: %s", call, exc)
        finally:
            self.failed(plan)

    def failed(self, plan: Plan) -> None:
        """Release the lock a fetch held (its call failed, or it is done)."""
        if plan.lock is None or not self.up:
            return
        try:
            self._release(keys=[plan.lock], args=[self.worker])
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)

    def _before_credentials(self, stale: int | None) -> Plan:
        core = self.core
        stale_creds = core.creds.get(stale) if core is not None and stale is not None else None
        lock = self.keys.key("lock", "creds")
        deadline = time.monotonic() + WAIT_FOR_OTHERS
        # The fetch the fleet had made when this question was asked: one made after it is an
        # answer to it (asked since the 407, however recent the one before).
        asked = _seq(self._read_credentials())
        while True:
            blob = self._read_credentials()
            if blob is not None and self._credentials_will_do(blob, stale, stale_creds, asked):
                return Plan(True, Credentials.from_dict(blob["c"]))
            if self._redis.set(lock, self.worker, nx=True, px=LOCK_TTL_MS):
                blob = self._read_credentials()  # fetched while we asked for the lock?
                if blob is not None and self._credentials_will_do(blob, stale, stale_creds, asked):
                    self._release(keys=[lock], args=[self.worker])
                    return Plan(True, Credentials.from_dict(blob["c"]))
                return Plan(False, lock=lock)
            if time.monotonic() > deadline or self._stop.is_set():
                return Plan(False)  # the holder is stuck: its lock expires, we fetch
            time.sleep(0.02)

    def _credentials_will_do(
        self, blob: Mapping[str, Any], stale: int | None, old: Any, asked: int = 0
    ) -> bool:
        if stale is not None:
            # A 407 condemned ``old``: anything else is newer; and the very same credentials
            # will do only as the API's answer to a fetch made since this question was asked
            # (a storm of 407s costs one call).  However recent, one made before may predate
            # the rotation the 407 is about.
            if old is None or not same_credentials(blob["c"], old):
                return True
            return _seq(blob) > asked
        age = time.time() - float(blob.get("at", 0))
        if age < RECENT:
            return True  # fetched a moment ago: asking the API again cannot tell more
        expires = blob["c"].get("expires_at")
        if isinstance(expires, str):
            try:
                when = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
                if when - time.time() < 60.0:
                    return False  # about to expire: the poll is for the next ones
            except ValueError:
                pass
        return age < self._creds_interval

    def _before_leader(self, name: str, code: str | None, model: Any) -> Plan:
        """Pool view and usage: the lease holder fetches, the others read its answer."""
        lease = self.keys.key("lease")
        deadline = time.monotonic() + WAIT_FOR_OTHERS
        while True:
            holder = self._redis.get(lease)
            if holder is not None and text(holder) == self.worker:
                self.leader = True
                return Plan(False)
            if holder is None and self._redis.set(lease, self.worker, nx=True, px=LEASE_TTL_MS):
                self.leader = True
                logger.info("this worker now polls the pool view and usage for the fleet")
                return Plan(False)
            data = self._get_json(name, code)
            if data is not None:
                value = data["v"]
                if isinstance(value, list):
                    return Plan(True, [model.from_dict(v) for v in value])
                return Plan(True, model.from_dict(value))
            if time.monotonic() > deadline or self._stop.is_set():
                return Plan(False)
            time.sleep(0.02)

    def _before_asns(self, code: str) -> Plan:
        data = self._get_json("asns", code)
        if data is not None and time.time() - float(data.get("at", 0)) < self._pool_ttl:
            return Plan(True, [Asn.from_dict(a) for a in data["v"]])
        return Plan(False)

    def _take_token(self) -> None:
        """One token of the account's API budget, shared by the fleet (waits if none)."""
        rate = self.api_rate / 60.0
        deadline = time.monotonic() + 30.0
        while True:
            wait_ms = int(
                self._bucket(keys=[self.keys.key("bucket")], args=[rate, self.api_rate / 2])
            )
            if wait_ms <= 0 or time.monotonic() > deadline:
                return
            self.store.incr("fleet/api_waits")
            time.sleep(min(wait_ms / 1000.0, 1.0))

    # ================================================================== reads

    def _read_credentials(self) -> dict[str, Any] | None:
        blob = self.keys.open(self._redis.get(self.keys.key("creds")))
        if blob is None or not isinstance(blob.get("c"), dict):
            return None
        return blob

    def _seal_current(self, creds: Any) -> bytes:
        data = {
            "gateway": creds.gateway,
            "port": creds.port,
            "username": creds.username,
            "password": creds.password,
            "expires_at": creds.expires_at,
            "id": creds.id,
        }
        return self.keys.seal({"c": data, "at": 0.0})

    def _put_json(self, name: str, code: str | None, value: Any, wall: float) -> None:
        key = self.keys.key(name, code) if code else self.keys.key(name)
        self._redis.set(key, json.dumps({"v": value, "at": wall}, default=str))

    def _get_json(self, name: str, code: str | None = None) -> dict[str, Any] | None:
        key = self.keys.key(name, code) if code else self.keys.key(name)
        raw = self._redis.get(key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) and "v" in data else None


def _seq(blob: Mapping[str, Any] | None) -> int:
    """The number of the fetch a stored credentials blob came from (0: none, or unnumbered)."""
    try:
        return int(blob.get("seq", 0)) if blob is not None else 0
    except (TypeError, ValueError):
        return 0


def same_credentials(data: Mapping[str, Any], creds: Any) -> bool:
    """Do the stored credentials ``data`` match the held ``creds`` (gateway, user, password)?"""
    return (
        data.get("gateway") == creds.gateway
        and int(data.get("port") or 0) == creds.port
        and data.get("username") == creds.username
        and data.get("password") == creds.password.reveal()
    )


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value
