"""The sandbox's Proxaro v1 API emulator (an :mod:`aiohttp.web` application).

:func:`build_api_app` serves every endpoint of ``proxaro-api-reference.txt`` over one
:class:`~proxaro_scrape.sandbox.world.World`, plus the test controls under ``/_sandbox/``
(:mod:`proxaro_scrape.sandbox.controls`).

What every ``/v1`` request goes through, in order:

1. counted: ``api.requests`` and ``api.requests:<METHOD> <route pattern>`` in
   ``world.counters`` (for example ``api.requests:GET /v1/countries/{code}/asns``);
2. the injected latency (``world.knobs.api_latency_ms``), then the injected fault queue
   (``world.knobs.api_fault_queue``: the next requests answer those statuses, in order);
3. the rate limit of the key (or, without a usable key, of the source address), see
   :mod:`proxaro_scrape.sandbox.ratelimit` for how the burst column is read;
4. ``X-API-Version`` (one of :data:`proxaro_scrape.protocol.API_VERSIONS`, else 400);
5. the route (404 ``unknown_endpoint``, 405 ``method_not_allowed`` with ``Allow``);
6. authentication (``Authorization: Bearer proxaro_test_<32 hex>``; ``/v1/plans`` and
   ``/v1/status`` need none) and the key's scope (``read_only`` keys may not write);
7. the query parameters and JSON body: an unknown parameter, a repeated one, a missing required
   field or a value out of range answers 400 ``invalid_request`` naming ``param``.

Every answer carries ``X-Request-Id`` (the envelope's ``request_id``, ``req_`` + 26 characters,
unique), ``X-API-Version`` (the one asked for, else the pinned current one) and the
``X-RateLimit-*`` headers.  Every error is the reference's envelope::

    {"error": {"type": ..., "code": ..., "message": ..., "param": ..., "request_id": "req_..."}}

Differences from a literal reading of the reference, on purpose:

* ``POST /v1/credentials/rotate`` and ``DELETE /v1/allowlist/{id}`` need their method; the
  reference's curl examples for them omit ``-X`` (so they send ``GET``), and get
  405 ``method_not_allowed`` with an ``Allow`` header naming the right method.
* Creations answer 200 (the reference shows no status; 200 is what its Stripe-like style uses).
* The webhook object carries ``label`` (``null`` when unset); attempts are paginated like orders.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import _objects as objects
from proxaro_scrape.sandbox.ratelimit import Decision, RateLimiter
from proxaro_scrape.sandbox.world import (
    PLANS,
    RATE_LIMITS,
    AllowlistEntry,
    ApiKey,
    WebhookEndpoint,
    World,
    iso,
)

log = logging.getLogger(__name__)

JSON = dict[str, Any]

#: Error ``type`` per HTTP status (the reference's error table; 405 is the sandbox's own).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request",
    401: "authentication_required",
    403: "forbidden",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    422: "unprocessable_entity",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}

ORDER_STATUSES = ("paid", "pending", "cancelled", "expired")
USAGE_GROUPS = ("class", "country")
MAX_LABEL = 80
#: Shortest prefix accepted on the allowlist ("Max prefix: /24 for IPv4, /48 for IPv6").
MIN_PREFIX = {4: 24, 6: 48}
#: Requests without a usable key are limited per source address with these figures.
ANONYMOUS_PLAN = "growth"

_KEY_RE = re.compile(r"proxaro_(test|live)_[0-9a-f]{32}")
_PERIOD_RE = re.compile(r"([0-9]{4})-([0-9]{2})")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class APIFailure(Exception):
    """An error answer: raised anywhere in a handler, rendered as the reference's envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = ERROR_TYPES[status]
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def new_request_id() -> str:
    """``req_`` + a ULID: 10 characters of milliseconds, 16 random ones (unique, sortable)."""
    ms = int(time.time() * 1000)
    head = ""
    for _ in range(10):
        head = _CROCKFORD[ms % 32] + head
        ms //= 32
    return "req_" + head + "".join(secrets.choice(_CROCKFORD) for _ in range(16))


def envelope(
    status: int, code: str, message: str, param: str | None, request_id: str | None
) -> JSON:
    """The error envelope of the reference."""
    return {
        "error": {
            "type": ERROR_TYPES[status],
            "code": code,
            "message": message,
            "param": param,
            "request_id": request_id,
        }
    }


def json_response(payload: Any, status: int = 200) -> web.Response:
    """A compact JSON answer with ``Content-Type: application/json``."""
    return web.Response(
        text=json.dumps(payload, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


# ---------------------------------------------------------------------------- cursors


def encode_cursor(kind: str, sort_ts: float, item_id: str) -> str:
    """An opaque cursor: the list it belongs to and the sort key of the last item returned.

    Cursors point *after an item*, not at an offset, so items added at the head of a list
    while a client walks it neither repeat nor shift a page.
    """
    raw = json.dumps([kind, sort_ts, item_id], separators=(",", ":")).encode()
    return "c_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> tuple[float, str]:
    """The sort key a cursor of list ``kind`` points after; 400 naming ``cursor`` if not ours."""
    bad = APIFailure(
        400,
        "invalid_cursor",
        "The 'cursor' parameter must be a 'next_cursor' value returned by this list.",
        param="cursor",
    )
    if not cursor.startswith("c_"):
        raise bad
    body = cursor[2:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        got_kind, sort_ts, item_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    if got_kind != kind or not isinstance(sort_ts, (int, float)) or not isinstance(item_id, str):
        raise bad
    return float(sort_ts), item_id


def paginate(
    kind: str,
    items: list[Any],
    sort_key: Callable[[Any], tuple[float, str]],
    render: Callable[[Any], JSON],
    limit: int,
    cursor: str | None,
) -> JSON:
    """A page of ``items`` newest first by ``sort_key`` (timestamp, id), after ``cursor``."""
    ordered = sorted(items, key=sort_key, reverse=True)
    if cursor is not None:
        after = decode_cursor(kind, cursor)
        ordered = [it for it in ordered if sort_key(it) < after]
    page = ordered[:limit]
    has_more = len(ordered) > limit
    return {
        "object": "list",
        "data": [render(it) for it in page],
        "has_more": has_more,
        "next_cursor": encode_cursor(kind, *sort_key(page[-1])) if has_more else None,
    }


# ---------------------------------------------------------------------------- requests


@dataclass
class Call:
    """One authenticated, validated API call, as a handler sees it."""

    request: web.Request
    key: ApiKey | None
    query: dict[str, str]
    body: JSON = field(default_factory=dict)

    def match(self, name: str) -> str:
        """A path parameter (``{code}``, ``{id}``)."""
        return self.request.match_info[name]

    def int_param(self, name: str, default: int, lo: int, hi: int) -> int:
        """An integer query parameter within ``lo..hi``, else 400 naming it."""
        raw = self.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise APIFailure(
                400,
                "invalid_parameter",
                f"The '{name}' parameter must be an integer from {lo} to {hi}; got {raw!r}.",
                param=name,
            )
        return int(raw)

    def choice_param(self, name: str, choices: tuple[str, ...]) -> str | None:
        """A query parameter that must be one of ``choices`` (None when absent)."""
        raw = self.query.get(name)
        if raw is not None and raw not in choices:
            raise APIFailure(
                400,
                "invalid_parameter",
                f"The '{name}' parameter must be one of {', '.join(choices)}; got {raw!r}.",
                param=name,
            )
        return raw


Handler = Callable[["ApiEmulator", Call], Awaitable[JSON]]


@dataclass(frozen=True)
class Endpoint:
    """A v1 route: who may call it and which parameters it takes."""

    method: str
    path: str
    handler: Handler
    public: bool = False  # no API key needed
    write: bool = False  # refused to read_only keys
    query: frozenset[str] = frozenset()
    body: frozenset[str] = frozenset()


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    *,
    public: bool = False,
    write: bool = False,
    query: tuple[str, ...] = (),
    body: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    """Register a handler of :class:`ApiEmulator` as a v1 endpoint."""

    def register(fn: Handler) -> Handler:
        ENDPOINTS.append(
            Endpoint(method, path, fn, public, write, frozenset(query), frozenset(body))
        )
        return fn

    return register


def _month_bounds(year: int, month: int) -> tuple[float, float]:
    """First and last second of a calendar month, UTC."""
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    nxt = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
    return start.timestamp(), nxt.timestamp() - 1


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


# ---------------------------------------------------------------------------- the emulator


class ApiEmulator:
    """The v1 endpoints over one world.  Built and wired by :func:`build_api_app`."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.limiter = RateLimiter(world.clock)
        self._routes: dict[tuple[str, str], Endpoint] = {}

    def add_routes(self, app: web.Application) -> None:
        """Register every v1 route on ``app`` (the middleware answers them)."""
        for ep in ENDPOINTS:
            self._routes[(ep.method, ep.path)] = ep
            if ep.method == "GET":
                app.router.add_get(ep.path, self._unreachable)  # and HEAD
            else:
                app.router.add_route(ep.method, ep.path, self._unreachable)

    async def _unreachable(self, request: web.Request) -> web.StreamResponse:
        # The middleware answers every API route itself; aiohttp needs a handler per route.
        raise AssertionError("the API middleware handles every route")

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Route ``/_sandbox/*`` to the controls, everything else through the API pipeline."""
        if request.path.startswith("/_sandbox/"):
            try:
                return await handler(request)
            except web.HTTPException as exc:
                return json_response(
                    {
                        "error": {
                            "type": "invalid_request",
                            "code": "unknown_control",
                            "message": f"{request.method} {request.path}: {exc.reason}",
                            "param": None,
                        }
                    },
                    exc.status,
                )
        return await self._serve(request)

    def _endpoint(self, request: web.Request) -> Endpoint | None:
        resource = request.match_info.route.resource
        if resource is None or request.match_info.http_exception is not None:
            return None
        method = "GET" if request.method == "HEAD" else request.method
        return self._routes.get((method, resource.canonical))

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        world = self.world
        request_id = new_request_id()
        ep = self._endpoint(request)
        route = ep.path if ep is not None else request.path
        if request.path.startswith("/v1"):
            world.counters["api.requests"] += 1
            world.counters[f"api.requests:{request.method} {route}"] += 1
        version = request.headers.get("X-API-Version")
        bucket, key = self._identify(request)
        per_minute, burst = RATE_LIMITS[ANONYMOUS_PLAN if key is None else world.account.plan_id]
        decision: Decision | None = None
        extra: dict[str, str] = {}
        try:
            if world.knobs.api_latency_ms > 0:
                await asyncio.sleep(world.knobs.api_latency_ms / 1000)
            if world.knobs.api_fault_queue:
                status = world.knobs.api_fault_queue.popleft()
                raise self._fault(status)
            decision = self.limiter.hit(bucket, per_minute=per_minute, burst_per_minute=burst)
            if not decision.allowed:
                # Retry-After is a real-time wait: with a sped-up clock it is shorter.
                retry = max(1, math.ceil(world.clock.real_seconds(decision.retry_after)))
                raise APIFailure(
                    429,
                    "rate_limited",
                    f"Rate limit reached: {per_minute} requests a minute and "
                    f"{decision.burst_limit} in any 10 seconds per key. Retry after {retry} s.",
                    headers={"Retry-After": str(retry)},
                )
            if version is not None and version not in protocol.API_VERSIONS:
                raise APIFailure(
                    400,
                    "invalid_api_version",
                    f"Unknown API version {version!r}; this API knows "
                    f"{', '.join(protocol.API_VERSIONS)}.",
                    param="X-API-Version",
                )
            if ep is None:
                raise self._no_route(request)
            if not ep.public and key is None:
                raise self._auth_failure(request)
            if ep.write and key is not None and key.scope == "read_only":
                raise APIFailure(
                    403,
                    "insufficient_scope",
                    f"This API key is read_only; {ep.method} {ep.path} needs a read_write or "
                    "admin key.",
                )
            call = Call(request, key, self._query(request, ep))
            if ep.method == "POST":
                call.body = await self._body(request, ep)
            payload = await ep.handler(self, call)
            response = json_response(payload)
        except APIFailure as failure:
            response = json_response(
                envelope(failure.status, failure.code, failure.message, failure.param, request_id),
                failure.status,
            )
            extra = failure.headers
        except Exception:
            log.exception("sandbox API: %s %s failed", request.method, request.path)
            response = json_response(
                envelope(
                    500,
                    "internal_error",
                    "Something broke in the sandbox API (see its log).",
                    None,
                    request_id,
                ),
                500,
            )
        if decision is None:
            decision = self.limiter.peek(bucket, per_minute=per_minute, burst_per_minute=burst)
        response.headers.update(decision.headers())
        response.headers.update(extra)
        response.headers["X-Request-Id"] = request_id
        response.headers["X-API-Version"] = (
            version
            if version is not None and version in protocol.API_VERSIONS
            else protocol.DEFAULT_API_VERSION
        )
        world.note(
            "api",
            method=request.method,
            route=route,
            status=response.status,
            request_id=request_id,
        )
        return response

    def _identify(self, request: web.Request) -> tuple[str, ApiKey | None]:
        """The rate-limit bucket and the API key of a request (None without a usable key)."""
        token = _bearer(request.headers.get("Authorization"))
        key = self.world.keys.get(token) if token is not None else None
        if key is not None and key.account_id == self.world.account.id:
            return "key:" + key.key, key
        return f"addr:{request.remote}", None

    def _auth_failure(self, request: web.Request) -> APIFailure:
        header = request.headers.get("Authorization")
        if header is None or not header.strip():
            return APIFailure(
                401,
                "missing_api_key",
                "No API key provided: send 'Authorization: Bearer proxaro_test_...'.",
            )
        token = _bearer(header)
        if token is None or not _KEY_RE.fullmatch(token):
            return APIFailure(
                401,
                "malformed_api_key",
                "The Authorization header must be 'Bearer proxaro_test_' followed by 32 "
                "lower-case hex digits.",
            )
        if token.startswith("proxaro_live_"):
            return APIFailure(
                401,
                "live_key_not_accepted",
                "This is the Proxaro sandbox: it takes test keys only (proxaro_test_...), "
                "not live keys (proxaro_live_...), which work against https://api.proxaro.io.",
            )
        return APIFailure(
            401, "invalid_api_key", "This API key is not known to the sandbox (or was revoked)."
        )

    def _no_route(self, request: web.Request) -> APIFailure:
        exc = request.match_info.http_exception
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(m for m in exc.allowed_methods if m != "HEAD"))
            return APIFailure(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; use {allowed}.",
                headers={"Allow": allowed},
            )
        return APIFailure(
            404, "unknown_endpoint", f"No endpoint {request.method} {request.path} in API v1."
        )

    def _fault(self, status: int) -> APIFailure:
        codes = {
            429: ("rate_limited", "Too many requests (injected by the sandbox)."),
            500: ("internal_error", "Something broke on our side (injected by the sandbox)."),
            503: (
                "service_unavailable",
                "A downstream edge is offline (injected by the sandbox).",
            ),
        }
        code, message = codes.get(status, ("injected_fault", "Fault injected by the sandbox."))
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        return APIFailure(status, code, message, headers=headers)

    def _query(self, request: web.Request, ep: Endpoint) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in request.query.items():
            if name not in ep.query:
                known = ", ".join(sorted(ep.query)) or "none"
                raise APIFailure(
                    400,
                    "unknown_parameter",
                    f"Unknown parameter '{name}' for {ep.method} {ep.path} (known: {known}).",
                    param=name,
                )
            if name in out:
                raise APIFailure(
                    400,
                    "invalid_parameter",
                    f"The '{name}' parameter is given more than once.",
                    param=name,
                )
            out[name] = value
        return out

    async def _body(self, request: web.Request, ep: Endpoint) -> JSON:
        raw = await request.read()
        if not raw.strip():
            body: Any = {}
        else:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise APIFailure(
                    400, "invalid_json", "The request body is not valid JSON."
                ) from None
        if not isinstance(body, dict):
            raise APIFailure(400, "invalid_body", "The request body must be a JSON object.")
        for name in body:
            if name not in ep.body:
                known = ", ".join(sorted(ep.body)) or "none"
                raise APIFailure(
                    400,
                    "unknown_parameter",
                    f"Unknown field '{name}' for {ep.method} {ep.path} (known: {known}).",
                    param=name,
                )
        return body

    # ------------------------------------------------------------------ account

    @endpoint("GET", "/v1/me")
    async def me(self, call: Call) -> JSON:
        """``GET /v1/me``."""
        now = datetime.fromtimestamp(self.world.clock.now(), tz=timezone.utc)
        _, period_end = _month_bounds(now.year, now.month)
        return objects.account_object(self.world, period_end)

    @endpoint("GET", "/v1/usage", query=("period", "group_by"))
    async def usage(self, call: Call) -> JSON:
        """``GET /v1/usage``."""
        world = self.world
        now = datetime.fromtimestamp(world.clock.now(), tz=timezone.utc)
        period = call.query.get("period", "current")
        if period == "current":
            year, month = now.year, now.month
        elif period == "previous":
            year, month = _previous_month(now.year, now.month)
        else:
            m = _PERIOD_RE.fullmatch(period)
            if m is None or not 1 <= int(m.group(2)) <= 12:
                raise APIFailure(
                    400,
                    "invalid_parameter",
                    f"The 'period' parameter is 'current', 'previous' or YYYY-MM; got {period!r}.",
                    param="period",
                )
            year, month = int(m.group(1)), int(m.group(2))
            if (year, month) > (now.year, now.month):
                raise APIFailure(
                    400,
                    "invalid_parameter",
                    f"The period {period} has not started yet.",
                    param="period",
                )
        group_by = call.choice_param("group_by", USAGE_GROUPS) or "class"
        bucket = world.usage.get(f"{year:04d}-{month:02d}", {})
        field_name = "exit_class" if group_by == "class" else "country"
        rows = sorted(
            ((nbytes, name) for (kind, name), nbytes in bucket.items() if kind == group_by),
            key=lambda row: (-row[0], row[1]),
        )
        start, end = _month_bounds(year, month)
        return {
            "object": "usage",
            "period_start": iso(start),
            "period_end": iso(end),
            "total_bytes": sum(v for (kind, _), v in bucket.items() if kind == "class"),
            "cap_bytes": world.cap_bytes(),
            "breakdown": [{field_name: name, "bytes": nbytes} for nbytes, name in rows],
        }

    @endpoint("GET", "/v1/orders", query=("status", "limit", "cursor"))
    async def orders(self, call: Call) -> JSON:
        """``GET /v1/orders``."""
        status = call.choice_param("status", ORDER_STATUSES)
        limit = call.int_param("limit", 25, 1, 100)
        mine = [
            o
            for o in self.world.orders
            if o.account_id == self.world.account.id and (status is None or o.status == status)
        ]
        return paginate(
            "orders",
            mine,
            lambda o: (o.created_at, o.id),
            objects.order_object,
            limit,
            call.query.get("cursor"),
        )

    @endpoint("GET", "/v1/plans", public=True)
    async def plans(self, call: Call) -> JSON:
        """``GET /v1/plans``."""
        return {"object": "list", "data": [dict(p) for p in PLANS]}

    # ------------------------------------------------------------------ gateway

    @endpoint("GET", "/v1/credentials")
    async def credentials(self, call: Call) -> JSON:
        """``GET /v1/credentials``."""
        return objects.credentials_object(self.world)

    @endpoint("POST", "/v1/credentials/rotate", write=True)
    async def rotate_credentials(self, call: Call) -> JSON:
        """``POST /v1/credentials/rotate``."""
        self.world.rotate_credentials()  # emits credentials.rotated
        return objects.rotated_credentials_object(self.world)

    @endpoint("GET", "/v1/sessions", query=("limit", "cursor", "exit_class"))
    async def sessions(self, call: Call) -> JSON:
        """``GET /v1/sessions``."""
        limit = call.int_param("limit", 100, 1, 1000)
        exit_class = call.choice_param("exit_class", protocol.EXIT_CLASSES)
        recent = [
            s
            for s in self.world.recent_sessions()
            if exit_class is None or s.exit_class == exit_class
        ]
        return paginate(
            "sessions",
            recent,
            lambda s: (s.started_at, s.id),
            objects.session_object,
            limit,
            call.query.get("cursor"),
        )

    # ------------------------------------------------------------------ network

    @endpoint("GET", "/v1/countries")
    async def countries(self, call: Call) -> JSON:
        """``GET /v1/countries``."""
        return {
            "object": "list",
            "data": [objects.country_object(c) for c in self.world.countries.values()],
        }

    @endpoint("GET", "/v1/countries/{code}/asns")
    async def country_asns(self, call: Call) -> JSON:
        """``GET /v1/countries/{code}/asns``."""
        world = self.world
        if not world.asn_allowed():
            raise APIFailure(
                403,
                "scope_required",
                f"ASN-level targeting is available on Growth and above; this account is on "
                f"{world.plan['name']}.",
            )
        code = call.match("code")
        country = world.countries.get(code)
        if country is None:
            hint = " (country codes are lower case)" if code.lower() in world.countries else ""
            raise APIFailure(
                404, "resource_missing", f"No country {code!r} in the pool{hint}.", param="code"
            )
        return {
            "object": "list",
            "data": [objects.asn_object(country, a) for a in world.asns.get(code, [])],
        }

    # ------------------------------------------------------------------ allowlist

    def _my_allowlist(self) -> list[AllowlistEntry]:
        return [e for e in self.world.allowlist if e.account_id == self.world.account.id]

    @endpoint("GET", "/v1/allowlist")
    async def allowlist(self, call: Call) -> JSON:
        """``GET /v1/allowlist``."""
        # The reference's list items carry no "object" (its POST answer does): mirror it, so
        # that a client does not come to rely on a field the real API may not send.
        return {
            "object": "list",
            "data": [
                {k: v for k, v in objects.allowlist_entry_object(e).items() if k != "object"}
                for e in self._my_allowlist()
            ],
        }

    @endpoint("POST", "/v1/allowlist", write=True, body=("cidr", "label"))
    async def allowlist_add(self, call: Call) -> JSON:
        """``POST /v1/allowlist``."""
        world = self.world
        cidr = _required_str(call.body, "cidr")
        label = _optional_str(call.body, "label")
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise APIFailure(
                    400,
                    "invalid_parameter",
                    f"{cidr!r} is not an IPv4 / IPv6 address or CIDR.",
                    param="cidr",
                ) from None
            raise APIFailure(
                422,
                "cidr_host_bits_set",
                f"{cidr} has host bits set; the network is {loose}.",
                param="cidr",
            ) from None
        shortest = MIN_PREFIX[net.version]
        if net.prefixlen < shortest:
            raise APIFailure(
                422,
                "prefix_too_short",
                f"{net} is too wide: the allowlist takes IPv{net.version} prefixes of "
                f"/{shortest} or narrower.",
                param="cidr",
            )
        if label is not None and len(label) > MAX_LABEL:
            raise APIFailure(
                422,
                "label_too_long",
                f"The label is {len(label)} characters long; the maximum is {MAX_LABEL}.",
                param="label",
            )
        normalized = str(net)
        for existing in self._my_allowlist():
            if ipaddress.ip_network(existing.cidr, strict=False) == net:
                raise APIFailure(
                    409,
                    "already_on_allowlist",
                    f"{normalized} is already on the allowlist ({existing.id}).",
                    param="cidr",
                )
        entry = AllowlistEntry(
            world.new_id("al"), normalized, label, world.clock.now(), world.account.id
        )
        world.allowlist.append(entry)
        world.note("allowlist_added", id=entry.id, cidr=entry.cidr)
        shown = objects.allowlist_entry_object(entry)
        world.emit("allowlist.updated", {**shown, "action": "added"})
        return shown

    @endpoint("DELETE", "/v1/allowlist/{id}", write=True)
    async def allowlist_remove(self, call: Call) -> JSON:
        """``DELETE /v1/allowlist/{id}``."""
        world = self.world
        entry_id = call.match("id")
        entry = next((e for e in self._my_allowlist() if e.id == entry_id), None)
        if entry is None:
            raise APIFailure(
                404, "resource_missing", f"No allowlist entry {entry_id!r}.", param="id"
            )
        world.allowlist.remove(entry)
        world.note("allowlist_removed", id=entry.id, cidr=entry.cidr)
        world.emit(
            "allowlist.updated", {**objects.allowlist_entry_object(entry), "action": "removed"}
        )
        return {"object": "allowlist_entry", "id": entry.id, "deleted": True}

    # ------------------------------------------------------------------ webhooks

    def _my_webhook(self, webhook_id: str) -> WebhookEndpoint:
        for hook in self.world.webhooks:
            if hook.id == webhook_id and hook.account_id == self.world.account.id:
                return hook
        raise APIFailure(404, "resource_missing", f"No webhook {webhook_id!r}.", param="id")

    @endpoint("POST", "/v1/webhooks", write=True, body=("url", "events", "label"))
    async def webhook_create(self, call: Call) -> JSON:
        """``POST /v1/webhooks``."""
        world = self.world
        url = _required_str(call.body, "url")
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc or not parts.hostname:
            raise APIFailure(400, "invalid_parameter", f"{url!r} is not a URL.", param="url")
        if parts.scheme.lower() != "https":
            raise APIFailure(
                422,
                "url_not_https",
                f"Webhook URLs must be HTTPS; {parts.scheme}:// is rejected.",
                param="url",
            )
        events = call.body.get("events")
        if events is None:
            raise APIFailure(
                400, "missing_parameter", "The 'events' parameter is required.", param="events"
            )
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise APIFailure(
                400,
                "invalid_parameter",
                "The 'events' parameter must be a list of event names.",
                param="events",
            )
        if not events:
            raise APIFailure(
                422,
                "events_empty",
                'Subscribe to at least one event (["*"] for everything).',
                param="events",
            )
        unknown = [e for e in events if e != "*" and e not in protocol.WEBHOOK_EVENTS]
        if unknown:
            raise APIFailure(
                422,
                "unknown_event",
                f"Unknown event(s) {', '.join(map(repr, unknown))}; events are "
                f"{', '.join(protocol.WEBHOOK_EVENTS)} or '*'.",
                param="events",
            )
        label = _optional_str(call.body, "label")
        hook = WebhookEndpoint(
            id=world.new_id("wh"),
            url=url,
            events=list(dict.fromkeys(events)),
            label=label,
            secret=objects.new_webhook_secret(),
            created_at=world.clock.now(),
            account_id=world.account.id,
        )
        world.webhooks.append(hook)
        world.note("webhook_created", id=hook.id, url=hook.url, events=hook.events)
        return objects.webhook_object(hook, with_secret=True)

    @endpoint("GET", "/v1/webhooks")
    async def webhook_list(self, call: Call) -> JSON:
        """``GET /v1/webhooks``."""
        mine = [h for h in self.world.webhooks if h.account_id == self.world.account.id]
        return {"object": "list", "data": [objects.webhook_object(h) for h in mine]}

    @endpoint("POST", "/v1/webhooks/{id}/rotate", write=True)
    async def webhook_rotate(self, call: Call) -> JSON:
        """``POST /v1/webhooks/{id}/rotate``."""
        hook = self._my_webhook(call.match("id"))
        hook.secret = objects.new_webhook_secret()
        self.world.note("webhook_secret_rotated", id=hook.id)
        return objects.webhook_object(hook, with_secret=True)

    @endpoint("GET", "/v1/webhooks/{id}/attempts", query=("limit", "cursor"))
    async def webhook_attempts(self, call: Call) -> JSON:
        """``GET /v1/webhooks/{id}/attempts``."""
        hook = self._my_webhook(call.match("id"))
        limit = call.int_param("limit", 25, 1, 100)
        mine = [a for a in self.world.attempts if a.webhook_id == hook.id]
        return paginate(
            "attempts",
            mine,
            lambda a: (a.attempted_at, a.id),
            objects.webhook_attempt_object,
            limit,
            call.query.get("cursor"),
        )

    # ------------------------------------------------------------------ status

    @endpoint("GET", "/v1/status", public=True)
    async def status(self, call: Call) -> JSON:
        """``GET /v1/status``."""
        return {"object": "status", "status": "ok", "time": iso(self.world.clock.now())}


def _bearer(header: str | None) -> str | None:
    """The token of ``Bearer <token>`` (the scheme is case-insensitive), else None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _required_str(body: JSON, name: str) -> str:
    value = body.get(name)
    if value is None:
        raise APIFailure(
            400, "missing_parameter", f"The '{name}' parameter is required.", param=name
        )
    if not isinstance(value, str):
        raise APIFailure(
            400, "invalid_parameter", f"The '{name}' parameter must be a string.", param=name
        )
    return value


def _optional_str(body: JSON, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise APIFailure(
            400, "invalid_parameter", f"The '{name}' parameter must be a string.", param=name
        )
    return value


def build_api_app(world: World) -> web.Application:
    """The sandbox API: every v1 endpoint of the reference and the ``/_sandbox/*`` controls.

    >>> app = build_api_app(World(seed=0))   # serve it with aiohttp's AppRunner
    """
    from proxaro_scrape.sandbox.controls import Controls

    emulator = ApiEmulator(world)
    app = web.Application(middlewares=[emulator.middleware])
    emulator.add_routes(app)
    Controls(world, emulator.limiter).add_routes(app)
    return app
