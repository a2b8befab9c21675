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

Where things are: this module is the pipeline (steps 1 to 7) and :func:`build_api_app`; the
envelope, request ids and pagination are in ``_api_envelope``, the route table and the
:class:`Call` a handler gets in ``_api_routing``, and the handlers in one module per resource
(``_api_account``, ``_api_network``, ``_api_allowlist``, ``_api_webhooks``).  Every name this
module had before that split is still importable from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxaro_scrape import protocol

# The resource modules register their endpoints in ENDPOINTS when imported, in this order.
from proxaro_scrape.sandbox import _api_account, _api_allowlist, _api_network, _api_webhooks
from proxaro_scrape.sandbox._api_account import ORDER_STATUSES, USAGE_GROUPS
from proxaro_scrape.sandbox._api_allowlist import MAX_LABEL, MIN_PREFIX
from proxaro_scrape.sandbox._api_envelope import (
    ERROR_TYPES,
    JSON,
    APIFailure,
    decode_cursor,
    encode_cursor,
    envelope,
    json_response,
    new_request_id,
    paginate,
)
from proxaro_scrape.sandbox._api_routing import ENDPOINTS, Call, Endpoint, Handler, endpoint
from proxaro_scrape.sandbox.ratelimit import Decision, RateLimiter
from proxaro_scrape.sandbox.world import RATE_LIMITS, ApiKey, World

__all__ = [
    "ANONYMOUS_PLAN",
    "ENDPOINTS",
    "ERROR_TYPES",
    "JSON",
    "MAX_LABEL",
    "MIN_PREFIX",
    "ORDER_STATUSES",
    "USAGE_GROUPS",
    "APIFailure",
    "ApiEmulator",
    "Call",
    "Endpoint",
    "Handler",
    "build_api_app",
    "decode_cursor",
    "encode_cursor",
    "endpoint",
    "envelope",
    "json_response",
    "new_request_id",
    "paginate",
]

log = logging.getLogger(__name__)

#: Requests without a usable key are limited per source address with these figures.
ANONYMOUS_PLAN = "growth"

_KEY_RE = re.compile(r"proxaro_(test|live)_[0-9a-f]{32}")
#: The resource modules, imported for their registrations (named so that no linter drops them).
_RESOURCES = (_api_account, _api_network, _api_allowlist, _api_webhooks)


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
            payload = await ep.handler(self.world, call)
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


def _bearer(header: str | None) -> str | None:
    """The token of ``Bearer <token>`` (the scheme is case-insensitive), else None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def build_api_app(world: World, *, ca: Any = None) -> web.Application:
    """The sandbox API: every v1 endpoint of the reference and the ``/_sandbox/*`` controls.

    With ``ca`` (the sandbox's ``trustme.CA``), also ``POST /_sandbox/server_cert``
    (:mod:`proxaro_scrape.sandbox._tls`): webhook receivers in other processes get a
    certificate the deliverer trusts.

    >>> app = build_api_app(World(seed=0))   # serve it with aiohttp's AppRunner
    """
    from proxaro_scrape.sandbox._tls import add_cert_route
    from proxaro_scrape.sandbox.controls import Controls

    emulator = ApiEmulator(world)
    app = web.Application(middlewares=[emulator.middleware])
    emulator.add_routes(app)
    Controls(world, emulator.limiter).add_routes(app)
    if ca is not None:
        add_cert_route(app, ca)
    return app
