"""The sans-I/O core: routes, sessions, breakers, failover, credentials, usage — no server."""

from __future__ import annotations

import base64
import logging
import random
from collections import Counter
from typing import Any

import pytest

from proxaro_scrape import (
    AttemptsExhaustedError,
    GatewayAuthError,
    GatewayError,
    Target,
    TargetError,
    UsageCapError,
)
from proxaro_scrape.gateway import HEALTHY_ASN
from proxaro_scrape.gateway._breakers import BreakerBoard
from proxaro_scrape.gateway._core import RoutingCore, _host
from proxaro_scrape.gateway._credentials import CredentialsState
from proxaro_scrape.gateway._pool import (
    PoolView,
    asn_from_model,
    country_from_model,
    failover_chain,
    relax_steps,
)
from proxaro_scrape.gateway._schedule import Schedule
from proxaro_scrape.gateway._store import MemoryStore
from proxaro_scrape.gateway._usage import UsageGuard
from proxaro_scrape.gateway.edge import Failure, observe_failure

COUNTRIES: list[dict[str, Any]] = [
    {"code": "us", "name": "United States", "continent": "North America",
     "exit_classes": ["residential", "isp", "mobile_4g"], "estimated_pool_size": 8_200_000},
    {"code": "ca", "name": "Canada", "continent": "North America",
     "exit_classes": ["residential", "isp"], "estimated_pool_size": 1_400_000},
    {"code": "mx", "name": "Mexico", "continent": "North America",
     "exit_classes": ["residential"], "estimated_pool_size": 900_000},
    {"code": "gb", "name": "United Kingdom", "continent": "Europe",
     "exit_classes": ["residential", "isp", "mobile_5g"], "estimated_pool_size": 3_100_000},
    {"code": "de", "name": "Germany", "continent": "Europe",
     "exit_classes": ["residential", "isp", "mobile_4g"], "estimated_pool_size": 2_900_000},
    {"code": "fr", "name": "France", "continent": "Europe",
     "exit_classes": ["residential", "isp"], "estimated_pool_size": 2_500_000},
    {"code": "it", "name": "Italy", "continent": "Europe",
     "exit_classes": ["residential", "mobile_4g"], "estimated_pool_size": 1_000_000},
    {"code": "jp", "name": "Japan", "continent": "Asia",
     "exit_classes": ["residential"], "estimated_pool_size": 2_000_000},
]  # fmt: skip
ASNS_DE = [
    {"asn": "AS3320", "org": "Deutsche Telekom", "exit_class": "residential"},
    {"asn": "AS3209", "org": "Vodafone", "exit_class": "residential", "pool_health": "healthy"},
    {"asn": "AS6805", "org": "Telefonica", "exit_class": "mobile_4g", "pool_health": "degraded"},
]
CREDS = {
    "gateway": "127.0.0.1",
    "port": 7777,
    "username": "nb_growth_a1b2",
    "password": "pw-one",
    "expires_at": "2030-01-01T00:00:00Z",
}
URL = "http://shop.example:8080/p/1?x=y"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def pool_view(
    health: dict[str, str] | None = None, asns: list[dict[str, Any]] = ASNS_DE
) -> PoolView:
    rows = [{**c, "pool_health": (health or {}).get(c["code"], "healthy")} for c in COUNTRIES]
    pool = PoolView().with_countries(country_from_model(c) for c in rows)
    return pool.with_asns("de", [asn_from_model(a) for a in asns])


def make(**kw: Any) -> tuple[RoutingCore, FakeClock]:
    clock = FakeClock()
    kw.setdefault("breaker_base_backoff", 5.0)
    core = RoutingCore(clock=clock, rng=random.Random(7), **kw)
    core.breakers.jitter = 0.0  # exact timing in tests; jitter has its own test
    core.install_credentials(CREDS)
    core.install_pool(pool_view())
    return core, clock


def send(core: RoutingCore, target: Any = None, **kw: Any) -> Any:
    rr = core.request(URL, target, **kw)
    return rr, rr.next_route()


GATEWAY = {"X-Proxaro-Error": "no_exit"}
AUTH_FAILED = {"X-Proxaro-Error": "auth_failed"}


def exit_headers(ip: str = "1.2.3.4", country: str = "de") -> dict[str, str]:
    return {"X-Proxaro-Exit-IP": ip, "X-Proxaro-Exit-Country": country}


# ---------------------------------------------------------------------------- routes


def test_route_carries_url_header_and_masks_the_password() -> None:
    core, _ = make(target={"country": "de"})
    _, route = send(core)
    assert route.username == "nb_growth_a1b2-country-de"
    assert route.proxy_url == "http://nb_growth_a1b2-country-de:pw-one@127.0.0.1:7777"
    assert route.proxy_url_masked == "http://nb_growth_a1b2-country-de:****@127.0.0.1:7777"
    assert route.gateway_url == "http://127.0.0.1:7777"
    token = route.proxy_authorization.removeprefix("Basic ")
    assert base64.b64decode(token).decode() == "nb_growth_a1b2-country-de:pw-one"
    assert route.password.reveal() == "pw-one"
    assert route.target == Target(country="de")
    assert (route.attempt, route.credentials_version, route.session_id) == (1, 1, None)
    assert "pw-one" not in repr(route) and "pw-one" not in str(route.password)
    assert "pw-one" not in repr(core.creds.current)


def test_password_and_username_are_percent_encoded_in_the_url() -> None:
    core, _ = make()
    core.install_credentials({**CREDS, "password": "p@ss:w/rd"})
    _, route = send(core)
    assert route.proxy_url == "http://nb_growth_a1b2:p%40ss%3Aw%2Frd@127.0.0.1:7777"
    token = route.proxy_authorization.removeprefix("Basic ")
    assert base64.b64decode(token).decode() == "nb_growth_a1b2:p@ss:w/rd"


def test_request_before_credentials_is_a_clear_error() -> None:
    core = RoutingCore()
    rr = core.request(URL)
    with pytest.raises(Exception, match="start"):
        rr.next_route()


def test_per_request_target_overrides_the_default_and_dicts_work() -> None:
    core, _ = make(target={"country": "de"})
    assert send(core, {"country": "fr", "class": "isp"})[1].target == Target(
        country="fr", exit_class="isp"
    )
    assert send(core, Target(country="us"))[1].target == Target(country="us")
    assert send(core)[1].target == Target(country="de")


@pytest.mark.parametrize(
    ("target", "param", "fragment"),
    [
        ({"country": "xx"}, "country", "not in the Proxaro pool"),
        ({"country": "uk"}, "country", "gb (United Kingdom)"),
        ({"country": "fr", "exit_class": "mobile_4g"}, "exit_class", "residential, isp"),
        ({"country": "de", "asn": "1234"}, "asn", "3320 (Deutsche Telekom, residential)"),
        ({"country": "de", "asn": "6805", "exit_class": "residential"}, "exit_class", "mobile_4g"),
        ({"continent": "Atlantis"}, "continent", "Europe"),
        ({"continent": "Asia", "exit_class": "isp"}, "exit_class", "Asia"),
        ({"countries": ["de", "zz"]}, "countries", "zz"),
        ({"countries": ["fr", "ca"], "exit_class": "mobile_4g"}, "exit_class", "none of"),
        ({"country": "US"}, "country", "'us'"),
        ({"country": "us", "asn": "AS7922"}, "asn", "prefix"),
    ],
)
def test_bad_targets_raise_in_request_before_anything_is_sent(
    target: dict[str, Any], param: str, fragment: str
) -> None:
    core, _ = make()
    before = core.stats()
    with pytest.raises(TargetError) as info:
        core.request(URL, target)
    assert info.value.param == param
    assert fragment in str(info.value)
    assert core.stats().get("requests", 0) == before.get("requests", 0)


def test_a_dict_equal_to_an_accepted_one_is_still_checked() -> None:
    """A regression: the core kept its own cache of dict targets keyed by their items alone,
    so after ``{"sesstime": 1}`` it took ``{"sesstime": True}`` (equal, same hash) for it."""
    core, _ = make()
    _, route = send(core, {"session": "basket", "sesstime": 1})
    assert route.username.endswith("-session-basket-sesstime-1")
    with pytest.raises(TargetError, match="whole minutes"):
        core.request("http://shop.test/", {"session": "basket", "sesstime": True})


def test_asn_targeting_on_starter_says_it_needs_growth() -> None:
    core, _ = make()
    core.install_pool(PoolView().with_countries(country_from_model(c) for c in COUNTRIES)
                      .with_asn_forbidden())  # fmt: skip
    with pytest.raises(TargetError, match="Growth") as info:
        core.request(URL, {"country": "us", "asn": "7922"})
    assert info.value.param == "asn"


def test_asns_of_an_unfetched_country_are_asked_for_and_the_request_still_routes() -> None:
    core, _ = make()
    wanted: list[str] = []
    core.want_asns = wanted.append
    _, route = send(core, {"country": "us", "asn": "7922"})
    assert route.username.endswith("-country-us-asn-7922")
    assert wanted == ["us"]


# ---------------------------------------------------------------------------- sticky sessions


def test_sticky_per_domain_per_key_and_explicit() -> None:
    core, _ = make(sticky="domain")
    a = send(core)[1].session_id
    assert a and send(core)[1].session_id == a
    rr = core.request("https://other.example/")
    assert rr.next_route().session_id != a
    assert send(core, {"country": "de"})[1].session_id not in (None, a)  # per target too
    assert (
        send(core, session_key="jar-1")[1].session_id
        == send(core, session_key="jar-1")[1].session_id
    )
    off, _ = make()
    assert send(off)[1].session_id is None
    assert send(off, session_key="k")[1].session_id is not None  # a key is sticky in any mode
    explicit = send(off, {"country": "de", "session": "cart42", "session_ttl": 30})[1]
    assert explicit.session_id == "cart42"
    assert explicit.username.endswith("-country-de-session-cart42-sesstime-30")
    assert explicit.target == Target(country="de")


def test_default_session_ttl_is_sent_as_sesstime() -> None:
    core, _ = make(sticky="domain", session_ttl=25)
    route = send(core)[1]
    assert route.username == f"nb_growth_a1b2-session-{route.session_id}-sesstime-25"


def test_session_lifetime_and_max_requests() -> None:
    core, clock = make(sticky="domain", session_ttl=1, session_max_requests=2)
    rr, r1 = send(core)
    rr.observe(200, exit_headers())
    rr, r2 = send(core)
    rr.observe(200, exit_headers())
    assert r1.session_id == r2.session_id
    r3 = send(core)[1]
    assert r3.session_id != r1.session_id  # served 2 requests: a new session
    clock.advance(56)
    assert send(core)[1].session_id == r3.session_id
    clock.advance(2)  # 58 s > 60 s minus the 5 % margin
    assert send(core)[1].session_id != r3.session_id


def test_a_ban_rotates_the_session_and_is_keyed_on_the_exit() -> None:
    core, _ = make(sticky="domain")
    rr, r1 = send(core)
    out = rr.observe(403, exit_headers("9.9.9.9", "us"))
    assert (out.kind, out.retry, out.exit and out.exit.ip) == ("ban", True, "9.9.9.9")
    r2 = rr.next_route()
    assert r2.session_id != r1.session_id and r2.attempt == 2
    assert rr.observe(200, exit_headers("8.8.8.8")).ok
    stats = core.stats()
    assert stats["bans"] == 1 and stats["bans/country/us"] == 1
    assert stats["exits_used"] == 2 and stats["retries"] == 1
    # the same host later lands on the banned exit through a session: rotated after the answer
    rr, r3 = send(core)
    assert r3.session_id == r2.session_id
    assert rr.observe(200, exit_headers("9.9.9.9")).ok
    assert send(core)[1].session_id != r3.session_id


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 502, "headers": {"X-Proxaro-Error": "exit_failed"}},
        {"status": 504, "headers": {"X-Proxaro-Error": "target_timeout"}},
        {"exception": TimeoutError()},
        {"exception": ConnectionResetError()},
    ],
)
def test_exit_failures_and_timeouts_rotate_the_session(answer: dict[str, Any]) -> None:
    core, _ = make(sticky="key")
    rr, r1 = send(core, session_key="u1")
    out = rr.observe(**answer)
    assert out.retry and not out.refresh
    assert rr.next_route().session_id != r1.session_id


def test_the_session_table_is_a_bounded_lru() -> None:
    core, _ = make(sticky="key", session_lru_size=100)
    first = send(core, session_key="k0")[1].session_id
    for i in range(1, 1000):
        send(core, session_key=f"k{i}")
    assert core.store.session_count() == 100
    assert core.stats()["sessions"] == 100
    assert send(core, session_key="k999")[1].session_id is not None
    assert send(core, session_key="k0")[1].session_id != first  # evicted: a new session


def test_memory_store_lru_keeps_recently_used() -> None:
    store = MemoryStore(session_lru_size=2)
    store.session_put("a", 1)
    store.session_put("b", 2)
    assert store.session_get("a") == 1  # a is now the most recent
    store.session_put("c", 3)
    assert store.session_get("b") is None and store.session_get("a") == 1
    assert store.evictions == 1
    with pytest.raises(ValueError):
        MemoryStore(session_lru_size=0)


# ---------------------------------------------------------------------------- credentials


def test_stale_credentials_refresh_once_then_raise() -> None:
    core, _ = make(max_attempts=1)  # the resend after a refresh is free
    rr, r1 = send(core)
    out = rr.observe(407, {"X-Proxaro-Error": "auth_failed"})
    assert (out.kind, out.retry, out.refresh) == ("stale_credentials", True, True)
    assert core.install_credentials({**CREDS, "password": "pw-two"})
    r2 = rr.next_route()
    assert r2.credentials_version == 2 and r2.proxy_url.endswith(":pw-two@127.0.0.1:7777")
    assert rr.observe(200).ok
    # a 407 on the newest credentials, refreshed already once: raise with what happened
    rr, _ = send(core)
    assert rr.observe(407, AUTH_FAILED).refresh
    rr.next_route()
    out = rr.observe(407, AUTH_FAILED)
    assert not out.retry and isinstance(out.error, GatewayAuthError)


def test_a_407_on_old_credentials_needs_no_refresh() -> None:
    core, _ = make()
    rr, r1 = send(core)
    core.install_credentials({**CREDS, "password": "pw-two"})
    out = rr.observe(407, AUTH_FAILED)
    assert out.retry and not out.refresh
    assert rr.next_route().credentials_version == 2


def test_credentials_versions_and_previous() -> None:
    state = CredentialsState()
    assert state.version == 0
    assert state.install(CREDS) and state.version == 1
    assert not state.install(dict(CREDS)) and state.version == 1  # same: same version
    assert state.install({**CREDS, "password": "x"}) and state.version == 2
    assert state.previous is not None and state.previous.version == 1
    assert state.get(1) is state.previous and state.get(2) is state.current
    assert state.get(7) is None
    cur = state.current
    assert cur is not None and cur.proxy("u") is cur.proxy("u")  # cached per username


# ---------------------------------------------------------------------------- budget


def test_attempt_budget_then_a_clear_error_with_what_was_tried() -> None:
    core, _ = make(max_attempts=3, target={"country": "de"})
    rr, _ = send(core)
    assert rr.observe(429, exit_headers()).retry
    rr.next_route()
    assert rr.observe(502, {"X-Proxaro-Error": "exit_failed"}).retry
    rr.next_route()
    out = rr.observe(403, exit_headers())
    assert not out.retry and isinstance(out.error, AttemptsExhaustedError)
    assert len(out.error.tried) == 3
    assert "ban (429)" in out.error.tried[0]
    assert "exit_failure (502 exit_failed)" in out.error.tried[1]
    assert "country=de" in str(out.error)
    with pytest.raises(AttemptsExhaustedError) as info:
        rr.next_route()
    assert info.value.tried == out.error.tried
    assert core.stats()["exhausted"] == 1


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"X-Proxaro-Error": "bad_targeting"}, "bad_targeting"),
        ({"X-Proxaro-Error": "source_not_allowed"}, "source_not_allowed"),
        ({"X-Proxaro-Error": "scope_required"}, "scope_required"),
    ],
)
def test_terminal_gateway_answers_never_retry(headers: dict[str, str], kind: str) -> None:
    core, _ = make()
    rr, _ = send(core)
    out = rr.observe(400 if kind == "bad_targeting" else 403, headers)
    assert out.kind == kind and not out.retry and out.error is not None


# ---------------------------------------------------------------------------- failover


def test_relax_and_neighbour_chain() -> None:
    pool = pool_view()
    t = Target(country="de", city="berlin", asn="3320", exit_class="residential", session="s1")
    assert [x.describe() for x in relax_steps(t)] == [
        "country=de city=berlin asn=3320 class=residential session=s1",
        "country=de city=berlin asn=3320 class=residential",
        "country=de city=berlin class=residential",
        "country=de class=residential",
    ]
    chain = failover_chain(pool, t.geo)
    assert [x.describe() for x in chain][-3:] == [
        "country=gb class=residential",  # neighbours by pool size, with the class
        "country=fr class=residential",
        "country=it class=residential",
    ]
    # neighbours lacking the class are skipped
    mobile = failover_chain(pool, Target(country="de", exit_class="mobile_4g"))
    assert [x.country for x in mobile] == ["de", "it"]
    assert failover_chain(pool, t, False) == [t]
    explicit = [Target(country="jp"), Target(country="us")]
    assert failover_chain(pool, Target(country="de"), explicit) == [Target(country="de"), *explicit]
    assert failover_chain(pool, Target()) == [Target()]


def test_region_dead_opens_the_breaker_and_fails_over_then_returns_when_healed() -> None:
    core, clock = make(target={"country": "de", "exit_class": "residential"})
    rr, r1 = send(core)
    assert r1.target.country == "de"
    out = rr.observe(502, GATEWAY)
    assert (out.kind, out.retry) == ("region_dead", True)
    r2 = rr.next_route()
    assert r2.target == Target(country="gb", exit_class="residential")
    assert rr.observe(200).ok
    # new requests skip the open breaker without spending an attempt on it
    rr, r3 = send(core)
    assert r3.target.country == "gb" and r3.attempt == 1
    assert any("circuit open" in line for line in rr.tried)
    stats = core.stats()
    assert stats["failovers"] == 2 and stats["breakers_opened"] == 1
    assert core.breakers.snapshot()["g:de|||residential"] == "open" and stats["region_dead"] == 1
    # after the backoff, one probe goes back to de; the region healed: closed again
    clock.advance(5.0)
    rr, probe = send(core)
    assert probe.target.country == "de"
    assert send(core)[1].target.country == "gb"  # only one probe at a time
    assert rr.observe(200).ok
    assert send(core)[1].target.country == "de"
    assert core.stats()["breakers_closed"] == 1


def test_breaker_backoff_doubles_on_failed_probes() -> None:
    core, clock = make(target={"country": "de"})
    rr, _ = send(core)
    rr.observe(502, GATEWAY)
    clock.advance(5.0)
    rr, probe = send(core)
    assert probe.target.country == "de"
    rr.observe(502, GATEWAY)  # still dead: open for 10 s now
    clock.advance(9.9)
    assert send(core)[1].target.country != "de"
    clock.advance(0.1)
    assert send(core)[1].target.country == "de"


def test_breaker_board_timing_and_jitter() -> None:
    store = MemoryStore()
    b = BreakerBoard(store, base_backoff=1.0, max_backoff=8.0, jitter=0.0)
    assert [b.backoff(n) for n in (1, 2, 3, 4, 5, 9)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    jittery = BreakerBoard(store, base_backoff=10.0, max_backoff=100.0, jitter=0.2,
                           rng=random.Random(3))  # fmt: skip
    values = [jittery.backoff(1) for _ in range(200)]
    assert min(values) >= 8.0 and max(values) <= 12.0 and len(set(values)) > 100
    assert b.allow("k", 0.0)
    assert b.failure("k", 0.0) and not b.allow("k", 0.5)
    assert b.allow("k", 1.0)  # the probe
    assert not b.allow("k", 1.0)  # one at a time
    assert b.allow("k", 1.0 + b.probe_timeout)  # a lost probe is replaced
    assert b.success("k", 2.0) and b.state("k", 2.0) == "closed"
    threshold = BreakerBoard(MemoryStore(), failure_threshold=3)
    assert not threshold.failure("x", 0.0) and not threshold.failure("x", 0.0)
    assert threshold.failure("x", 0.0)


def test_a_success_routed_before_the_breaker_opened_does_not_close_it() -> None:
    # Under load, requests routed to a region before it died (a kept-alive tunnel whose exit
    # outlives it) still succeed after the breaker opened; closing on them made it flap.
    b = BreakerBoard(MemoryStore(), base_backoff=1.0, jitter=0.0)
    assert b.failure("k", 0.0)
    assert not b.success("k", 0.1) and b.state("k", 0.1) == "open"
    assert not b.allow("k", 0.5)  # the backoff is not reset either
    assert b.allow("k", 1.0)  # the half-open probe...
    assert b.success("k", 1.1) and b.state("k", 1.1) == "closed"  # ...does close it


def test_remote_pool_health_opens_and_closes_breakers() -> None:
    core, _ = make(target={"country": "de"})
    core.install_pool(pool_view({"de": "down"}))
    assert send(core)[1].target.country == "gb"
    core.install_pool(pool_view({"de": "down"}))  # no transition: nothing changes
    assert send(core)[1].target.country == "gb"
    core.install_pool(pool_view())
    assert send(core)[1].target.country == "de"


def test_a_degraded_pinned_asn_warns_and_fails_over(caplog: pytest.LogCaptureFixture) -> None:
    core, _ = make()
    with caplog.at_level(logging.WARNING, logger="proxaro_scrape.gateway"):
        rr, route = send(core, {"country": "de", "asn": "6805"})
    assert "6805" in caplog.text and "degraded" in caplog.text
    assert route.target == Target(country="de")  # the ASN step is skipped
    rr.observe(200)


def test_failover_off_raises_on_a_dead_region() -> None:
    core, _ = make(failover=False, target={"country": "de"})
    rr, _ = send(core)
    out = rr.observe(502, GATEWAY)
    assert not out.retry and isinstance(out.error, GatewayError)
    assert "failover is off" in str(out.error)


def test_explicit_failover_chain() -> None:
    core, _ = make(failover=[{"country": "jp"}, Target(country="us")], target={"country": "de"})
    rr, _ = send(core)
    rr.observe(502, GATEWAY)
    assert rr.next_route().target == Target(country="jp")
    rr.observe(502, GATEWAY)
    assert rr.next_route().target == Target(country="us")
    out = rr.observe(502, GATEWAY)
    assert not out.retry and isinstance(out.error, AttemptsExhaustedError)


def test_a_blind_502_on_connect_twice_counts_as_a_dead_region() -> None:
    # A stack that loses the CONNECT answer's headers sees a bare 502: no_exit or exit_failed.
    core, _ = make(target={"country": "de"})
    rr, _ = send(core)
    assert observe_failure(rr, Failure.TUNNEL_REFUSED, status=502).kind == "exit_failure"
    rr.next_route()
    assert observe_failure(rr, Failure.TUNNEL_REFUSED, status=502).kind == "region_dead"
    assert rr.next_route().target.country == "gb"
    assert "c:de" not in core.breakers.snapshot()  # guesswork never opens the shared breaker


# ---------------------------------------------------------------------------- selectors


def test_continent_selector_is_weighted_by_pool_size() -> None:
    core, _ = make()
    picks = Counter(send(core, {"continent": "Europe"})[1].target.country for _ in range(4000))
    assert set(picks) == {"gb", "de", "fr", "it"}
    sizes = {"gb": 3.1, "de": 2.9, "fr": 2.5, "it": 1.0}
    total = sum(sizes.values())
    for code, size in sizes.items():
        assert abs(picks[code] / 4000 - size / total) < 0.03, picks


def test_countries_selector_with_class_and_sticky_resolution() -> None:
    core, _ = make(sticky="domain")
    picks = {send(core, {"countries": ["de", "fr", "jp"], "exit_class": "isp"})[1].target.country
             for _ in range(50)}  # fmt: skip
    assert picks == {core.request(URL, {"countries": ["de", "fr", "jp"], "exit_class": "isp"})
                     .resolved.country}  # fmt: skip  # sticky: one pick per session
    free, _ = make()
    spread = {send(free, {"countries": ["de", "fr", "jp"], "exit_class": "isp"})[1].target.country
              for _ in range(200)}  # fmt: skip
    assert spread == {"de", "fr"}  # jp has no isp exits


def test_selector_failover_stays_within_the_selection() -> None:
    core, _ = make()
    core.install_pool(pool_view({"de": "down", "fr": "down"}))
    with pytest.raises(AttemptsExhaustedError) as info:
        send(core, {"countries": ["de", "fr"]})  # never gb: the caller chose these two
    assert len(info.value.tried) == 2 and "circuit open" in str(info.value)
    core2, _ = make()
    rr, first = send(core2, {"countries": ["de", "fr"]})
    rr.observe(502, GATEWAY)
    assert rr.next_route().target.country == ({"de", "fr"} - {first.target.country}).pop()


def test_healthy_asn_selector() -> None:
    core, _ = make()
    asns = {send(core, {"country": "de", "exit_class": "residential", "asn": HEALTHY_ASN})[1]
            .target.asn for _ in range(100)}  # fmt: skip
    assert asns == {"3320", "3209"}
    mobile = send(core, {"country": "de", "exit_class": "mobile_4g", "asn": HEALTHY_ASN})
    assert mobile[1].target.asn is None  # only a degraded mobile ASN: no ASN then
    with pytest.raises(TargetError):
        core.request(URL, {"country": "de", "exit_class": "isp", "asn": HEALTHY_ASN})
    # a country whose ASNs are unknown yet: routed without an ASN, and the ASNs are asked for
    wanted: list[str] = []
    core.want_asns = wanted.append
    route = send(core, {"country": "us", "asn": HEALTHY_ASN})[1]
    assert route.target == Target(country="us") and wanted == ["us"]


# ---------------------------------------------------------------------------- usage guard


def test_usage_guard_warn_and_stop() -> None:
    guard = UsageGuard("warn")
    assert guard.update(50, 100) == []
    assert guard.update(85, 100) == ["warn80"]
    assert guard.update(90, 100) == []
    assert guard.update(100, 100) == ["warn100"] and not guard.stopped
    assert guard.update(10, 100) == []  # new period: re-armed
    assert guard.threshold(100) == ["warn100"]
    stop = UsageGuard("stop")
    assert stop.update(120, 100) == ["stop"] and stop.stopped
    assert stop.threshold(100) == []
    assert UsageGuard("stop").update(None, None) == []
    with pytest.raises(ValueError):
        UsageGuard("explode")


def test_a_stopped_usage_guard_refuses_routing() -> None:
    core, _ = make(usage_cap_action="stop")
    core.usage.update(101, 100)
    with pytest.raises(UsageCapError, match="stop"):
        core.request(URL)


# ---------------------------------------------------------------------------- schedule, misc


def test_schedule() -> None:
    s = Schedule(credentials_interval=30.0, pool_ttl=300.0, usage_interval=None, now=0.0)
    assert s.due(0.0) == [] and s.next_at() == 30.0
    assert s.due(30.0) == ["credentials"]
    s.done("credentials", True, 30.0)
    assert s.next_at() == 60.0
    s.done("credentials", False, 60.0)
    s.done("credentials", False, 61.0)
    assert s.due(62.9) == [] and s.due(63.0) == ["credentials"]  # 1 s, then 2 s
    s.poke("pool", 63.0)
    assert s.due(63.0) == ["credentials", "pool"]
    assert s.want_asns("de", 64.0) and not s.want_asns("de", 64.0)
    assert "asns" in s.due(64.0)
    assert s.credentials_next_in(None) == 30.0
    assert s.credentials_next_in(75.0) == 15.0  # ahead of expiry
    assert s.credentials_next_in(61.5) == 1.5
    assert s.credentials_next_in(30.0) == 5.0  # inside the margin: every 5 s, no tight loop
    assert s.credentials_next_in(-5.0) == 5.0


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://Shop.Example:8080/p?q#f", "shop.example"),
        ("https://user:pw@shop.example/x", "shop.example"),
        ("http://[::1]:8080/", "[::1]"),
        ("http://127.0.0.1", "127.0.0.1"),
        ("shop.example/path", "shop.example"),
    ],
)
def test_host_of_url(url: str, host: str) -> None:
    assert _host(url) == host


def test_configuration_errors() -> None:
    from proxaro_scrape import ConfigurationError

    for kw in (
        {"sticky": "cookie"},
        {"session_ttl": 0},
        {"session_max_requests": 0},
        {"max_attempts": 0},
        {"usage_cap_action": "panic"},
        {"failover": "de"},
        {"session_lru_size": 0},
        {"is_ban": 5},
        {"ban_status_codes": ["x"]},
    ):
        with pytest.raises(ConfigurationError):
            RoutingCore(**kw)
    with pytest.raises(TargetError):
        RoutingCore(target={"country": "USA"})


def test_every_outcome_kind_has_its_handler() -> None:
    from proxaro_scrape.gateway._request import _HANDLERS
    from proxaro_scrape.gateway.outcome import KINDS

    assert set(_HANDLERS) == set(KINDS)


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"X-Proxaro-Error": "bad_targeting"}, "bad_targeting"),
        ({"X-Proxaro-Error": "scope_required"}, "scope_required"),
        ({"X-Proxaro-Error": "source_not_allowed"}, "source_not_allowed"),
    ],
)
def test_a_refusal_touches_no_session_or_breaker(headers: dict[str, str], kind: str) -> None:
    core, _ = make(target={"country": "de"}, sticky="domain")
    rr, route = send(core)
    status = 400 if kind == "bad_targeting" else 403
    out = rr.observe(status, headers)
    assert (out.kind, out.retry) == (kind, False) and out.error is not None
    assert core.breakers.snapshot().get("c:de") is None
    assert core.store.session_get(rr.session_key).session_id == route.session_id
