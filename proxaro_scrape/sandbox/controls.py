"""Test and demo controls of the sandbox, outside the API: ``/_sandbox/<name>``.

Every control is ``POST /_sandbox/<name>`` with a JSON object body and answers a JSON object;
unknown fields, wrong types and values out of range answer 400 with
``{"error": {"type": "invalid_request", "code": "invalid_control", "message": ..., "param": ...}}``.
Fault scenarios are scripted with these, never random.

==================== ===================================================================
control              body (defaults) → answer
==================== ===================================================================
plan                 ``{"plan": "starter"}`` → ``{"plan", "asn_allowed", "rate_limit"}``
keys                 ``{"scope": "admin"}`` issues a key → ``{"api_key", "scope"}``;
                     ``{"api_key": K, "scope": S}`` changes K's scope;
                     ``{"api_key": K, "revoke": true}`` revokes K
country              ``{"code": "de", "pool_health": "down"|"healthy"}`` → the country object
asn                  ``{"asn": "AS7922", "pool_health": "healthy"|"degraded"|"down"}`` →
                     ``{"asn", "org", "exit_class", "pool_health", "country"}``
faults               ``{"statuses": [503, 500]}`` (appended to the queue: the next API
                     requests answer them in order; any status of the error table),
                     ``{"latency_ms": 200}``, ``{"clear": true}`` (applied first) →
                     ``{"statuses", "latency_ms"}``
grace                ``{"seconds": 2}``: rotation grace in world seconds; passwords already in
                     their grace are cut to at most that much from now → ``{"seconds"}``
clock                ``{"advance": 600}`` and/or ``{"speed": 60}`` → ``{"now", "timestamp",
                     "speed"}``
rotate               ``{}``: rotate the gateway password as the dashboard would (emits
                     ``credentials.rotated``) → ``{"object", "id", "rotated_at", "password",
                     "grace_seconds"}``
expire_credentials   ``{"in_seconds": 0}``: the credentials expire that many world seconds from
                     now (0: at once) → ``{"id", "expires_at"}``
usage                ``{"add_bytes": N}`` or ``{"to_percent": 80}``, with ``"exit_class"``
                     (residential) and ``"country"`` (us); fires usage thresholds →
                     ``{"period", "total_bytes", "cap_bytes"}``
sessions             ``{"add": N, "exit_class": None, "country": None, "spacing_seconds": 1}``
                     records N finished gateway sessions (also counted as usage) →
                     ``{"added", "total"}``
site                 ``{"budget", "ban_window", "ban_seconds", "slow_ms", "slow_paths"}`` →
                     all five
gateway              ``{"target_timeout", "exit_drop_rate", "degraded_failure_rate"}`` → all three
event                ``{"type": "order.paid", "data": {...}}``: emit an event; without ``data``
                     a plausible one is made (and an ``order.*`` really moves a pending order)
                     → the event payload
reset_counters       ``{}``; ``{"rate_limits": true}`` also empties every rate-limit window
==================== ===================================================================

Plus ``GET /_sandbox/log?kind=a,b`` → ``{"object": "list", "data": [{"at", "timestamp",
"kind", "detail"}]}`` and ``GET /_sandbox/counters`` → the counters as one flat JSON object.
``POST /_sandbox/server_cert`` (loopback names and callers only) issues a webhook receiver's
certificate from the sandbox CA: :mod:`proxaro_scrape.sandbox._tls`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import _objects as objects
from proxaro_scrape.sandbox.ratelimit import RateLimiter, burst_limit
from proxaro_scrape.sandbox.world import (
    HEALTH_VALUES,
    KEY_SCOPES,
    PLAN_IDS,
    RATE_LIMITS,
    AllowlistEntry,
    Order,
    World,
    iso,
)

JSON = dict[str, Any]

#: Statuses the fault queue accepts: the reference's error table.
FAULT_STATUSES = (400, 401, 403, 404, 409, 422, 429, 500, 503)

_MISSING: Any = object()


class ControlError(Exception):
    """Bad control input: answered 400 with the message."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Body:
    """A control's JSON body with typed, validated access; unknown fields are refused."""

    def __init__(self, data: Any, allowed: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ControlError("the body must be a JSON object")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ControlError(
                f"unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed) or 'none'}",
                unknown[0],
            )
        self.data: JSON = data

    def has(self, name: str) -> bool:
        """Is ``name`` given (and not null)?"""
        return self.data.get(name) is not None

    def string(
        self, name: str, default: Any = _MISSING, choices: tuple[str, ...] | None = None
    ) -> Any:
        """A string field, optionally one of ``choices``; ``default`` when absent."""
        value = self.data.get(name)
        if value is None:
            if default is _MISSING:
                raise ControlError(f"'{name}' is required", name)
            return default
        if not isinstance(value, str):
            raise ControlError(f"'{name}' must be a string", name)
        if choices is not None and value not in choices:
            raise ControlError(f"'{name}' must be one of {', '.join(choices)}", name)
        return value

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        lo: float | None = None,
        hi: float | None = None,
        integer: bool = False,
    ) -> Any:
        """A number (``integer`` for ints only) within ``lo..hi``; ``default`` when absent."""
        value = self.data.get(name)
        if value is None:
            if default is _MISSING:
                raise ControlError(f"'{name}' is required", name)
            return default
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ControlError(f"'{name}' must be {'an integer' if integer else 'a number'}", name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            raise ControlError(f"'{name}' must be {bounds}", name)
        return value

    def boolean(self, name: str) -> bool:
        """A true/false field, false when absent."""
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            raise ControlError(f"'{name}' must be true or false", name)
        return value

    def strings(self, name: str, default: Any = _MISSING) -> Any:
        """A list of strings; ``default`` when absent."""
        value = self.data.get(name)
        if value is None:
            if default is _MISSING:
                raise ControlError(f"'{name}' is required", name)
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ControlError(f"'{name}' must be a list of strings", name)
        return value


class Controls:
    """The ``/_sandbox/*`` handlers over one world (see the module docstring)."""

    def __init__(self, world: World, limiter: RateLimiter) -> None:
        self.world = world
        self.limiter = limiter
        self._controls: dict[str, tuple[tuple[str, ...], Callable[[Body], JSON]]] = {
            "plan": (("plan",), self.plan),
            "keys": (("scope", "api_key", "revoke"), self.keys),
            "country": (("code", "pool_health"), self.country),
            "asn": (("asn", "pool_health"), self.asn),
            "faults": (("statuses", "latency_ms", "clear"), self.faults),
            "grace": (("seconds",), self.grace),
            "clock": (("advance", "speed"), self.clock),
            "rotate": ((), self.rotate),
            "expire_credentials": (("in_seconds",), self.expire_credentials),
            "usage": (("add_bytes", "to_percent", "exit_class", "country"), self.usage),
            "sessions": (
                ("add", "exit_class", "country", "spacing_seconds", "bytes"),
                self.sessions,
            ),
            "site": (("budget", "ban_window", "ban_seconds", "slow_ms", "slow_paths"), self.site),
            "gateway": (
                ("target_timeout", "exit_drop_rate", "degraded_failure_rate"),
                self.gateway,
            ),
            "event": (("type", "data"), self.event),
            "reset_counters": (("rate_limits",), self.reset_counters),
        }

    def add_routes(self, app: web.Application) -> None:
        """Register every control on ``app``."""
        for name in self._controls:
            app.router.add_post(f"/_sandbox/{name}", self._handle)
        app.router.add_get("/_sandbox/log", self.get_log)
        app.router.add_get("/_sandbox/counters", self.get_counters)

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        allowed, fn = self._controls[name]
        try:
            raw = await request.read()
            try:
                data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            except (UnicodeDecodeError, ValueError):
                raise ControlError("the body is not valid JSON") from None
            body = Body(data, allowed)
            answer = fn(body)
        except ControlError as exc:
            return _json(
                {
                    "error": {
                        "type": "invalid_request",
                        "code": "invalid_control",
                        "message": f"/_sandbox/{name}: {exc}",
                        "param": exc.param,
                    }
                },
                400,
            )
        # The log never gets an API key (a secret), even a sandbox one.
        shown = {k: v for k, v in body.data.items() if k not in ("api_key", "data")}
        self.world.note("control", name=name, **shown)
        return _json(answer)

    # ------------------------------------------------------------------ account and keys

    def plan(self, body: Body) -> JSON:
        """``POST /_sandbox/plan`` (see the module docstring)."""
        plan = body.string("plan", choices=PLAN_IDS)
        self.world.set_plan(plan)
        per_minute, burst = RATE_LIMITS[plan]
        return {
            "plan": plan,
            "asn_allowed": self.world.asn_allowed(),
            "rate_limit": {"per_minute": per_minute, "burst_per_10s": burst_limit(burst)},
        }

    def keys(self, body: Body) -> JSON:
        """``POST /_sandbox/keys`` (see the module docstring)."""
        world = self.world
        if not body.has("api_key"):
            if body.boolean("revoke"):
                raise ControlError("'revoke' needs 'api_key'", "api_key")
            scope = body.string("scope", "admin", KEY_SCOPES)
            return {"api_key": world.issue_key(scope), "scope": scope}
        key = world.keys.get(body.string("api_key"))
        if key is None:
            raise ControlError("no such API key in this sandbox", "api_key")
        if body.boolean("revoke"):
            del world.keys[key.key]
            return {"api_key": key.key, "revoked": True}
        key.scope = body.string("scope", choices=KEY_SCOPES)
        return {"api_key": key.key, "scope": key.scope}

    # ------------------------------------------------------------------ pool

    def country(self, body: Body) -> JSON:
        """``POST /_sandbox/country`` (see the module docstring)."""
        code = body.string("code")
        if code not in self.world.countries:
            raise ControlError(f"no country {code!r} (codes are lower case)", "code")
        self.world.set_country_health(code, body.string("pool_health", choices=("healthy", "down")))
        return objects.country_object(self.world.countries[code])

    def asn(self, body: Body) -> JSON:
        """``POST /_sandbox/asn`` (see the module docstring)."""
        asn = body.string("asn")
        found = self.world.find_asn(asn)
        if found is None:
            raise ControlError(f"no ASN {asn!r} in the pool", "asn")
        self.world.set_asn_health(asn, body.string("pool_health", choices=HEALTH_VALUES))
        country, entry = found
        return {
            "asn": entry.asn,
            "org": entry.org,
            "exit_class": entry.exit_class,
            "pool_health": entry.pool_health,
            "country": country.code,
        }

    # ------------------------------------------------------------------ faults and time

    def faults(self, body: Body) -> JSON:
        """``POST /_sandbox/faults`` (see the module docstring)."""
        knobs = self.world.knobs
        statuses = body.data.get("statuses")
        if statuses is not None and (
            not isinstance(statuses, list)
            or not all(isinstance(s, int) and s in FAULT_STATUSES for s in statuses)
        ):
            raise ControlError(
                f"'statuses' must be a list of {', '.join(map(str, FAULT_STATUSES))}", "statuses"
            )
        latency = body.number("latency_ms", None, lo=0, hi=60_000, integer=True)
        if body.boolean("clear"):
            knobs.api_fault_queue.clear()
            knobs.api_latency_ms = 0
        if statuses:
            knobs.api_fault_queue.extend(statuses)
        if latency is not None:
            knobs.api_latency_ms = latency
        return {"statuses": list(knobs.api_fault_queue), "latency_ms": knobs.api_latency_ms}

    def grace(self, body: Body) -> JSON:
        """``POST /_sandbox/grace`` (see the module docstring)."""
        seconds = float(body.number("seconds", lo=0))
        world = self.world
        world.grace_seconds = seconds
        now = world.clock.now()
        cred = world.credentials
        cred.previous = [(p, min(until, now + seconds)) for p, until in cred.previous]
        return {"seconds": seconds}

    def clock(self, body: Body) -> JSON:
        """``POST /_sandbox/clock`` (see the module docstring)."""
        if not body.has("advance") and not body.has("speed"):
            raise ControlError("give 'advance' (seconds) and/or 'speed'", "advance")
        clock = self.world.clock
        speed = body.number("speed", None)
        if speed is not None:
            if speed <= 0:
                raise ControlError("'speed' must be positive", "speed")
            clock.speed = float(speed)
        advance = body.number("advance", None, lo=0)
        if advance:
            clock.advance(float(advance))
        now = clock.now()
        return {"now": iso(now), "timestamp": now, "speed": clock.speed}

    # ------------------------------------------------------------------ credentials

    def rotate(self, body: Body) -> JSON:
        """``POST /_sandbox/rotate`` (see the module docstring)."""
        self.world.rotate_credentials()
        return {
            **objects.rotated_credentials_object(self.world),
            "grace_seconds": self.world.grace_seconds,
        }

    def expire_credentials(self, body: Body) -> JSON:
        """``POST /_sandbox/expire_credentials`` (see the module docstring)."""
        in_seconds = float(body.number("in_seconds", 0, lo=0))
        cred = self.world.credentials
        cred.expires_at = self.world.clock.now() + in_seconds
        self.world.note("credentials_expire", id=cred.id, expires_at=iso(cred.expires_at))
        return {"id": cred.id, "expires_at": iso(cred.expires_at)}

    # ------------------------------------------------------------------ usage and sessions

    def _usage_numbers(self) -> JSON:
        world = self.world
        return {
            "period": world.period_key(),
            "total_bytes": world.used_bytes(),
            "cap_bytes": world.cap_bytes(),
        }

    def usage(self, body: Body) -> JSON:
        """``POST /_sandbox/usage`` (see the module docstring)."""
        world = self.world
        exit_class = body.string("exit_class", "residential", protocol.EXIT_CLASSES)
        country = body.string("country", "us")
        if country not in world.countries:
            raise ControlError(f"no country {country!r}", "country")
        if body.has("add_bytes") == body.has("to_percent"):
            raise ControlError("give exactly one of 'add_bytes' and 'to_percent'", "add_bytes")
        if body.has("add_bytes"):
            nbytes = int(body.number("add_bytes", lo=0, integer=True))
        else:
            percent = float(body.number("to_percent", lo=0, hi=1000))
            cap = world.cap_bytes()
            if cap is None:
                raise ControlError("this plan has no cap to reach a percentage of", "to_percent")
            nbytes = max(0, int(-(-cap * percent // 100)) - world.used_bytes())
        world.add_usage(exit_class, country, nbytes)
        return self._usage_numbers()

    def sessions(self, body: Body) -> JSON:
        """``POST /_sandbox/sessions`` (see the module docstring)."""
        world = self.world
        count = int(body.number("add", lo=1, hi=5000, integer=True))
        exit_class = body.string("exit_class", None, protocol.EXIT_CLASSES)
        country = body.string("country", None)
        spacing = float(body.number("spacing_seconds", 1.0, lo=0))
        nbytes = int(body.number("bytes", 20_000, lo=0, integer=True))
        exits = world.live_exits(country=country, exit_class=exit_class)
        if not exits:
            raise ControlError("no live exit matches that country and exit class", "country")
        now = world.clock.now()
        for i in range(count):
            ex = exits[i % len(exits)]
            ended = now - (count - 1 - i) * spacing
            sent = nbytes // 20
            world.record_session(ex, ended - 5.0, ended, sent, nbytes - sent)
        return {"added": count, "total": len(world.sessions)}

    # ------------------------------------------------------------------ site and gateway knobs

    def site(self, body: Body) -> JSON:
        """``POST /_sandbox/site`` (see the module docstring)."""
        knobs = self.world.knobs
        knobs.site_budget = int(body.number("budget", knobs.site_budget, lo=0, integer=True))
        knobs.site_ban_window = float(body.number("ban_window", knobs.site_ban_window, lo=0.001))
        knobs.site_ban_seconds = float(body.number("ban_seconds", knobs.site_ban_seconds, lo=0))
        knobs.site_slow_ms = int(body.number("slow_ms", knobs.site_slow_ms, lo=0, integer=True))
        knobs.site_slow_paths = list(body.strings("slow_paths", knobs.site_slow_paths))
        return {
            "budget": knobs.site_budget,
            "ban_window": knobs.site_ban_window,
            "ban_seconds": knobs.site_ban_seconds,
            "slow_ms": knobs.site_slow_ms,
            "slow_paths": list(knobs.site_slow_paths),
        }

    def gateway(self, body: Body) -> JSON:
        """``POST /_sandbox/gateway`` (see the module docstring)."""
        world = self.world
        knobs = world.knobs
        knobs.target_timeout = float(body.number("target_timeout", knobs.target_timeout, lo=0.001))
        knobs.exit_drop_rate = float(body.number("exit_drop_rate", knobs.exit_drop_rate, 0, 1))
        world.degraded_failure_rate = float(
            body.number("degraded_failure_rate", world.degraded_failure_rate, 0, 1)
        )
        return {
            "target_timeout": knobs.target_timeout,
            "exit_drop_rate": knobs.exit_drop_rate,
            "degraded_failure_rate": world.degraded_failure_rate,
        }

    # ------------------------------------------------------------------ events and counters

    def event(self, body: Body) -> JSON:
        """``POST /_sandbox/event`` (see the module docstring)."""
        type_ = body.string("type", choices=protocol.WEBHOOK_EVENTS)
        data = body.data.get("data")
        if data is not None and not isinstance(data, dict):
            raise ControlError("'data' must be a JSON object", "data")
        if data is None:
            data = self._plausible_data(type_)
        return self.world.emit(type_, data).payload()

    def _plausible_data(self, type_: str) -> JSON:
        world = self.world
        now = world.clock.now()
        if type_ in ("order.paid", "order.expired"):
            return objects.order_object(self._move_order(type_.split(".", 1)[1], now))
        if type_ == "credentials.rotated":
            cred = world.credentials
            return {
                "object": "credentials",
                "id": cred.id,
                "rotated_at": iso(cred.rotated_at if cred.rotated_at is not None else now),
            }
        if type_.startswith("usage.threshold."):
            pct = int(type_.rsplit(".", 1)[1])
            cap = world.cap_bytes() or 25 * 1024**3
            return {
                "object": "usage",
                "period": world.period_key(),
                "total_bytes": max(world.used_bytes(), cap * pct // 100),
                "cap_bytes": cap,
                "threshold": pct,
            }
        # allowlist.updated: the newest entry of the account, or a documentation address.
        mine = [e for e in world.allowlist if e.account_id == world.account.id]
        entry = (
            mine[-1]
            if mine
            else AllowlistEntry(
                world.new_id("al"), "198.51.100.42/32", "primary crawler", now, world.account.id
            )
        )
        return {**objects.allowlist_entry_object(entry), "action": "added"}

    def _move_order(self, status: str, now: float) -> Order:
        """Move the account's newest pending order to ``status`` (or make a new order)."""
        world = self.world
        pending = [
            o for o in world.orders if o.account_id == world.account.id and o.status == "pending"
        ]
        if pending:
            order = pending[0]
        else:
            order = Order(
                world.new_id("ord"),
                world.account.plan_id,
                {"starter": 29.0, "growth": 99.0, "scale": 299.0}.get(world.account.plan_id, 0.0),
                "pending",
                "card",
                now,
                None,
                world.account.id,
            )
            world.orders.insert(0, order)
        order.status = status
        order.paid_at = now if status == "paid" else None
        return order

    def reset_counters(self, body: Body) -> JSON:
        """``POST /_sandbox/reset_counters`` (see the module docstring)."""
        self.world.counters.clear()
        rate_limits = body.boolean("rate_limits")
        if rate_limits:
            self.limiter.reset()
        return {"counters": {}, "rate_limits_reset": rate_limits}

    async def get_log(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/log?kind=a,b``: the sandbox log, oldest first."""
        kinds = request.query.get("kind")
        wanted = [k for k in kinds.split(",") if k] if kinds else None
        data = [
            {"at": iso(h.at), "timestamp": h.at, "kind": h.kind, "detail": h.detail}
            for h in self.world.happenings(wanted)
        ]
        return _json({"object": "list", "data": data})

    async def get_counters(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/counters``: ``world.counters`` as one flat object."""
        return _json(dict(self.world.counters))


def _json(payload: Any, status: int = 200) -> web.Response:
    # default=str: log details may hold values other modules put there (never secrets).
    return web.Response(
        text=json.dumps(payload, default=str),
        status=status,
        content_type="application/json",
    )
