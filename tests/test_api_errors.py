"""Every error class, the retries the sandbox saw, and answers that are not the API's envelope.

Faults are scripted with the sandbox's controls (``/_sandbox/faults``, ``/_sandbox/plan``,
``/_sandbox/keys``) and attempts are counted with ``GET /_sandbox/counters``.  Bodies that the
real API never sends (an HTML 502 from a load balancer, truncated JSON) come from a tiny aiohttp
app on loopback.  Each test runs sync and async with the same assertions.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _api_support import Driver, RawServer, TinyServer, counters, driver_fixture
from aiohttp import web

from proxaro_scrape import RetryPolicy
from proxaro_scrape.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProxaroError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from proxaro_scrape.sandbox import Sandbox
from tests.conftest import SandboxFactory

#: Retries without real waiting: the timing itself is tested as a table in test_api_retry.py.
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_retry_after=0.02)
ME = "api.requests:GET /v1/me"
ROTATE = "api.requests:POST /v1/credentials/rotate"


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api"})


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, sb: Sandbox) -> Iterator[Driver]:
    yield from driver_fixture(request, sb)


@pytest.fixture(params=["sync", "async"])
def bare(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """A driver without a sandbox, for servers of the test's own."""
    yield from driver_fixture(request, None)


KEY = "proxaro_test_" + "0123456789abcdef" * 2


def no_secret(exc: BaseException, *keys: str) -> None:
    for key in keys:
        assert key not in str(exc) and key not in repr(exc)
        assert key[len("proxaro_test_") :] not in str(exc)


# ---------------------------------------------------------------------------- one class per row


@pytest.mark.parametrize(
    ("status", "cls", "etype"),
    [
        (400, InvalidRequestError, "invalid_request"),
        (401, AuthenticationError, "authentication_required"),
        (403, PermissionDeniedError, "forbidden"),
        (404, NotFoundError, "not_found"),
        (409, ConflictError, "conflict"),
        (422, UnprocessableEntityError, "unprocessable_entity"),
        (429, RateLimitError, "rate_limited"),
        (500, InternalServerError, "internal_error"),
        (503, ServiceUnavailableError, "service_unavailable"),
    ],
)
def test_each_envelope_maps_to_its_class(
    api: Driver, sb: Sandbox, status: int, cls: type[APIError], etype: str
) -> None:
    sb.control("faults", statuses=[status])
    client = api.client(max_retries=0)
    with pytest.raises(cls) as err:
        api(lambda c: c.account.get(), client)
    exc = err.value
    assert type(exc) is cls and isinstance(exc, ProxaroError)
    assert exc.status == status and exc.type == etype and exc.code
    assert exc.message and exc.request_id and exc.request_id.startswith("req_")
    assert f"HTTP {status}" in str(exc)
    no_secret(exc, sb.api_key)
    if status in (429, 503):
        assert exc.retry_after == 1.0  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- the real triggers


def test_authentication_errors(api: Driver, sb: Sandbox) -> None:
    unknown = api.client(api_key=KEY)
    with pytest.raises(AuthenticationError) as err:
        api(lambda c: c.account.get(), unknown)
    assert err.value.status == 401 and err.value.code == "invalid_api_key"
    no_secret(err.value, KEY)

    live = "proxaro_live_" + "ab" * 16
    with pytest.raises(AuthenticationError) as err:
        api(lambda c: c.credentials.get(), api.client(api_key=live))
    assert err.value.code == "live_key_not_accepted"
    assert "test keys" in err.value.message
    no_secret(err.value, live)


def test_permission_denied_scope_and_plan(api: Driver, sb: Sandbox) -> None:
    read_only = sb.control("keys", scope="read_only")["api_key"]
    reader = api.client(api_key=read_only)
    assert api(lambda c: c.credentials.get(), reader).username
    with pytest.raises(PermissionDeniedError) as err:
        api(lambda c: c.credentials.rotate(), reader)
    assert err.value.status == 403 and not err.value.scope_required
    no_secret(err.value, read_only)

    sb.control("plan", plan="starter")
    with pytest.raises(PermissionDeniedError) as err:
        api(lambda c: c.countries.asns("us"))
    assert err.value.scope_required and err.value.code == "scope_required"


def test_business_rule_errors(api: Driver) -> None:
    # Host bits set: syntactically a CIDR (so not refused locally), refused by the API.
    with pytest.raises(UnprocessableEntityError) as err:
        api(lambda c: c.allowlist.add("203.0.113.5/24"))
    assert err.value.status == 422 and err.value.param == "cidr"
    with pytest.raises(NotFoundError) as nf:
        api(lambda c: c.countries.asns("zz"))
    assert nf.value.param == "code"


# ---------------------------------------------------------------------------- retries


def test_get_is_retried_on_500_and_503_then_succeeds(api: Driver, sb: Sandbox) -> None:
    client = api.client(retry_policy=FAST)  # max_retries=2 by default
    sb.control("faults", statuses=[500, 503])
    sb.control("reset_counters")
    assert api(lambda c: c.account.get(), client).id
    assert counters(sb)[ME] == 3


def test_get_gives_up_after_max_retries(api: Driver, sb: Sandbox) -> None:
    client = api.client(retry_policy=FAST, max_retries=3)
    sb.control("faults", statuses=[500] * 5)
    sb.control("reset_counters")
    with pytest.raises(InternalServerError):
        api(lambda c: c.account.get(), client)
    assert counters(sb)[ME] == 4
    sb.control("faults", clear=True)

    once = api.client(max_retries=0)
    sb.control("faults", statuses=[503])
    sb.control("reset_counters")
    with pytest.raises(ServiceUnavailableError):
        api(lambda c: c.account.get(), once)
    assert counters(sb)[ME] == 1


def test_rate_limited_get_is_retried_and_reports_retry_after(api: Driver, sb: Sandbox) -> None:
    client = api.client(retry_policy=FAST)
    sb.control("faults", statuses=[429, 429, 429])
    sb.control("reset_counters")
    with pytest.raises(RateLimitError) as err:
        api(lambda c: c.usage.get(), client)
    assert err.value.retry_after == 1.0
    assert counters(sb)["api.requests:GET /v1/usage"] == 3


def test_post_not_retried_after_500(api: Driver, sb: Sandbox) -> None:
    client = api.client(retry_policy=FAST)
    before = sb.world.credentials.password
    sb.control("faults", statuses=[500])
    sb.control("reset_counters")
    with pytest.raises(InternalServerError):
        api(lambda c: c.credentials.rotate(), client)
    assert counters(sb)[ROTATE] == 1
    assert sb.world.credentials.password == before


@pytest.mark.parametrize("status", [429, 503])
def test_post_retried_where_the_server_did_not_act(api: Driver, sb: Sandbox, status: int) -> None:
    client = api.client(retry_policy=FAST)
    before = sb.world.credentials.password
    sb.control("faults", statuses=[status])
    sb.control("reset_counters")
    rotated = api(lambda c: c.credentials.rotate(), client)
    assert counters(sb)[ROTATE] == 2
    assert rotated.password.reveal() == sb.world.credentials.password != before


def test_delete_is_retried(api: Driver, sb: Sandbox) -> None:
    entry = api(lambda c: c.allowlist.add("198.51.100.7"))
    client = api.client(retry_policy=FAST)
    sb.control("faults", statuses=[500])
    sb.control("reset_counters")
    assert api(lambda c: c.allowlist.remove(entry.id), client).deleted
    assert counters(sb)["api.requests:DELETE /v1/allowlist/{id}"] == 2


def test_timeouts_get_retried_rotate_never(api: Driver, sb: Sandbox) -> None:
    # Reads time out after 0.2 s; the call as a whole may take 20 s (an httpx.Timeout's
    # largest phase is the call's deadline), room for the retries.
    client = api.client(retry_policy=FAST, timeout=httpx.Timeout(0.2, pool=20.0))
    sb.control("faults", latency_ms=600)
    sb.control("reset_counters")
    with pytest.raises(APITimeoutError) as err:
        api(lambda c: c.account.get(), client)
    assert isinstance(err.value, APIConnectionError)
    no_secret(err.value, sb.api_key)
    assert counters(sb)[ME] == 3

    sb.control("reset_counters")
    with pytest.raises(APITimeoutError):
        api(lambda c: c.credentials.rotate(), client)
    # A timed-out POST may have been acted on: retrying a rotation could rotate twice.
    assert counters(sb)[ROTATE] == 1
    sb.control("faults", clear=True)


def test_connection_refused_is_retried_for_get_and_post(
    bare: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = bare.client(api_key=KEY, base_url=f"http://127.0.0.1:{port}", retry_policy=FAST)
    caplog.set_level(logging.INFO, logger="proxaro_scrape.api")
    for call in (lambda c: c.account.get(), lambda c: c.credentials.rotate()):
        caplog.clear()
        with pytest.raises(APIConnectionError) as err:
            bare(call, client)
        assert not isinstance(err.value, APITimeoutError)
        assert f"127.0.0.1:{port}" in str(err.value)
        no_secret(err.value, KEY)
        # The request never left: retried whatever the method (2 retries by default).
        assert sum("retrying" in r.getMessage() for r in caplog.records) == 2
        assert all(KEY not in r.getMessage() for r in caplog.records)


class DroppingServer(RawServer):
    """Accepts connections and closes them without answering: the request may have arrived."""

    def serve(self, conn: socket.socket) -> None:
        conn.recv(65536)


def test_dropped_connection_retried_for_get_not_for_post(bare: Driver) -> None:
    server = DroppingServer()
    try:
        client = bare.client(
            api_key=KEY, base_url=f"http://127.0.0.1:{server.port}", retry_policy=FAST
        )
        with pytest.raises(APIConnectionError):
            bare(lambda c: c.credentials.get(), client)
        assert server.connections == 3
        server.connections = 0
        with pytest.raises(APIConnectionError):
            bare(lambda c: c.credentials.rotate(), client)
        assert server.connections == 1
    finally:
        server.close()


# ---------------------------------------------------------------------------- non-envelope bodies


def _html(status: int, **headers: str) -> Any:
    def answer(request: web.Request) -> web.Response:
        body = "<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
        return web.Response(status=status, text=body, content_type="text/html", headers=headers)

    return answer


def _raw(status: int, text: str) -> Any:
    def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type="application/json")

    return answer


def _echo_key(request: web.Request) -> web.Response:
    # A misbehaving server that echoes the request's Authorization header.
    auth = request.headers.get("Authorization", "")
    envelope = {
        "error": {
            "type": "invalid_request",
            "code": "bad_header",
            "message": f"Bad header {auth}",
            "param": None,
            "request_id": "req_1",
        }
    }
    return web.json_response(envelope, status=400)


@pytest.fixture
def tiny() -> Iterator[TinyServer]:
    routes = {
        "/v1/me": _html(502),
        "/v1/usage": _raw(200, '{"object": "usage", "total_'),
        "/v1/credentials": _raw(500, '{"error": {"type": "internal_err'),
        "/v1/countries": _raw(400, '{"detail": "not the envelope"}'),
        "/v1/orders": _raw(200, "[]"),
        "/v1/plans": _html(429, **{"Retry-After": "0"}),
        "/v1/allowlist": _html(503),
        "/v1/webhooks": _echo_key,
        "/v1/status": lambda request: web.Response(text="OK"),
    }
    with TinyServer(routes) as server:
        yield server


def test_non_envelope_bodies_become_plain_api_errors(bare: Driver, tiny: TinyServer) -> None:
    client = bare.client(api_key=KEY, base_url=tiny.url, retry_policy=FAST)

    with pytest.raises(APIError) as err:
        bare(lambda c: c.account.get(), client)
    assert type(err.value) is APIError and err.value.status == 502
    assert "text/html" in str(err.value) and err.value.type is None
    assert tiny.hits["/v1/me"] == 3  # a load balancer's 502 is as ambiguous as a 500: GET retried

    with pytest.raises(APIError) as err:
        bare(lambda c: c.usage.get(), client)
    assert type(err.value) is APIError and err.value.status == 200
    assert "not JSON" in str(err.value)

    with pytest.raises(APIError) as err:
        bare(lambda c: c.credentials.get(), client)
    assert type(err.value) is APIError and err.value.status == 500

    with pytest.raises(APIError) as err:
        bare(lambda c: c.countries.list(), client)
    assert type(err.value) is APIError and err.value.status == 400
    assert err.value.body == {"detail": "not the envelope"}

    with pytest.raises(APIError) as err:
        bare(lambda c: c.orders.list_page(), client)
    assert type(err.value) is APIError and "unexpected shape" in str(err.value)

    with pytest.raises(RateLimitError) as rl:
        bare(lambda c: c.plans.list(), client)
    assert rl.value.status == 429 and rl.value.retry_after == 0.0

    tiny.hits.clear()
    with pytest.raises(APIError) as err:
        bare(lambda c: c.allowlist.add("198.51.100.1"), client)
    assert err.value.status == 503 and tiny.hits["/v1/allowlist"] == 3  # 503: POST retried too

    with pytest.raises(InvalidRequestError) as bad:
        bare(lambda c: c.webhooks.list(), client)
    assert "Bad header Bearer proxaro_test_…" in str(bad.value)
    no_secret(bad.value, KEY)
    assert KEY not in repr(bad.value.body)

    assert bare(lambda c: c.status(), client).status == "OK"
    for exc in (err.value, rl.value):
        no_secret(exc, KEY)
    assert all(r.get("X-API-Version") for r in tiny.requests)
