"""Every option of the REST clients, checked where it is given: one table per place.

Each refused case must raise a :class:`~proxaro_scrape.ProxaroError` subclass
(:class:`~proxaro_scrape.ConfigurationError`) whose ``param`` names the argument, with the
argument's name in the message, and nothing may reach the sandbox (its request counter does not
move).  A bool is not a number, NaN and infinity are not numbers either, and every range is
tried on both sides: the accepted side builds the client or the request (sans-I/O) without
complaint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from _api_support import Driver, counters

from proxaro_scrape import Pacer, ProxaroError, RetryPolicy
from proxaro_scrape.api import _resources as r
from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.sandbox import Sandbox

pytestmark = pytest.mark.timeout(120)

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with Sandbox(seed=0) as sandbox:
        yield sandbox


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, sb: Sandbox) -> Iterator[Driver]:
    driver = Driver(request.param, sb)
    try:
        yield driver
    finally:
        driver.close()


def _sent(sb: Sandbox) -> int:
    """Requests the sandbox's API has answered (its control routes are not counted)."""
    return counters(sb).get("api.requests", 0)


def _refused(exc: BaseException, param: str) -> None:
    assert isinstance(exc, ConfigurationError) and isinstance(exc, ProxaroError)
    assert exc.param == param, (exc.param, str(exc))
    assert param in str(exc), str(exc)


# ---------------------------------------------------------------------------- constructors

# (id, keyword arguments of the constructor, the param named)
REFUSED_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("timeout_bool", {"timeout": True}, "timeout"),
    ("timeout_str", {"timeout": "5"}, "timeout"),
    ("timeout_nan", {"timeout": NAN}, "timeout"),
    ("timeout_inf", {"timeout": INF}, "timeout"),
    ("timeout_zero", {"timeout": 0}, "timeout"),
    ("timeout_negative", {"timeout": -1.0}, "timeout"),
    ("timeout_httpx_nan", {"timeout": httpx.Timeout(NAN)}, "timeout"),
    ("timeout_httpx_zero_read", {"timeout": httpx.Timeout(5.0, read=0.0)}, "timeout"),
    ("max_retries_bool", {"max_retries": True}, "max_retries"),
    ("max_retries_negative", {"max_retries": -1}, "max_retries"),
    ("max_retries_float", {"max_retries": 1.5}, "max_retries"),
    ("max_retries_str", {"max_retries": "2"}, "max_retries"),
    ("api_version_short", {"api_version": "2026-4-1"}, "api_version"),
    ("api_version_int", {"api_version": 20260401}, "api_version"),
    ("retry_policy_dict", {"retry_policy": {"initial_backoff": 1}}, "retry_policy"),
    ("pacer_str", {"pacer": "fast"}, "pacer"),
    ("headers_list", {"default_headers": [("X-A", "1")]}, "default_headers"),
    ("headers_int_value", {"default_headers": {"X-A": 1}}, "default_headers"),
    ("headers_crlf_value", {"default_headers": {"X-A": "a\r\nX-B: b"}}, "default_headers"),
    ("headers_space_name", {"default_headers": {"Bad Name": "x"}}, "default_headers"),
    ("headers_authorization", {"default_headers": {"Authorization": "x"}}, "default_headers"),
    ("headers_api_version", {"default_headers": {"x-api-version": "x"}}, "default_headers"),
    ("insecure_int", {"allow_insecure_http": 1}, "allow_insecure_http"),
    ("insecure_str", {"allow_insecure_http": "yes"}, "allow_insecure_http"),
    ("http_client_wrong_type", {"http_client": object()}, "http_client"),
    ("api_key_int", {"api_key": 123}, "api_key"),
    ("api_key_empty", {"api_key": ""}, "api_key"),
    ("api_key_padded", {"api_key": " proxaro_test_" + "0" * 32}, "api_key"),
    ("api_key_31_hex", {"api_key": "proxaro_test_" + "0" * 31}, "api_key"),
    ("api_key_33_hex", {"api_key": "proxaro_test_" + "0" * 33}, "api_key"),
    ("api_key_upper_hex", {"api_key": "proxaro_test_" + "A" * 32}, "api_key"),
    ("base_url_int", {"base_url": 8080}, "base_url"),
]


@pytest.mark.parametrize(
    ("kw", "param"), [o[1:] for o in REFUSED_OPTIONS], ids=[o[0] for o in REFUSED_OPTIONS]
)
def test_constructor_options_are_checked(
    api: Driver, sb: Sandbox, kw: dict[str, Any], param: str
) -> None:
    before = _sent(sb)
    args = {"api_key": "sandbox", "base_url": "sandbox", **kw}
    with pytest.raises(ProxaroError) as err:
        api.client(**args)
    _refused(err.value, param)
    assert _sent(sb) == before


ACCEPTED_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("timeout_tiny", {"timeout": 0.001}),
    ("timeout_int", {"timeout": 5}),
    ("timeout_httpx_none", {"timeout": httpx.Timeout(None)}),
    ("max_retries_zero", {"max_retries": 0}),
    ("headers_custom", {"default_headers": {"X-Trace": "1"}}),
    ("headers_empty", {"default_headers": {}}),
    ("insecure_false", {"allow_insecure_http": False}),
    ("api_key_live", {"api_key": "proxaro_live_" + "0" * 32}),
]


@pytest.mark.parametrize(
    "kw", [o[1] for o in ACCEPTED_OPTIONS], ids=[o[0] for o in ACCEPTED_OPTIONS]
)
def test_constructor_options_on_the_accepted_side(api: Driver, kw: dict[str, Any]) -> None:
    client = api.client(**{"api_key": "sandbox", "base_url": "sandbox", **kw})
    assert client.max_retries >= 0


def test_timeout_is_the_deadline(api: Driver) -> None:
    assert api.client(timeout=5).deadline == 5.0
    assert api.client(timeout=httpx.Timeout(2.0, read=9.0)).deadline == 9.0
    assert api.client(timeout=httpx.Timeout(None)).deadline is None


# (id, factory, the param named)
REFUSED_POLICIES: list[tuple[str, Callable[[], Any], str]] = [
    ("backoff_bool", lambda: RetryPolicy(initial_backoff=True), "initial_backoff"),
    ("backoff_nan", lambda: RetryPolicy(initial_backoff=NAN), "initial_backoff"),
    ("backoff_negative", lambda: RetryPolicy(initial_backoff=-0.1), "initial_backoff"),
    ("max_backoff_inf", lambda: RetryPolicy(max_backoff=INF), "max_backoff"),
    ("max_retry_after_str", lambda: RetryPolicy(max_retry_after="60"), "max_retry_after"),
    ("jitter_above_1", lambda: RetryPolicy(jitter=1.01), "jitter"),
    ("jitter_negative", lambda: RetryPolicy(jitter=-0.01), "jitter"),
    ("jitter_nan", lambda: RetryPolicy(jitter=NAN), "jitter"),
    ("pacer_limit_bool", lambda: Pacer(limit=True), "limit"),
    ("pacer_limit_zero", lambda: Pacer(limit=0), "limit"),
    ("pacer_limit_float", lambda: Pacer(limit=10.0), "limit"),
    ("pacer_burst_zero", lambda: Pacer(burst=0), "burst"),
    ("pacer_window_zero", lambda: Pacer(window=0), "window"),
    ("pacer_window_inf", lambda: Pacer(window=INF), "window"),
    ("pacer_window_bool", lambda: Pacer(window=True), "window"),
    ("pacer_headroom_zero", lambda: Pacer(headroom=0), "headroom"),
    ("pacer_headroom_above_1", lambda: Pacer(headroom=1.01), "headroom"),
    ("pacer_headroom_bool", lambda: Pacer(headroom=True), "headroom"),
    ("pacer_headroom_nan", lambda: Pacer(headroom=NAN), "headroom"),
]


@pytest.mark.parametrize(
    ("make", "param"), [p[1:] for p in REFUSED_POLICIES], ids=[p[0] for p in REFUSED_POLICIES]
)
def test_policy_and_pacer_options_are_checked(make: Callable[[], Any], param: str) -> None:
    with pytest.raises(ProxaroError) as err:
        make()
    _refused(err.value, param)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RetryPolicy(initial_backoff=0, max_backoff=0, max_retry_after=0, jitter=0),
        lambda: RetryPolicy(jitter=1.0),
        lambda: Pacer(limit=1, burst=1, window=0.001, headroom=1.0),
        lambda: Pacer(headroom=0.001),
    ],
    ids=["policy_zeros", "policy_jitter_1", "pacer_minimums", "pacer_headroom_small"],
)
def test_policy_and_pacer_options_on_the_accepted_side(make: Callable[[], Any]) -> None:
    assert make() is not None


# ---------------------------------------------------------------------------- resource methods

# (id, the call on a client, the param named)
REFUSED_CALLS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("period_month_13", lambda c: c.usage.get(period="2026-13"), "period"),
    ("period_month_00", lambda c: c.usage.get(period="2026-00"), "period"),
    ("period_one_digit", lambda c: c.usage.get(period="2026-1"), "period"),
    ("period_bool", lambda c: c.usage.get(period=True), "period"),
    ("period_word", lambda c: c.usage.get(period="last"), "period"),
    ("group_by_city", lambda c: c.usage.get(group_by="city"), "group_by"),
    ("orders_limit_0", lambda c: c.orders.list(limit=0), "limit"),
    ("orders_limit_101", lambda c: c.orders.list(limit=101), "limit"),
    ("orders_limit_bool", lambda c: c.orders.list(limit=True), "limit"),
    ("orders_limit_float", lambda c: c.orders.list(limit=1.5), "limit"),
    ("orders_status", lambda c: c.orders.list(status="refunded"), "status"),
    ("orders_cursor_empty", lambda c: c.orders.list_page(cursor=""), "cursor"),
    ("orders_cursor_int", lambda c: c.orders.list_page(cursor=5), "cursor"),
    ("sessions_limit_1001", lambda c: c.sessions.list(limit=1001), "limit"),
    ("sessions_class", lambda c: c.sessions.list(exit_class="satellite"), "exit_class"),
    ("asns_three_letters", lambda c: c.countries.asns("usa"), "code"),
    ("asns_one_letter", lambda c: c.countries.asns("u"), "code"),
    ("asns_int", lambda c: c.countries.asns(1), "code"),
    ("asns_path", lambda c: c.countries.asns("../"), "code"),
    ("cidr_v4_slash_23", lambda c: c.allowlist.add("198.51.100.0/23"), "cidr"),
    ("cidr_v6_slash_47", lambda c: c.allowlist.add("2001:db8::/47"), "cidr"),
    ("cidr_garbage", lambda c: c.allowlist.add("not-an-ip"), "cidr"),
    ("cidr_padded", lambda c: c.allowlist.add(" 198.51.100.7"), "cidr"),
    ("cidr_int", lambda c: c.allowlist.add(3325256711), "cidr"),
    ("label_81", lambda c: c.allowlist.add("198.51.100.7", label="x" * 81), "label"),
    ("label_int", lambda c: c.allowlist.add("198.51.100.7", label=1), "label"),
    ("remove_path", lambda c: c.allowlist.remove("../al_1"), "id"),
    ("remove_129", lambda c: c.allowlist.remove("a" * 129), "id"),
    ("hook_http", lambda c: c.webhooks.create("http://h.example/x", ["*"]), "url"),
    ("hook_port", lambda c: c.webhooks.create("https://h.example:99999/x", ["*"]), "url"),
    ("hook_port_0", lambda c: c.webhooks.create("https://h.example:0/x", ["*"]), "url"),
    ("hook_space", lambda c: c.webhooks.create("https://h.example/a b", ["*"]), "url"),
    ("events_str", lambda c: c.webhooks.create("https://h.example/x", "order.paid"), "events"),
    ("events_empty", lambda c: c.webhooks.create("https://h.example/x", []), "events"),
    ("events_int", lambda c: c.webhooks.create("https://h.example/x", [1]), "events"),
    ("events_unknown", lambda c: c.webhooks.create("https://h.example/x", ["nope"]), "events"),
    (
        "hook_label_81",
        lambda c: c.webhooks.create("https://h.example/x", ["*"], label="x" * 81),
        "label",
    ),  # fmt: skip
    ("rotate_id_slash", lambda c: c.webhooks.rotate_secret("wh_1/rotate"), "id"),
    ("attempts_limit_0", lambda c: c.webhooks.attempts("wh_1", limit=0), "limit"),
    ("attempts_limit_101", lambda c: c.webhooks.attempts_page("wh_1", limit=101), "limit"),
]


@pytest.mark.parametrize(
    ("call", "param"), [c[1:] for c in REFUSED_CALLS], ids=[c[0] for c in REFUSED_CALLS]
)
def test_method_arguments_are_checked_before_sending(
    api: Driver, sb: Sandbox, call: Callable[[Any], Any], param: str
) -> None:
    before = _sent(sb)
    with pytest.raises(ProxaroError) as err:
        api(call)
    _refused(err.value, param)
    assert _sent(sb) == before


# The accepted side of each bound, built without sending (the same functions the methods use).
ACCEPTED_CALLS: list[tuple[str, Callable[[], Any]]] = [
    ("period_month_12", lambda: r.usage_get("2026-12")),
    ("period_month_01", lambda: r.usage_get("2026-01")),
    ("period_previous", lambda: r.usage_get("previous", "country")),
    ("orders_limit_1", lambda: r.orders_pager("paid", 1)(None)),
    ("orders_limit_100", lambda: r.orders_pager(None, 100)("cursor_1")),
    ("sessions_limit_1000", lambda: r.sessions_pager("mobile_5g", 1000)(None)),
    ("asns_upper", lambda: r.countries_asns("US")),
    ("cidr_v4_slash_24", lambda: r.allowlist_add("198.51.100.0/24", "x" * 80)),
    ("cidr_v6_slash_48", lambda: r.allowlist_add("2001:db8::/48")),
    ("remove_128", lambda: r.allowlist_remove("a" * 128)),
    ("hook_port_65535", lambda: r.webhooks_create("https://h.example:65535/x", ["order.paid"])),
    ("hook_port_1", lambda: r.webhooks_create("https://h.example:1/x", ("*",))),
    ("attempts_limit_100", lambda: r.webhooks_attempts_pager("wh_1", 100)(None)),
]


@pytest.mark.parametrize(
    "build", [c[1] for c in ACCEPTED_CALLS], ids=[c[0] for c in ACCEPTED_CALLS]
)
def test_method_arguments_on_the_accepted_side(build: Callable[[], Any]) -> None:
    spec = build()
    assert spec.method in ("GET", "POST", "DELETE") and spec.path.startswith("/v1/")


def test_the_counter_the_tables_read_sees_a_call(api: Driver, sb: Sandbox) -> None:
    """The control case: a valid call moves the counter the refused cases leave still."""
    before = _sent(sb)
    api(lambda c: c.usage.get(period="2026-01"))
    assert _sent(sb) == before + 1


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_plain_http_api_gets_no_root_certificates_and_an_https_one_the_default(
    scheme: str,
) -> None:
    import ssl

    from proxaro_scrape import AsyncProxaro, Proxaro
    from proxaro_scrape.api._deadline import tls_for

    url = f"{scheme}://127.0.0.1:9"
    verify = tls_for(url)
    if scheme == "https":
        assert verify is True  # httpx's default: certifi's roots
    else:
        # Loading ~150 roots for a client that never speaks TLS cost 20-40 ms at start; the
        # context it gets instead verifies, and trusts no root: a TLS connection would fail.
        assert isinstance(verify, ssl.SSLContext)
        assert verify.verify_mode is ssl.CERT_REQUIRED and verify.check_hostname
        assert verify.cert_store_stats()["x509_ca"] == 0
    key = "proxaro_test_" + "a" * 32
    with Proxaro(api_key=key, base_url=url) as client:
        assert client._http is not None  # made without error, nothing sent
    async with AsyncProxaro(api_key=key, base_url=url) as aclient:
        assert aclient._http is not None
