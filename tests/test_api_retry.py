"""The retry policy and the pacer as tables of cases, without sleeping.

``parse_retry_after``, ``retry_wait``, ``should_retry``, ``parse_rate_limit`` and
``Pacer.reserve`` are pure functions of their inputs (time is passed in); the tenacity wiring is
checked with a recording ``sleep``.  One end-to-end test shows the pacer keeping a starter key
under the sandbox's rate limit where an unpaced burst trips it.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import tenacity
from _api_support import Driver, driver_fixture

from proxaro_scrape import Pacer, RateLimit, RetryPolicy
from proxaro_scrape.api import _base
from proxaro_scrape.api._base import (
    ClientConfig,
    RequestSpec,
    error_from_response,
    parse_rate_limit,
    parse_retry_after,
)
from proxaro_scrape.api._retry import retry_wait, retrying_kwargs, should_retry
from proxaro_scrape.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from proxaro_scrape.sandbox import Sandbox
from tests.conftest import SandboxFactory

NOW = 1_776_000_000.0  # a fixed "now" (UNIX time) for every case
POLICY = RetryPolicy()  # 0.5 s initial, 8 s max backoff, 60 s max Retry-After, 25 % jitter


def http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


# ---------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("2", 2.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("3600", 3600.0),  # parsed as given; the cap is the wait's business
        ("-5", None),
        ("-0.1", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("1e400", None),
        ("12abc", None),
        (http_date(30), 30.0),
        (http_date(0), 0.0),
        (http_date(-120), 0.0),  # a date in the past: go now
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),  # a year datetime cannot hold
        ("Thu, 01 Jan 1970 00:00:00", 0.0),  # no zone: read as UTC
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


# ---------------------------------------------------------------------------- the wait


@pytest.mark.parametrize(
    ("attempt", "header", "jitter", "wait"),
    [
        # Exponential backoff: 0.5, 1, 2, 4, 8, capped at 8.
        (1, None, 0.0, 0.5),
        (2, None, 0.0, 1.0),
        (3, None, 0.0, 2.0),
        (4, None, 0.0, 4.0),
        (5, None, 0.0, 8.0),
        (9, None, 0.0, 8.0),
        (50, None, 0.0, 8.0),
        # Jitter takes off up to 25 %.
        (1, None, 1.0, 0.375),
        (2, None, 0.5, 0.875),
        (5, None, 1.0, 6.0),
        # Retry-After in seconds is honoured as given (no jitter: it is already the server's).
        (1, "2", 0.0, 2.0),
        (1, "2", 1.0, 2.0),
        (4, "0", 0.7, 0.0),
        (1, "1.5", 0.0, 1.5),
        # ... and as an HTTP date.
        (1, http_date(12), 0.9, 12.0),
        (1, http_date(-12), 0.9, 0.0),
        # Capped at 60 s.
        (1, "61", 0.0, 60.0),
        (1, "3600", 0.0, 60.0),
        (1, http_date(86400), 0.0, 60.0),
        # Negative or garbage: ignored, the backoff applies.
        (1, "-5", 0.0, 0.5),
        (3, "-5", 0.0, 2.0),
        (2, "later", 0.0, 1.0),
        (2, "nan", 1.0, 0.75),
        (2, "", 0.0, 1.0),
    ],
)
def test_retry_wait_table(attempt: int, header: str | None, jitter: float, wait: float) -> None:
    got = retry_wait(attempt, parse_retry_after(header, now=NOW), policy=POLICY, jitter=jitter)
    assert got == pytest.approx(wait)


def test_retry_wait_other_policies() -> None:
    tight = RetryPolicy(initial_backoff=0.1, max_backoff=0.3, max_retry_after=5, jitter=0)
    assert [retry_wait(n, None, policy=tight, jitter=0.99) for n in (1, 2, 3, 4)] == [
        pytest.approx(0.1),
        pytest.approx(0.2),
        pytest.approx(0.3),
        pytest.approx(0.3),
    ]
    assert retry_wait(1, 30.0, policy=tight, jitter=0) == 5
    assert retry_wait(0, None, policy=tight, jitter=0) == pytest.approx(0.1)


def test_retry_after_read_from_answers() -> None:
    """The errors carry the parsed wait; the X-RateLimit-Reset stands in for a missing one."""

    def err(status: int, **headers: str) -> Any:
        return error_from_response(status, httpx.Headers(headers), b"", now=NOW)

    envelope = b'{"error": {"type": "service_unavailable", "message": "edge down"}}'
    unavailable = error_from_response(
        503, httpx.Headers({"Retry-After": http_date(4)}), envelope, now=NOW
    )
    assert isinstance(unavailable, ServiceUnavailableError) and unavailable.retry_after == 4.0
    # A 429 stays a RateLimitError even without the envelope (an edge proxy's own 429).
    assert err(429, **{"Retry-After": "3"}).retry_after == 3.0
    assert err(429, **{"Retry-After": "-1"}).retry_after is None
    spent = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 9)}
    assert err(429, **spent).retry_after == 9.0
    left = {"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": str(int(NOW) + 9)}
    assert err(429, **left).retry_after is None


# ---------------------------------------------------------------------------- which failures


def _api(status: int, cls: type[APIError] = APIError) -> APIError:
    return cls("x", status=status)


def _transport(exc: Exception, cls: type[APIConnectionError]) -> APIConnectionError:
    try:
        raise cls("x") from exc
    except APIConnectionError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("exc", "get", "post"),
    [
        (_api(429, RateLimitError), True, True),
        (_api(503, ServiceUnavailableError), True, True),
        (_api(500, InternalServerError), True, False),
        (_api(502), True, False),
        (_api(504), True, False),
        (_api(503), True, True),  # an HTML 503 from a load balancer: still "not acted"
        (_api(400, InvalidRequestError), False, False),
        (_api(404, NotFoundError), False, False),
        (_api(401), False, False),
        (_transport(httpx.ConnectError("refused"), APIConnectionError), True, True),
        (_transport(httpx.ConnectTimeout("slow"), APITimeoutError), True, True),
        (_transport(httpx.PoolTimeout("pool"), APITimeoutError), True, True),
        (_transport(httpx.ReadTimeout("read"), APITimeoutError), True, False),
        (_transport(httpx.WriteTimeout("write"), APITimeoutError), True, False),
        (_transport(httpx.RemoteProtocolError("dropped"), APIConnectionError), True, False),
        (_transport(httpx.ReadError("reset"), APIConnectionError), True, False),
        (_transport(httpx.UnsupportedProtocol("ftp"), APIConnectionError), False, False),
        # The call's own deadline (a pacing wait or a retry that would not fit): no time left.
        (_base.deadline_error("GET", "https://api.proxaro.io/v1/plans", 2.0), False, False),
        (ConfigurationError("bad", param="x"), False, False),
        (ValueError("bug"), False, False),
    ],
)
def test_should_retry_table(exc: BaseException, get: bool, post: bool) -> None:
    assert should_retry(exc, idempotent=True) is get
    assert should_retry(exc, idempotent=False) is post


def test_methods_idempotence() -> None:
    spec = RequestSpec("GET", "/v1/me", dict)
    assert spec.idempotent
    assert RequestSpec("DELETE", "/v1/allowlist/x", dict).idempotent
    assert not RequestSpec("POST", "/v1/credentials/rotate", dict).idempotent


# ---------------------------------------------------------------------------- tenacity wiring


def _config(max_retries: int = 3) -> ClientConfig:
    return ClientConfig(
        api_key=None,
        base_url="http://127.0.0.1:9",
        api_version="2026-04-01",
        timeout=httpx.Timeout(1.0),
        max_retries=max_retries,
        retry_policy=POLICY,
        pacer=None,
    )


def _run(
    method: str, failures: list[BaseException], max_retries: int = 3
) -> tuple[Any, list[float], int]:
    sleeps: list[float] = []
    calls = 0

    def attempt() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    spec = RequestSpec(method, "/v1/x", dict)
    retrying = tenacity.Retrying(
        sleep=sleeps.append, **retrying_kwargs(_config(max_retries), spec, rng=lambda: 0.0)
    )
    try:
        result: Any = retrying(attempt)
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        result = exc
    return result, sleeps, calls


def test_tenacity_sleeps_what_the_policy_says() -> None:
    limited = RateLimitError("slow down", status=429, retry_after=5.0)
    result, sleeps, calls = _run(
        "GET", [_api(500, InternalServerError), limited, _api(503, ServiceUnavailableError)]
    )
    assert result == "ok" and calls == 4
    assert sleeps == [0.5, 5.0, 2.0]


def test_tenacity_stops_after_max_retries_and_reraises() -> None:
    boom = [_api(500, InternalServerError) for _ in range(9)]
    result, sleeps, calls = _run("GET", boom, max_retries=2)
    assert isinstance(result, InternalServerError) and calls == 3
    assert sleeps == [0.5, 1.0]


def test_tenacity_post_not_retried_after_ambiguous_failures() -> None:
    timeout = _transport(httpx.ReadTimeout("read"), APITimeoutError)
    result, sleeps, calls = _run("POST", [timeout])
    assert result is timeout and calls == 1 and sleeps == []
    result, sleeps, calls = _run("POST", [_api(500, InternalServerError)])
    assert isinstance(result, InternalServerError) and calls == 1
    refused = _transport(httpx.ConnectError("refused"), APIConnectionError)
    result, sleeps, calls = _run("POST", [refused, _api(429, RateLimitError)])
    assert result == "ok" and calls == 3


async def test_same_policy_drives_async_retrying() -> None:
    sleeps: list[float] = []
    failures = [_api(503, ServiceUnavailableError), _api(500, InternalServerError)]

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    spec = RequestSpec("GET", "/v1/x", dict)
    retrying = tenacity.AsyncRetrying(
        sleep=fake_sleep, **retrying_kwargs(_config(), spec, rng=lambda: 0.0)
    )
    assert await retrying(attempt) == "ok"
    assert sleeps == [0.5, 1.0]


# ---------------------------------------------------------------------------- rate-limit headers


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        (
            {
                "X-RateLimit-Limit": "300",
                "X-RateLimit-Remaining": "284",
                "X-RateLimit-Reset": "1714938000",
            },
            (300, 284, datetime(2024, 5, 5, 19, 40, tzinfo=timezone.utc)),
        ),
        ({"X-RateLimit-Remaining": "0"}, (None, 0, None)),
        ({"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "12.0"}, (None, 12, None)),
        ({"X-RateLimit-Reset": "99999999999999999999"}, (None, None, None)),
    ],
)
def test_parse_rate_limit(headers: dict[str, str], expected: Any) -> None:
    got = parse_rate_limit(httpx.Headers(headers), now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got is not None and (got.limit, got.remaining, got.reset) == expected
        assert got.observed_at == NOW


def test_rate_limit_seconds_until_reset() -> None:
    reset = datetime.fromtimestamp(NOW + 42, tz=timezone.utc)
    view = RateLimit(limit=60, remaining=0, reset=reset)
    assert view.seconds_until_reset(NOW) == 42
    assert view.seconds_until_reset(NOW + 100) == 0
    assert RateLimit(limit=60, remaining=1, reset=None).seconds_until_reset(NOW) is None


# ---------------------------------------------------------------------------- the pacer


def test_pacer_spreads_requests_with_a_burst_and_a_window() -> None:
    pacer = Pacer(6, window=6.0, headroom=1.0, burst=3)
    # Three back to back, then one a second, and never more than 6 in any 6 s.
    assert [pacer.reserve(0.0) for _ in range(9)] == [0, 0, 0, 1, 2, 3, 6, 6, 6]


def test_a_wait_the_caller_cannot_afford_books_nothing() -> None:
    pacer = Pacer(1, window=600.0, burst=1)  # one request per ten minutes
    assert pacer.reserve(0.0) == 0
    # Refused: 600 s is more than the 2 s the caller has; no slot is booked for it...
    assert pacer.reserve(0.0, within=2.0) == 600.0
    assert pacer.reserve(0.0, within=2.0) == 600.0
    # ...so the next request waits for the first one's window only, not for the refused ones'.
    assert pacer.reserve(0.0) == 600.0
    assert pacer.reserve(0.0) == 1200.0  # that one booked its slot: the next waits behind it
    assert pacer.reserve(0.0, within=1300.0) == 1800.0


def test_pacer_waits_relative_to_now() -> None:
    pacer = Pacer(60, headroom=1.0, burst=1)  # one a second
    assert pacer.reserve(100.0) == 0
    assert pacer.reserve(100.2) == pytest.approx(0.8)
    assert pacer.reserve(105.0) == 0  # idle time is not banked beyond the burst


def test_pacer_is_off_until_it_knows_a_budget_and_learns_it() -> None:
    pacer = Pacer()
    assert pacer.budget is None
    assert [pacer.reserve(0.0) for _ in range(50)] == [0.0] * 50
    pacer = Pacer()
    pacer.observe(RateLimit(limit=60, remaining=59, reset=None), NOW)
    assert pacer.budget == 54  # 90 % headroom
    waits = [pacer.reserve(NOW) for _ in range(12)]
    assert waits[:9] == [0.0] * 9  # a sixth of the budget back to back
    assert waits[9] == pytest.approx(60 / 54)


def test_pacer_holds_until_reset_when_the_budget_is_spent() -> None:
    pacer = Pacer()
    reset = datetime.fromtimestamp(NOW + 7, tz=timezone.utc)
    pacer.observe(RateLimit(limit=300, remaining=0, reset=reset), NOW)
    assert pacer.reserve(NOW) == pytest.approx(7.0)
    # A reset far away (a misbehaving clock) is never waited for longer than the window.
    later = datetime.fromtimestamp(NOW + 10_000, tz=timezone.utc)
    pacer = Pacer()
    pacer.observe(RateLimit(limit=300, remaining=0, reset=later), NOW)
    assert pacer.reserve(NOW) == pytest.approx(60.0)


# ---------------------------------------------------------------------------- pacer, end to end


@pytest.fixture
def starter(make_sandbox: SandboxFactory) -> Sandbox:
    # World time at 10x: the sandbox's 60 s window lasts 6 real seconds, its burst window 1 s.
    return make_sandbox(plan="starter", clock_speed=10.0, components={"api"})


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, starter: Sandbox) -> Iterator[Driver]:
    yield from driver_fixture(request, starter)


def test_pacer_keeps_a_starter_key_under_the_limit(api: Driver, starter: Sandbox) -> None:
    clock = starter.world.clock
    # World time all but stopped: the 40 unpaced requests fall in one burst window however
    # slowly a loaded machine sends them.
    starter.call(setattr, clock, "speed", 1e-6)
    unpaced = api.client(max_retries=0)
    with pytest.raises(RateLimitError) as err:
        for _ in range(40):
            api(lambda c: c.account.get(), unpaced)
    assert err.value.status == 429 and err.value.retry_after is not None
    starter.call(setattr, clock, "speed", 10.0)
    starter.control("reset_counters", rate_limits=True)

    # 60 a "minute" of 6 real seconds: the pacer spreads 40 requests so that none is refused.
    paced = api.client(max_retries=0, pacer=Pacer(60, window=6.0))
    began = clock.now()
    for _ in range(40):
        api(lambda c: c.account.get(), paced)
    assert paced.rate_limit is not None and paced.rate_limit.limit == 60
    # It spread them: past the burst, the sandbox's own clock (the one its limiter counts in)
    # saw them over most of a window (a lower bound: a loaded machine only spreads them more).
    assert clock.now() - began >= (40 - 9) * 60.0 / 54 * 0.9


def test_internal_helpers_are_pure() -> None:
    # The layer imports nothing that performs I/O at import time, and builds requests offline.
    spec = RequestSpec(
        "GET", "/v1/usage", dict, params={"period": None, "group_by": "country"}, auth=False
    )
    request = _base.build_request(_config(), spec)
    assert str(request.url) == "http://127.0.0.1:9/v1/usage?group_by=country"
    assert request.extensions["timeout"]["read"] == 1.0
