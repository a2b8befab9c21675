"""Every gateway option checked once, where it is given: a table, both sides of every bound.

Each refused row asserts the error class, that ``param`` is exactly the option's name (the
Scrapy helper maps it to the setting's), and that nothing was asked of the API: the manager is
built on a client that records every call.  Each accepted row is the other side of a bound.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from typing import Any

import pytest

from proxaro_scrape import ConfigurationError, ProxaroError, Target, TargetError
from proxaro_scrape.gateway import GatewayConfig, GatewayManager
from proxaro_scrape.gateway._core import RoutingCore
from proxaro_scrape.gateway.config import GatewayOptions

CREDS = {"gateway": "127.0.0.1", "port": 7777, "username": "nb_a1b2", "password": "pw"}
COUNTRIES = [
    {"code": "us", "name": "United States", "continent": "North America",
     "exit_classes": ["residential"], "estimated_pool_size": 1000},
]  # fmt: skip


class RecordingClient:
    """Stands for the REST client: answers credentials, countries and usage, records calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        answers = {"credentials.get": CREDS, "countries.list": COUNTRIES, "usage.get": {}}

        class Resource:
            def __init__(self, name: str) -> None:
                self.name = name

            def __getattr__(inner, method: str) -> Any:  # noqa: N805
                def call(*args: Any) -> Any:
                    key = f"{inner.name}.{method}"
                    self.calls.append(key)
                    return answers.get(key, [])

                return call

        self.credentials = Resource("credentials")
        self.countries = Resource("countries")
        self.usage = Resource("usage")


def is_ban(status: int, headers: Any, body: Any) -> bool:
    return False


#: (option, value, accepted?)  Both sides of every bound, and the type mistakes of issue 16 B.
CASES: list[tuple[str, Any, bool]] = [
    # target: a Target, a dict or None; syntax checked
    ("target", None, True),
    ("target", {"country": "us"}, True),
    ("target", Target(country="de"), True),
    ("target", {"country": "USA"}, False),
    ("target", {"planet": "mars"}, False),
    ("target", "us", False),
    ("target", 5, False),
    # sticky
    ("sticky", "off", True),
    ("sticky", "domain", True),
    ("sticky", "key", True),
    ("sticky", "cookie", False),
    ("sticky", "DOMAIN", False),
    ("sticky", True, False),
    ("sticky", ["off"], False),
    # session_ttl: whole minutes 1..1440
    ("session_ttl", 1, True),
    ("session_ttl", 1440, True),
    ("session_ttl", 0, False),
    ("session_ttl", 1441, False),
    ("session_ttl", True, False),
    ("session_ttl", 10.0, False),
    ("session_ttl", "10", False),
    # session_max_requests: None or 1..1e9
    ("session_max_requests", None, True),
    ("session_max_requests", 1, True),
    ("session_max_requests", 1_000_000_000, True),
    ("session_max_requests", 0, False),
    ("session_max_requests", 1_000_000_001, False),
    ("session_max_requests", True, False),
    ("session_max_requests", "5", False),
    # session_lru_size: 1..10,000,000
    ("session_lru_size", 1, True),
    ("session_lru_size", 10_000_000, True),
    ("session_lru_size", 0, False),
    ("session_lru_size", 10_000_001, False),
    ("session_lru_size", False, False),
    ("session_lru_size", 1e4, False),
    # failover: True, False or 1..100 targets
    ("failover", True, True),
    ("failover", False, True),
    ("failover", [{"country": "us"}], True),
    ("failover", [Target(country="us")] * 100, True),
    ("failover", [], False),
    ("failover", [{"country": "us"}] * 101, False),
    ("failover", "de", False),
    ("failover", {"country": "de"}, False),
    ("failover", [None], False),
    ("failover", [{"country": "USA"}], False),
    ("failover", 1, False),
    # max_attempts: 1..100
    ("max_attempts", 1, True),
    ("max_attempts", 100, True),
    ("max_attempts", 0, False),
    ("max_attempts", 101, False),
    ("max_attempts", True, False),
    ("max_attempts", "5", False),
    ("max_attempts", 5.0, False),
    # ban_status_codes: statuses 100..599, as ints
    ("ban_status_codes", (403, 429), True),
    ("ban_status_codes", [100, 599], True),
    ("ban_status_codes", frozenset(), True),
    ("ban_status_codes", [99], False),
    ("ban_status_codes", [600], False),
    ("ban_status_codes", ["403"], False),  # would silently disable ban detection
    ("ban_status_codes", "403", False),
    ("ban_status_codes", [True], False),
    ("ban_status_codes", [403.0], False),
    ("ban_status_codes", 403, False),
    ("ban_status_codes", {403: "ban"}, False),
    # is_ban
    ("is_ban", None, True),
    ("is_ban", is_ban, True),
    ("is_ban", 5, False),
    ("is_ban", "ban", False),
    # usage_cap_action
    ("usage_cap_action", "warn", True),
    ("usage_cap_action", "stop", True),
    ("usage_cap_action", "halt", False),
    ("usage_cap_action", None, False),
]
for name in ("credentials_poll_interval", "breaker_base_backoff"):
    CASES += [
        (name, 0.001, True),
        (name, 1, True),
        (name, 86_400, True),
        (name, 0, False),
        (name, -1, False),
        (name, 86_400.5, False),
        (name, math.nan, False),
        (name, math.inf, False),
        (name, True, False),
        (name, "30", False),
        (name, None, False),
    ]
for name in ("pool_ttl", "usage_poll_interval"):
    CASES += [
        (name, None, True),  # never
        (name, 0.5, True),
        (name, 86_400, True),
        (name, 0, False),
        (name, 86_401, False),
        (name, -math.inf, False),
        (name, math.nan, False),
        (name, False, False),
        (name, "300", False),
    ]
CASES += [
    # breaker_max_backoff: up to a day and never below the base (5 s by default)
    ("breaker_max_backoff", 5.0, True),
    ("breaker_max_backoff", 86_400, True),
    ("breaker_max_backoff", 4.9, False),
    ("breaker_max_backoff", 86_400.1, False),
    ("breaker_max_backoff", math.nan, False),
    ("breaker_max_backoff", True, False),
]


def case_id(case: tuple[str, Any, bool]) -> str:
    name, value, ok = case
    if callable(value):
        shown = value.__name__
    elif len(repr(value)) < 30:
        shown = repr(value)
    else:
        shown = f"{type(value).__name__}[{len(value)}]"
    return f"{name}={shown}-{'ok' if ok else 'refused'}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_every_option_both_sides_of_every_bound(case: tuple[str, Any, bool]) -> None:
    name, value, accepted = case
    options = {name: value}
    if name == "breaker_base_backoff":
        options["breaker_max_backoff"] = 86_400  # the base is bounded by the max too
    client = RecordingClient()
    if accepted:
        cfg = GatewayConfig(**options)
        mgr = GatewayManager(client=client, **options)
        assert mgr.config == cfg
        assert mgr.config == GatewayManager(client=client, config=cfg).config
        return
    for build in (
        lambda: GatewayConfig(**options),
        lambda: GatewayManager(client=client, **options),
        lambda: GatewayManager(client=client, config=GatewayConfig().replace(**options)),
        lambda: RoutingCore(**options),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        assert isinstance(info.value, ProxaroError)
        assert info.value.param == name, str(info.value)
        assert name in str(info.value)
    if name in ("target", "failover"):
        assert isinstance(info.value, TargetError) or "failover" in str(info.value)
    assert client.calls == []  # nothing was sent


def test_the_options_are_the_managers_keyword_arguments() -> None:
    names = GatewayConfig.option_names()
    assert set(names) == set(GatewayOptions.__annotations__)
    assert list(inspect.signature(GatewayConfig).parameters) == list(names)
    assert {c[0] for c in CASES} == set(names)  # the table covers every option


def test_the_config_is_frozen_normalised_and_replaced_with_checks() -> None:
    cfg = GatewayConfig(
        target={"country": "us"},
        failover=[{"country": "ca"}],
        ban_status_codes=[403, 403, 429],
        pool_ttl=60,
    )
    assert cfg.target == Target(country="us")
    assert cfg.failover == (Target(country="ca"),)
    assert cfg.ban_status_codes == frozenset({403, 429})
    assert cfg.pool_ttl == 60.0 and isinstance(cfg.pool_ttl, float)
    with pytest.raises(AttributeError):
        cfg.max_attempts = 3  # type: ignore[misc]
    assert cfg.replace(max_attempts=3).max_attempts == 3 and cfg.max_attempts == 5
    assert GatewayConfig(**{n: getattr(cfg, n) for n in cfg.option_names()}) == cfg
    with pytest.raises(ConfigurationError) as info:
        cfg.replace(max_attempt=3)
    assert info.value.param == "max_attempt" and "max_attempts" in str(info.value)


def test_keywords_override_a_given_config_and_unknown_keywords_are_named() -> None:
    client = RecordingClient()
    base = GatewayConfig(sticky="domain", max_attempts=2)
    mgr = GatewayManager(client=client, config=base, max_attempts=7)
    assert (mgr.config.sticky, mgr.config.max_attempts) == ("domain", 7)
    assert mgr.core.max_attempts == 7 and mgr.core.sticky == "domain"
    with pytest.raises(ConfigurationError) as info:
        GatewayManager(client=client, stciky="domain")  # type: ignore[call-arg]
    assert info.value.param == "stciky" and "'sticky'" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        GatewayManager(client=client, config={"sticky": "domain"})  # type: ignore[arg-type]
    assert info.value.param == "config"
    assert client.calls == []


def test_the_core_reads_the_config_instead_of_checking_again() -> None:
    cfg = GatewayConfig(ban_status_codes=(418,), failover=False, usage_cap_action="stop")
    core = RoutingCore(cfg)
    assert core.config is cfg
    assert core.ban_status_codes == frozenset({418}) and not core.failover_enabled
    assert core.usage.action == "stop"


@pytest.mark.parametrize(
    "key", [["a", "list"], {"a": 1}, {1, 2}, ("tuple", ["with", "a", "list"]), bytearray(b"x")]
)
def test_an_unhashable_session_key_is_named_before_anything_is_sent(key: Any) -> None:
    client = RecordingClient()
    mgr = GatewayManager(client=client).start()
    try:
        started = list(client.calls)
        with pytest.raises(ConfigurationError) as info:
            mgr.request("http://shop.example/", session_key=key)
        assert info.value.param == "session_key"
        assert type(key).__name__ in str(info.value)
        for fine in ("user1", 42, ("tuple", "of", "str"), frozenset({1})):
            assert mgr.request("http://shop.example/", session_key=fine).next_route()
        assert client.calls == started
    finally:
        mgr.close()


def test_a_url_that_is_not_a_string_is_named() -> None:
    client = RecordingClient()
    mgr = GatewayManager(client=client).start()
    try:
        with pytest.raises(ConfigurationError) as info:
            mgr.request(b"http://shop.example/")  # type: ignore[arg-type]
        assert info.value.param == "url"
    finally:
        mgr.close()


def test_manager_start_on_a_fake_api_costs_three_calls() -> None:
    client = RecordingClient()
    with GatewayManager(client=client, credentials_poll_interval=3600) as mgr:
        assert mgr.driver == "thread"
        assert client.calls == ["credentials.get", "countries.list", "usage.get"]


def test_config_repr_and_equality_hold_no_surprise() -> None:
    cfg = GatewayConfig(sticky="key")
    assert "sticky='key'" in repr(cfg)
    assert cfg == GatewayConfig(sticky="key") and hash(cfg) == hash(GatewayConfig(sticky="key"))
    assert OrderedDict.fromkeys([cfg, GatewayConfig(sticky="key")]).__len__() == 1
