"""Bad input is refused before anything is sent: the key, then every argument the reference limits.

Each refusal is a ConfigurationError naming ``param``; the sandbox's request counter must not
move.  Each test runs sync and async.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _api_support import Driver, counters, driver_fixture

from proxaro_scrape import AsyncProxaro, Pacer, Proxaro, RetryPolicy
from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.sandbox import Sandbox
from tests.conftest import SandboxFactory

HEX = "0123456789abcdef" * 2


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api"})


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, sb: Sandbox) -> Iterator[Driver]:
    yield from driver_fixture(request, sb)


# ---------------------------------------------------------------------------- the key


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "is empty"),
        (" proxaro_test_" + HEX, "whitespace"),
        ("proxaro_test_" + HEX + "\n", "whitespace"),
        ("sk_live_" + HEX, "does not start with proxaro_live_ or proxaro_test_"),
        ("PROXARO_TEST_" + HEX, "does not start with"),
        ("proxaro_test_" + HEX[:31], "31 characters after proxaro_test_"),
        ("proxaro_live_" + HEX + "0", "33 characters after proxaro_live_"),
        ("proxaro_test_" + HEX.upper(), "lowercase hex"),
        ("proxaro_test_" + "g" * 32, "lowercase hex"),
        (12345, "must be a str"),
    ],
)
@pytest.mark.parametrize("cls", [Proxaro, AsyncProxaro])
def test_bad_keys_refused_locally(key: Any, says: str, cls: type) -> None:
    with pytest.raises(ConfigurationError) as err:
        cls(api_key=key, base_url="http://127.0.0.1:9")
    assert err.value.param == "api_key"
    assert says in str(err.value)
    if isinstance(key, str) and len(key) > 13:
        body = key.strip()[13:]
        assert body not in str(err.value) and key not in str(err.value)  # never echoed


def test_bad_key_from_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXARO_API_KEY", "proxaro_test_" + HEX[:20])
    with pytest.raises(ConfigurationError) as err:
        Proxaro(base_url="http://127.0.0.1:9")
    assert err.value.param == "api_key" and "PROXARO_API_KEY" in str(err.value)
    monkeypatch.setenv("PROXARO_API_KEY", "")
    with pytest.raises(ConfigurationError, match="PROXARO_API_KEY is empty"):
        Proxaro(base_url="http://127.0.0.1:9")


def test_live_and_test_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROXARO_API_KEY", raising=False)
    assert Proxaro("proxaro_test_" + HEX, "http://127.0.0.1:9").is_test
    live = Proxaro("proxaro_live_" + HEX, "http://127.0.0.1:9")
    assert not live.is_test and live.has_key
    assert HEX not in repr(live) and "proxaro_live_…" in repr(live)
    assert not Proxaro(base_url="http://127.0.0.1:9").is_test


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"base_url": "ftp://api.proxaro.io"}, "base_url"),
        ({"base_url": "api.proxaro.io"}, "base_url"),
        ({"base_url": "https://api.proxaro.io/?x=1"}, "base_url"),
        ({"api_version": "v1"}, "api_version"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "30"}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"pacer": object()}, "pacer"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], param: str) -> None:
    kwargs.setdefault("base_url", "http://127.0.0.1:9")
    with pytest.raises(ConfigurationError) as err:
        Proxaro("proxaro_test_" + HEX, **kwargs)
    assert err.value.param == param


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda: RetryPolicy(initial_backoff=-1), "initial_backoff"),
        (lambda: RetryPolicy(jitter=2), "jitter"),
        (lambda: Pacer(0), "limit"),
        (lambda: Pacer(window=0), "window"),
        (lambda: Pacer(headroom=1.5), "headroom"),
        (lambda: Pacer(burst=0), "burst"),
    ],
)
def test_bad_policy_settings(make: Callable[[], Any], param: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        make()
    assert err.value.param == param


# ---------------------------------------------------------------------------- arguments

BAD_CALLS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("cidr /8", lambda c: c.allowlist.add("10.0.0.0/8"), "cidr"),
    ("cidr /23", lambda c: c.allowlist.add("203.0.112.0/23"), "cidr"),
    ("cidr v6 /32", lambda c: c.allowlist.add("2001:db8::/32"), "cidr"),
    ("cidr v6 /47", lambda c: c.allowlist.add("2001:db8::/47"), "cidr"),
    ("cidr garbage", lambda c: c.allowlist.add("not-an-ip"), "cidr"),
    ("cidr 300.1.1.1", lambda c: c.allowlist.add("300.1.1.1"), "cidr"),
    ("cidr /33", lambda c: c.allowlist.add("198.51.100.1/33"), "cidr"),
    ("cidr empty", lambda c: c.allowlist.add(""), "cidr"),
    ("cidr not str", lambda c: c.allowlist.add(None), "cidr"),
    ("label 81", lambda c: c.allowlist.add("198.51.100.1", label="x" * 81), "label"),
    ("label not str", lambda c: c.allowlist.add("198.51.100.1", label=5), "label"),
    ("remove bad id", lambda c: c.allowlist.remove("../me"), "id"),
    ("remove empty id", lambda c: c.allowlist.remove(""), "id"),
    ("webhook http", lambda c: c.webhooks.create("http://ops.example.com/h", ["*"]), "url"),
    ("webhook no host", lambda c: c.webhooks.create("https:///h", ["*"]), "url"),
    ("webhook not url", lambda c: c.webhooks.create("ops.example.com", ["*"]), "url"),
    (
        "unknown event",
        lambda c: c.webhooks.create("https://a.example/h", ["order.shipped"]),
        "events",
    ),
    ("events str", lambda c: c.webhooks.create("https://a.example/h", "order.paid"), "events"),
    ("events empty", lambda c: c.webhooks.create("https://a.example/h", []), "events"),
    ("rotate bad id", lambda c: c.webhooks.rotate_secret("wh 1"), "id"),
    ("attempts bad id", lambda c: c.webhooks.attempts("a/b"), "id"),
    ("attempts limit", lambda c: c.webhooks.attempts_page("wh_1", limit=101), "limit"),
    ("orders limit 0", lambda c: c.orders.list(limit=0), "limit"),
    ("orders limit 101", lambda c: c.orders.list(limit=101), "limit"),
    ("orders limit str", lambda c: c.orders.list(limit="10"), "limit"),
    ("orders limit bool", lambda c: c.orders.list_page(limit=True), "limit"),
    ("orders status", lambda c: c.orders.list(status="refunded"), "status"),
    ("orders cursor", lambda c: c.orders.list_page(cursor=""), "cursor"),
    ("sessions limit", lambda c: c.sessions.list(limit=1001), "limit"),
    ("sessions class", lambda c: c.sessions.list(exit_class="satellite"), "exit_class"),
    ("sessions page class", lambda c: c.sessions.list_page(exit_class="Residential"), "exit_class"),
    ("usage period", lambda c: c.usage.get(period="2026-13"), "period"),
    ("usage period word", lambda c: c.usage.get(period="last"), "period"),
    ("usage group_by", lambda c: c.usage.get(group_by="city"), "group_by"),
    ("asns code", lambda c: c.countries.asns("usa"), "code"),
    ("asns code path", lambda c: c.countries.asns("u/"), "code"),
]


@pytest.mark.parametrize(("name", "call", "param"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_raises_before_any_request(
    api: Driver, sb: Sandbox, name: str, call: Callable[[Any], Any], param: str
) -> None:
    sb.control("reset_counters")
    with pytest.raises(ConfigurationError) as err:
        api(call)
    assert err.value.param == param
    assert isinstance(err.value, ValueError)
    assert counters(sb).get("api.requests", 0) == 0


def test_missing_key_fails_before_sending(
    api: Driver, sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROXARO_API_KEY", raising=False)
    keyless = api.client(api_key=None)
    sb.control("reset_counters")
    with pytest.raises(ConfigurationError) as err:
        api(lambda c: c.credentials.get(), keyless)
    assert err.value.param == "api_key" and "PROXARO_API_KEY" in str(err.value)
    assert counters(sb).get("api.requests", 0) == 0


def test_limits_at_the_edges_are_sent(api: Driver, sb: Sandbox) -> None:
    sb.control("reset_counters")
    assert len(api(lambda c: c.orders.list_page(limit=100))) > 0
    assert len(api(lambda c: c.orders.list_page(limit=1))) == 1
    api(lambda c: c.sessions.list_page(limit=1000))
    api(lambda c: c.allowlist.add("198.51.100.0/24", label="y" * 80))
    api(lambda c: c.allowlist.add("2001:db8:2::/48"))
    api(lambda c: c.allowlist.add("2001:db8:3::1"))
    api(lambda c: c.webhooks.create("HTTPS://127.0.0.1:9/h", ["*", "order.paid"]))
    api(lambda c: c.usage.get(period="previous", group_by="country"))
    assert counters(sb)["api.requests"] == 8
