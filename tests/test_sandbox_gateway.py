"""The sandbox gateway, end to end: curl, requests, httpx and a raw client through it.

Every target is on loopback; nothing leaves the machine (non-loopback targets are refused by
the gateway before any lookup, which is itself under test here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import select
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import Sandbox, World
from proxaro_scrape.sandbox.gateway import GatewayServer
from proxaro_scrape.sandbox.targeting import (
    TargetingError,
    check_against_pool,
    parse_username,
)
from proxaro_scrape.sandbox.world import AllowlistEntry
from tests._proxy_client import RawConn, Response, basic
from tests._support import aeventually, eventually
from tests.conftest import SandboxFactory

CURL = "/usr/bin/curl"


# ---------------------------------------------------------------------------- helpers


def creds(sb: Sandbox, suffix: str = "", password: str | None = None) -> tuple[str, str]:
    cred = sb.world.credentials
    return cred.username + suffix, password if password is not None else cred.password


def proxy(sb: Sandbox, suffix: str = "", password: str | None = None) -> str:
    if not suffix and password is None:
        return sb.proxy_url()  # the static URL a plain client is given
    user, pw = creds(sb, suffix, password)
    return f"http://{user}:{pw}@{sb.gateway_host}:{sb.gateway_port}"


def raw(sb: Sandbox) -> RawConn:
    return RawConn(sb.gateway_host, sb.gateway_port)


def get(sb: Sandbox, path: str, suffix: str = "", password: str | None = None) -> Response:
    """One plain-HTTP request through the gateway on a fresh raw connection."""
    with raw(sb) as conn:
        return conn.request("GET", sb.site_url + path, auth=basic(*creds(sb, suffix, password)))


def connect(sb: Sandbox, suffix: str = "", target: str | None = None) -> Response:
    with raw(sb) as conn:
        return conn.request(
            "CONNECT",
            target or sb.site_https_url.removeprefix("https://"),
            auth=basic(*creds(sb, suffix)),
        )


def curl(sb: Sandbox, url: str, *args: str, suffix: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CURL, "-sS", "-i", "-x", proxy(sb, suffix), "--cacert", sb.ca_cert, *args, url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def curl_json(stdout: str) -> tuple[dict[str, str], Any]:
    """Headers (of the last head, lower case) and JSON body of ``curl -i`` output."""
    blocks = stdout.replace("\r\n", "\n").split("\n\n")
    body = blocks[-1]
    heads = [b for b in blocks[:-1] if b.startswith("HTTP/")]
    headers: dict[str, str] = {}
    for line in heads[-1].split("\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, json.loads(body)


def exit_of(resp_headers: Any) -> tuple[str, str, str, str]:
    h = {k.lower(): v for k, v in dict(resp_headers).items()}
    return (
        h["x-proxaro-exit-ip"],
        h["x-proxaro-exit-country"],
        h["x-proxaro-exit-asn"],
        h["x-proxaro-exit-class"],
    )


def as_tuple(ip_json: dict[str, Any]) -> tuple[str, str, str, str]:
    return (ip_json["ip"], ip_json["country"], ip_json["asn"], ip_json["exit_class"])


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    """Gateway and site (the API too, for the controls)."""
    return make_sandbox(components={"api", "gateway", "site"})


class BlackHole:
    """A loopback listener that never accepts: once its queue is full, connects hang."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):  # fill the accept queue (its size is the backlog + 1, or so)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        # The queue holds one connection (backlog 0): once one filler is connected it is full.
        eventually(lambda: select.select([], self.fillers, [], 0)[1], message="no filler queued")

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


# ---------------------------------------------------------------------------- targeting


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("nb_growth_1", {}),
        ("nb_growth_1-country-us", {"country": "us"}),
        (
            "nb_growth_1-country-us-city-new_york-asn-7922-class-residential-session-Ab1-sesstime-30",
            {
                "country": "us",
                "city": "new_york",
                "asn": "7922",
                "exit_class": "residential",
                "session": "Ab1",
                "sesstime": 30,
            },
        ),
        ("nb_growth_1-class-mobile_5g", {"exit_class": "mobile_5g"}),
        ("nb_growth_1-session-" + "x" * 32, {"session": "x" * 32}),
        ("nb_growth_1-session-a-sesstime-1440", {"session": "a", "sesstime": 1440}),
    ],
)
def test_parse_username_accepts_the_grammar(username: str, expected: dict[str, Any]) -> None:
    t = parse_username(username)
    assert t.base == "nb_growth_1"
    for name in ("country", "city", "asn", "exit_class", "session", "sesstime"):
        assert getattr(t, name) == expected.get(name)
    if "asn" in expected:
        assert t.asn_label == "AS" + expected["asn"]


@pytest.mark.parametrize(
    ("username", "param"),
    [
        ("", "username"),
        ("nb.growth", "username"),
        ("nb_growth-foo-bar", "foo"),
        ("nb_growth-country", "country"),
        ("nb_growth-country-", "country"),
        ("nb_growth-country-us-country-de", "country"),
        ("nb_growth-city-paris-country-fr", "country"),
        ("nb_growth-country-USA", "country"),
        ("nb_growth-country-US", "country"),
        ("nb_growth-city-paris", "city"),
        ("nb_growth-country-fr-city-Paris", "city"),
        ("nb_growth-country-us-asn-AS7922", "asn"),
        ("nb_growth-asn-7922", "asn"),
        ("nb_growth-class-satellite", "class"),
        ("nb_growth-session-" + "x" * 33, "session"),
        ("nb_growth-session-ab_cd", "session"),
        ("nb_growth-session-ab-cd", "cd"),
        ("nb_growth-sesstime-10", "sesstime"),
        ("nb_growth-session-a-sesstime-0", "sesstime"),
        ("nb_growth-session-a-sesstime-1441", "sesstime"),
        ("nb_growth-session-a-sesstime-1.5", "sesstime"),
        ("nb_growth-sesstime-5-session-a", "session"),
    ],
)
def test_parse_username_refuses_naming_the_parameter(username: str, param: str) -> None:
    with pytest.raises(TargetingError) as info:
        parse_username(username)
    assert info.value.param == param


def test_class_must_be_offered_by_the_country() -> None:
    classes = {"cl": ["residential"], "us": ["residential", "isp"]}
    check_against_pool(parse_username("u-country-us-class-isp"), classes)
    check_against_pool(parse_username("u-country-zz-class-isp"), classes)  # no_exit later
    with pytest.raises(TargetingError) as info:
        check_against_pool(parse_username("u-country-cl-class-isp"), classes)
    assert info.value.param == "class"


@pytest.mark.parametrize("module", ["targeting", "gateway", "site"])
def test_sandbox_modules_share_only_the_protocol_with_the_client(module: str) -> None:
    import ast
    import importlib

    mod = importlib.import_module(f"proxaro_scrape.sandbox.{module}")
    tree = ast.parse(open(mod.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    client_side = {"proxaro_scrape.gateway", "proxaro_scrape.api", "proxaro_scrape.webhooks"}
    assert not {
        m for m in imported if m.split(".")[:2] and ".".join(m.split(".")[:2]) in client_side
    }


# ---------------------------------------------------------------------------- plain clients


def test_http_and_https_through_curl(sb: Sandbox) -> None:
    for url in (sb.site_url, sb.site_https_url):
        result = curl(sb, url + "/ip")
        assert result.returncode == 0, result.stderr
        headers, body = curl_json(result.stdout)
        if url.startswith("http:"):
            assert as_tuple(body) == exit_of(headers)
        else:
            # The exit headers come on the CONNECT answer, which curl -i prints first.
            established = result.stdout.replace("\r\n", "\n").split("\n\n")[0]
            assert established.startswith("HTTP/1.1 200 Connection established")
            assert f"X-Proxaro-Exit-IP: {body['ip']}" in established
            assert f"X-Proxaro-Exit-Country: {body['country']}" in established


def test_http_and_https_through_requests(sb: Sandbox) -> None:
    px = proxy(sb, "-country-gb")
    with requests.Session() as s:
        s.proxies = {"http": px, "https": px}
        r = s.get(sb.site_url + "/ip", timeout=10)
        assert r.status_code == 200
        assert as_tuple(r.json()) == exit_of(r.headers)
        assert r.json()["country"] == "gb"
        # verify= on the call: a Session's verify loses to REQUESTS_CA_BUNDLE from the env.
        r = s.get(sb.site_https_url + "/ip", timeout=10, verify=sb.ca_cert)
        assert r.status_code == 200
        assert r.json()["country"] == "gb"


def test_http_and_https_through_httpx(sb: Sandbox) -> None:
    px = proxy(sb, "-country-jp-class-isp")
    with httpx.Client(proxy=px, verify=sb.client_ssl_context(), timeout=10) as client:
        r = client.get(sb.site_url + "/ip")
        assert r.status_code == 200
        assert as_tuple(r.json()) == exit_of(r.headers)
        assert (r.json()["country"], r.json()["exit_class"]) == ("jp", "isp")
        r = client.get(sb.site_https_url + "/ip")
        assert (r.json()["country"], r.json()["exit_class"]) == ("jp", "isp")


async def test_async_httpx_through_the_gateway(sb: Sandbox) -> None:
    px = proxy(sb, "-country-fr")
    async with httpx.AsyncClient(proxy=px, verify=sb.client_ssl_context(), timeout=10) as c:
        rs = await asyncio.gather(*(c.get(sb.site_url + "/ip") for _ in range(8)))
        assert {r.json()["country"] for r in rs} == {"fr"}
        r = await c.get(sb.site_https_url + "/headers")
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("suffix", "want"),
    [
        ("-country-us", {"country": "us"}),
        ("-country-de-class-mobile_5g", {"country": "de", "exit_class": "mobile_5g"}),
        ("-country-us-asn-7922", {"country": "us", "asn": "AS7922", "exit_class": "residential"}),
        ("-country-gb-asn-2856-class-residential", {"country": "gb", "asn": "AS2856"}),
        ("-class-datacenter", {"exit_class": "datacenter"}),
        ("-country-us-city-seattle", {"country": "us"}),
    ],
)
def test_targeting_reaches_the_site(sb: Sandbox, suffix: str, want: dict[str, str]) -> None:
    for _ in range(3):
        r = get(sb, "/ip", suffix)
        assert r.status == 200, r.body
        body = json.loads(r.body)
        assert as_tuple(body) == exit_of(r.headers)
        for key, value in want.items():
            assert body[key] == value
        if "-city-" in suffix:
            ex = next(e for e in sb.world.exits if e.ip == body["ip"])
            assert ex.city == "seattle"


def test_each_exit_is_a_distinct_client_address(sb: Sandbox) -> None:
    seen = {json.loads(get(sb, "/ip").body)["ip"] for _ in range(12)}
    assert len(seen) >= 6  # rotating: a new exit for each request, out of hundreds


# ---------------------------------------------------------------------------- sessions


def test_sticky_session_keeps_its_exit_rotating_does_not(sb: Sandbox) -> None:
    sticky = [get(sb, "/ip", "-country-us-session-cart42") for _ in range(5)]
    assert {r.header("X-Proxaro-Session") for r in sticky} == {"cart42"}
    assert len({json.loads(r.body)["ip"] for r in sticky}) == 1
    rotating = [get(sb, "/ip", "-country-us") for _ in range(6)]
    assert all(r.header("X-Proxaro-Session") is None for r in rotating)
    assert len({json.loads(r.body)["ip"] for r in rotating}) > 1
    # Another session id, or another account-side username, is another session.
    other = get(sb, "/ip", "-country-us-session-cart43")
    assert other.header("X-Proxaro-Session") == "cart43"


def test_sticky_session_lives_sesstime_minutes_of_world_time(sb: Sandbox) -> None:
    first = json.loads(get(sb, "/ip", "-session-s1-sesstime-2").body)["ip"]
    sb.call(sb.world.clock.advance, 100)
    assert json.loads(get(sb, "/ip", "-session-s1-sesstime-2").body)["ip"] == first
    sb.call(sb.world.clock.advance, 30)  # 130 s > 2 minutes
    assert json.loads(get(sb, "/ip", "-session-s1-sesstime-2").body)["ip"] != first


def test_tunnels_rotate_per_connect_and_stick_with_a_session(sb: Sandbox) -> None:
    rotating = {connect(sb).header("X-Proxaro-Exit-IP") for _ in range(6)}
    assert len(rotating) > 1
    sticky = [connect(sb, "-session-tls1") for _ in range(4)]
    assert {r.header("X-Proxaro-Exit-IP") for r in sticky} == {
        sticky[0].header("X-Proxaro-Exit-IP")
    }
    assert {r.header("X-Proxaro-Session") for r in sticky} == {"tls1"}
    # The same session over plain HTTP is the same exit.
    assert get(sb, "/ip", "-session-tls1").header("X-Proxaro-Exit-IP") == sticky[0].header(
        "X-Proxaro-Exit-IP"
    )


def test_tls_through_a_raw_tunnel_sees_the_exit(sb: Sandbox) -> None:
    target = sb.site_https_url.removeprefix("https://")
    with raw(sb) as conn:
        est = conn.request("CONNECT", target, auth=basic(*creds(sb, "-country-nl")))
        assert est.status == 200
        assert est.header("X-Proxaro-Exit-Country") == "nl"
        conn.start_tls(sb.client_ssl_context(), "127.0.0.1")
        conn.send(f"GET /ip HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        body = json.loads(conn.read_response().body)
    assert body["ip"] == est.header("X-Proxaro-Exit-IP")
    assert body["country"] == "nl"


# ---------------------------------------------------------------------------- errors


def _allowlist_other_ip(sb: Sandbox) -> None:
    w = sb.world
    w.allowlist.append(
        AllowlistEntry("al_test", "198.51.100.42/32", "elsewhere", w.clock.now(), w.account.id)
    )


STARTER = ("plan", {"plan": "starter"})
DE_DOWN = ("country", {"code": "de", "pool_health": "down"})
AS3320_DOWN = ("asn", {"asn": "AS3320", "pool_health": "down"})
ERROR_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    # (X-Proxaro-Error, id, how)
    ("auth_failed", "wrong-password", {"password": "not-the-password"}),
    ("auth_failed", "no-header", {"auth": False}),
    ("auth_failed", "other-user", {"user": "nb_growth_00000000"}),
    ("bad_targeting", "malformed", {"suffix": "-country-USA"}),
    ("bad_targeting", "unknown-key", {"suffix": "-region-eu"}),
    ("bad_targeting", "class-not-offered", {"suffix": "-country-cl-class-isp"}),
    ("source_not_allowed", "allowlist", {"setup": _allowlist_other_ip}),
    ("scope_required", "starter", {"control": STARTER, "suffix": "-country-us-asn-7922"}),
    ("no_exit", "unknown-country", {"suffix": "-country-zz"}),
    ("no_exit", "unknown-city", {"suffix": "-country-us-city-atlantis"}),
    ("no_exit", "country-down", {"control": DE_DOWN, "suffix": "-country-de"}),
    ("no_exit", "asn-down", {"control": AS3320_DOWN, "suffix": "-country-de-asn-3320"}),
    ("no_exit", "asn-elsewhere", {"suffix": "-country-fr-asn-7922"}),
    ("exit_failed", "drop", {"control": ("gateway", {"exit_drop_rate": 1.0})}),
    ("target_timeout", "slow", {"control": ("gateway", {"target_timeout": 0.3}), "slow": True}),
    ("target_not_allowed", "example.com", {"host": "example.com"}),
    ("target_not_allowed", "public-ip", {"host": "93.184.216.34"}),
]  # fmt: skip


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
@pytest.mark.parametrize(
    ("code", "how"), [(c, h) for c, _, h in ERROR_ROWS], ids=[f"{c}-{i}" for c, i, _ in ERROR_ROWS]
)
def test_every_gateway_error_row(sb: Sandbox, method: str, code: str, how: dict[str, Any]) -> None:
    if "setup" in how:
        sb.call(how["setup"], sb)
    if "control" in how:
        name, body = how["control"]
        sb.control(name, **body)
    user, pw = creds(sb, how.get("suffix", ""), how.get("password"))
    if "user" in how:
        user = how["user"]
    auth = basic(user, pw) if how.get("auth", True) else None
    hole = BlackHole() if how.get("slow") and method == "CONNECT" else None
    site_port = sb.site_url.rsplit(":", 1)[1]
    host = how.get("host", "127.0.0.1")
    try:
        if method == "CONNECT":
            port = hole.port if hole else int(sb.site_https_url.rsplit(":", 1)[1])
            target = f"{host}:{port if host == '127.0.0.1' else 443}"
        else:
            path = "/delay/3000" if how.get("slow") else "/ip"
            target = (
                f"http://{host}:{site_port}{path}" if host == "127.0.0.1" else f"http://{host}/"
            )
        before = sb.world.counters[f"gateway.errors:{code}"]
        site_before = sb.world.counters["site.requests"]
        with raw(sb) as conn:
            r = conn.request(method, target, auth=auth)
    finally:
        if hole:
            hole.close()
    assert r.status == protocol.GATEWAY_ERROR_STATUS[code], r.body
    assert r.error == code
    assert code.encode() in r.body
    assert sb.world.counters[f"gateway.errors:{code}"] == before + 1
    if code == "auth_failed":
        assert r.header("Proxy-Authenticate") == 'Basic realm="proxaro"'
    if code in ("exit_failed", "target_timeout"):
        assert r.header("X-Proxaro-Exit-IP")  # which exit failed, for the client's books
    # No stopwatch: a 504 target_timeout for a page that takes 3 s, or a connect that never
    # completes, is the gateway giving up before the target answered; every other error is
    # answered without the site seeing a request at all.
    if code != "target_timeout":
        assert sb.world.counters["site.requests"] == site_before


def test_bad_targeting_names_the_parameter_and_is_checked_after_auth(sb: Sandbox) -> None:
    r = get(sb, "/ip", "-country-us-sesstime-5")
    assert (r.status, r.error) == (400, "bad_targeting")
    assert b"sesstime" in r.body
    # A stranger learns nothing about the targeting: auth comes first.
    r = get(sb, "/ip", "-country-USA", password="wrong")
    assert (r.status, r.error) == (407, "auth_failed")


def test_degraded_asn_is_routed_around_unless_named(sb: Sandbox) -> None:
    # AS22394 (us, mobile_5g) is degraded from the start; it is the only us mobile_5g ASN.
    sb.control("gateway", degraded_failure_rate=1.0)
    assert get(sb, "/ip", "-country-us-asn-22394").error == "exit_failed"
    assert get(sb, "/ip", "-country-us-class-mobile_5g").error == "exit_failed"
    for _ in range(10):
        r = get(sb, "/ip", "-country-us")
        assert r.status == 200
        assert r.header("X-Proxaro-Exit-ASN") != "AS22394"


def _degraded_run(
    make_sandbox: SandboxFactory, seed: int
) -> list[tuple[int, str | None, str | None]]:
    out = []
    box = make_sandbox(seed=seed, components={"gateway", "site"})
    with raw(box) as conn:
        auth = basic(*creds(box, "-country-us-asn-22394"))
        for _ in range(30):
            r = conn.request("GET", box.site_url + "/ip", auth=auth)
            out.append((r.status, r.error, r.header("X-Proxaro-Exit-IP")))
    return out


def test_degraded_asn_failures_are_deterministic_under_the_seed(
    make_sandbox: SandboxFactory,
) -> None:
    first, second = _degraded_run(make_sandbox, 3), _degraded_run(make_sandbox, 3)
    assert first == second
    failures = [s for s, e, _ in first if s == 502]
    assert all(e == "exit_failed" for s, e, _ in first if s == 502)
    assert 0 < len(failures) < 30  # 0.3 of them, give or take
    assert _degraded_run(make_sandbox, 4) != first


# ---------------------------------------------------------------------------- auth and rotation


def test_old_password_works_for_the_grace_then_407(sb: Sandbox) -> None:
    old = sb.world.credentials.password
    sb.control("grace", seconds=30)
    new = sb.control("rotate")["password"]
    assert new != old
    assert get(sb, "/ip", password=old).status == 200
    assert get(sb, "/ip", password=new).status == 200
    sb.control("clock", advance=20)
    assert get(sb, "/ip", password=old).status == 200  # still inside the grace
    sb.control("clock", advance=11)
    r = get(sb, "/ip", password=old)
    assert (r.status, r.error) == (407, "auth_failed")
    assert r.header("Proxy-Authenticate") == protocol.PROXY_AUTHENTICATE_VALUE
    assert get(sb, "/ip", password=new).status == 200


def test_rotation_drops_no_tunnel_nor_request_in_flight(sb: Sandbox) -> None:
    sb.control("grace", seconds=5)
    px = proxy(sb)
    tunnels = sb.world.counters["gateway.tunnels"]
    with httpx.Client(proxy=px, verify=sb.client_ssl_context(), timeout=20) as client:
        assert client.get(sb.site_https_url + "/ip").status_code == 200
        slow: dict[str, Any] = {}

        def slow_request() -> None:
            with requests.get(
                sb.site_url + "/delay/2000", proxies={"http": px}, timeout=20
            ) as resp:
                slow["status"] = resp.status_code

        site_before = sb.world.counters["site.requests"]
        thread = threading.Thread(target=slow_request)
        thread.start()
        # The rotation comes once the slow request is at the site, i.e. in flight.
        eventually(lambda: sb.world.counters["site.requests"] > site_before)
        sb.control("rotate")
        sb.control("clock", advance=10)  # the old password is now refused...
        assert get(sb, "/ip", password=creds(sb)[1] + "x").status == 407
        # ...but the tunnel authenticated before goes on, and so does the slow request.
        for _ in range(3):
            assert client.get(sb.site_https_url + "/ip").status_code == 200
        thread.join(20)
        assert slow["status"] == 200
    assert sb.world.counters["gateway.tunnels"] == tunnels + 1
    r = requests.get(sb.site_url + "/ip", proxies={"http": px}, timeout=10)
    assert r.status_code == 407


def test_one_keep_alive_connection_carries_two_usernames(sb: Sandbox) -> None:
    before = sb.world.counters["gateway.connections"]
    with raw(sb) as conn:
        us = conn.request("GET", sb.site_url + "/ip", auth=basic(*creds(sb, "-country-us")))
        de = conn.request("GET", sb.site_url + "/ip", auth=basic(*creds(sb, "-country-de")))
        bad = conn.request("GET", sb.site_url + "/ip", auth=basic(*creds(sb, "", "nope")))
        again = conn.request("GET", sb.site_url + "/ip", auth=basic(*creds(sb, "-class-isp")))
    assert json.loads(us.body)["country"] == "us"
    assert json.loads(de.body)["country"] == "de"
    assert bad.status == 407
    assert json.loads(again.body)["exit_class"] == "isp"
    assert sb.world.counters["gateway.connections"] == before + 1


def test_allowlist_with_this_source_lets_it_in(sb: Sandbox) -> None:
    sb.call(_allowlist_other_ip, sb)
    assert get(sb, "/ip").error == "source_not_allowed"
    w = sb.world
    sb.call(
        w.allowlist.append,
        AllowlistEntry("al_me", "127.0.0.0/8", "me", w.clock.now(), w.account.id),
    )
    assert get(sb, "/ip").status == 200


# ---------------------------------------------------------------------------- headers


def test_no_proxy_header_reaches_the_target(sb: Sandbox) -> None:
    px = proxy(sb)
    seen = []
    r = requests.get(sb.site_url + "/headers", proxies={"http": px}, timeout=10)
    seen.append(r.json()["headers"])
    with httpx.Client(proxy=px, verify=sb.client_ssl_context(), timeout=10) as client:
        seen.append(client.get(sb.site_url + "/headers").json()["headers"])
        # Inside a tunnel the client's own headers pass untouched (TLS), but never Proxy-*.
        tunnelled = client.get(sb.site_https_url + "/headers").json()["headers"]
        assert not {n for n in tunnelled if n.lower().startswith("proxy-")}
    seen.append(curl_json(curl(sb, sb.site_url + "/headers").stdout)[1]["headers"])
    with raw(sb) as conn:
        r2 = conn.request(
            "GET",
            sb.site_url + "/headers",
            auth=basic(*creds(sb)),
            headers={
                "Proxy-Connection": "keep-alive",
                "Proxy-Foo": "bar",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "1",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "X-Kept": "yes",
            },
        )
    raw_seen = json.loads(r2.body)["headers"]
    seen.append(raw_seen)
    assert raw_seen["X-Kept"] == "yes"
    for headers in seen:
        names = {n.lower() for n in headers}
        assert not {n for n in names if n.startswith("proxy-")}, headers
        assert not names & {"connection", "keep-alive", "te", "x-hop", "upgrade"}, headers


def test_no_proxy_authorization_across_redirects(sb: Sandbox) -> None:
    px = proxy(sb)
    port = sb.site_url.rsplit(":", 1)[1]
    targets = [
        f"{sb.site_url}/redirect?to=/headers",  # same host
        f"{sb.site_url}/redirect?to=http://localhost:{port}/headers",  # another host
        f"{sb.site_https_url}/redirect?to={sb.site_url}/headers",  # HTTPS to HTTP
    ]
    with requests.Session() as s:
        s.proxies = {"http": px, "https": px}
        for url in targets:
            r = s.get(url, timeout=10, verify=sb.ca_cert)
            assert r.status_code == 200 and r.history, url
            names = {n.lower() for n in r.json()["headers"]}
            assert "proxy-authorization" not in names and "authorization" not in names


def test_exit_headers_from_the_target_cannot_be_spoofed(sb: Sandbox) -> None:
    # The site never sends X-Proxaro-*; the gateway's own headers are the only ones, once.
    r = get(sb, "/ip", "-session-one")
    assert r.header("X-Proxaro-Exit-IP") == json.loads(r.body)["ip"]
    assert "," not in (r.header("X-Proxaro-Exit-IP") or "")
    assert r.error is None


# ---------------------------------------------------------------------------- pool health


def test_a_down_region_and_its_recovery(sb: Sandbox) -> None:
    assert json.loads(get(sb, "/ip", "-country-de").body)["country"] == "de"
    sticky = get(sb, "/ip", "-country-de-session-keep")
    assert sticky.status == 200
    sb.control("country", code="de", pool_health="down")
    r = get(sb, "/ip", "-country-de")
    assert (r.status, r.error) == (502, "no_exit")
    assert connect(sb, "-country-de").error == "no_exit"
    # The session's exit went away with its region: one exit_failed, then no_exit.
    assert get(sb, "/ip", "-country-de-session-keep").error == "exit_failed"
    assert get(sb, "/ip", "-country-de-session-keep").error == "no_exit"
    for _ in range(15):
        assert json.loads(get(sb, "/ip").body)["country"] != "de"
    sb.control("country", code="de", pool_health="healthy")
    r = get(sb, "/ip", "-country-de")
    assert r.status == 200 and json.loads(r.body)["country"] == "de"
    assert connect(sb, "-country-de").status == 200


def test_a_down_asn_and_its_recovery(sb: Sandbox) -> None:
    sb.control("asn", asn="AS7922", pool_health="down")
    assert get(sb, "/ip", "-country-us-asn-7922").error == "no_exit"
    r = get(sb, "/ip", "-country-us-class-residential")  # AS7018 is residential too
    assert r.status == 200 and r.header("X-Proxaro-Exit-ASN") == "AS7018"
    sb.control("asn", asn="AS7922", pool_health="healthy")
    assert get(sb, "/ip", "-country-us-asn-7922").header("X-Proxaro-Exit-ASN") == "AS7922"


# ---------------------------------------------------------------------------- safety


def test_non_loopback_targets_are_refused_at_once_without_dns(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    hosts = [
        "example.com",
        "localhost.example.com",
        "127.0.0.1.nip.io",
        "8.8.8.8",
        "10.0.0.1",
        "[2001:db8::1]",
        "0.0.0.0",
    ]
    with raw(sb) as conn:
        for host in hosts:
            r = conn.request("GET", f"http://{host}/", auth=basic(*creds(sb)))
            assert (r.status, r.error) == (403, "target_not_allowed"), host
            r = conn.request("CONNECT", f"{host}:443", auth=basic(*creds(sb)))
            assert (r.status, r.error) == (403, "target_not_allowed"), host
    # The plain clients too, with the proxy URL as their users would write it.
    r = requests.get("http://example.com/", proxies={"http": proxy(sb)}, timeout=5)
    assert (r.status_code, r.headers["X-Proxaro-Error"]) == (403, "target_not_allowed")
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get("https://example.com/", proxies={"https": proxy(sb)}, timeout=5)
    assert not [h for h in looked_up if "example" in h or "nip.io" in h], looked_up
    assert sb.world.counters["site.requests"] == 0


def test_https_url_in_absolute_form_is_refused(sb: Sandbox) -> None:
    with raw(sb) as conn:
        r = conn.request("GET", sb.site_https_url + "/ip", auth=basic(*creds(sb)))
    assert (r.status, r.error) == (403, "target_not_allowed")


def test_malformed_http_gets_a_400_and_the_connection_closes(sb: Sandbox) -> None:
    with raw(sb) as conn:
        conn.send(b"NONSENSE\r\n\r\n")
        r = conn.read_response()
        assert r.status == 400
        assert conn.at_eof()


# ---------------------------------------------------------------------------- bodies


def test_chunked_upload(sb: Sandbox) -> None:
    parts = [bytes([i]) * (1000 + i * 37) for i in range(40)]
    want = hashlib.sha256(b"".join(parts)).hexdigest()
    r = requests.post(
        sb.site_url + "/echo", data=iter(parts), proxies={"http": proxy(sb)}, timeout=20
    )
    body = r.json()
    assert body["transfer_encoding"] == "chunked"
    assert (body["bytes"], body["sha256"]) == (sum(map(len, parts)), want)


def test_large_uploads_stream_with_content_length_and_expect(sb: Sandbox, tmp_path: Any) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: over the gateway's small-body buffer
    with httpx.Client(proxy=proxy(sb), timeout=30) as client:
        body = client.put(sb.site_url + "/echo", content=data).json()
    assert (body["bytes"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert body["content_length"] == str(len(data))
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    # curl sends "Expect: 100-continue" for a body this large; the gateway answers 100 itself.
    result = curl(
        sb, sb.site_url + "/echo", "-H", "Expect: 100-continue", "--data-binary", f"@{path}"
    )
    _, body = curl_json(result.stdout)
    assert body["bytes"] == len(data)


def test_streaming_download(sb: Sandbox) -> None:
    n, size = 20, 32768
    with requests.get(
        sb.site_url + f"/stream/{n}?size={size}", proxies={"http": proxy(sb)}, timeout=20
    ) as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert r.headers["X-Proxaro-Exit-IP"]
        assert r.content == b"".join(bytes([i]) * size for i in range(n))
    # Bytes come while the site still writes: this stream takes the site at least 60 s (a
    # chunk a second), longer than the client's read timeout, so a gateway that held the
    # answer back until its end would fail here; the client leaves after two chunks.
    with requests.get(
        sb.site_url + f"/stream/60?size={size}&delay_ms=1000",
        proxies={"http": proxy(sb)},
        stream=True,
        timeout=20,
    ) as r:
        chunks = r.iter_content(chunk_size=size)
        assert [next(chunks), next(chunks)] == [bytes([0]) * size, bytes([1]) * size]


def test_large_download_with_content_length(sb: Sandbox) -> None:
    n = 3_000_000
    with httpx.Client(proxy=proxy(sb), timeout=30) as client:
        r = client.get(sb.site_url + f"/bytes/{n}")
    assert r.headers["Content-Length"] == str(n)
    assert r.content == (bytes(range(256)) * (n // 256 + 1))[:n]


def test_head_204_304_keep_the_connection_in_step(sb: Sandbox) -> None:
    auth = basic(*creds(sb))
    with raw(sb) as conn:
        head = conn.request("HEAD", sb.site_url + "/bytes/1000", auth=auth)
        assert (head.status, head.header("Content-Length"), head.body) == (200, "1000", b"")
        assert conn.request("GET", sb.site_url + "/status/204", auth=auth).status == 204
        assert conn.request("GET", sb.site_url + "/status/304", auth=auth).status == 304
        refused = conn.request("HEAD", sb.site_url + "/ip", auth=basic(*creds(sb, "-country-zz")))
        assert (refused.status, refused.body) == (502, b"")
        r = conn.request("GET", sb.site_url + "/status/418", auth=auth)
        assert (r.status, r.body, r.error) == (418, b"status 418\n", None)
        last = conn.request("GET", sb.site_url + "/ip", auth=auth)
        assert last.status == 200 and json.loads(last.body)["ip"]


def test_the_target_closing_is_an_exit_failure(sb: Sandbox) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with raw(sb) as conn:
        r = conn.request("GET", f"http://127.0.0.1:{port}/", auth=basic(*creds(sb)))
        assert (r.status, r.error) == (502, "exit_failed")
        r = conn.request("CONNECT", f"127.0.0.1:{port}", auth=basic(*creds(sb)))
        assert (r.status, r.error) == (502, "exit_failed")


# ---------------------------------------------------------------------------- accounting


def test_bytes_and_sessions_are_accounted(sb: Sandbox) -> None:
    w = sb.world
    before_sessions = len(w.sessions)
    period = w.period_key()
    before_isp = sb.call(lambda: w.usage.get(period, {}).get(("class", "isp"), 0))
    r = get(sb, "/bytes/10000", "-country-us-class-isp")
    assert r.status == 200
    rec = w.sessions[-1]
    assert len(w.sessions) == before_sessions + 1
    assert (rec.exit_ip, rec.exit_country, rec.exit_class) == (
        r.header("X-Proxaro-Exit-IP"),
        "us",
        "isp",
    )
    assert rec.bytes_recv > 10000 and rec.bytes_sent > 50
    # Usage is handed to the world on the next loop turn: read it on the loop, as the API does.
    used_isp = sb.call(lambda: w.usage[period][("class", "isp")])
    assert used_isp >= before_isp + rec.bytes_sent + rec.bytes_recv
    # A sticky session is one record, growing with its requests.
    for _ in range(3):
        get(sb, "/bytes/1000", "-country-us-class-isp-session-acct")
    assert len(w.sessions) == before_sessions + 2
    assert w.sessions[-1].bytes_recv > 3000
    assert sb.call(lambda: w.usage[period][("class", "isp")]) > used_isp + 3000
    # A tunnel is one record with the bytes both ways.
    with httpx.Client(proxy=proxy(sb, "-country-fr"), verify=sb.client_ssl_context()) as c:
        c.get(sb.site_https_url + "/bytes/5000")
    # The tunnel is accounted when it ends, which the client does not wait for.
    eventually(lambda: w.sessions[-1].exit_country == "fr")
    assert w.sessions[-1].bytes_recv > 5000
    assert w.counters["gateway.requests"] >= 4 and w.counters["gateway.tunnels"] == 1


# ---------------------------------------------------------------------------- lifecycle


async def test_close_ends_client_connections_and_tunnels() -> None:
    world = World(seed=1)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
        writer.close()

    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    gw = GatewayServer(world)
    await gw.start()
    assert gw.port > 0
    auth = basic(world.credentials.username, world.credentials.password)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 Connection established")
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", gw.port)
    await asyncio.wait_for(gw.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", gw.port)
    for w in (writer, idle_writer):
        w.close()
    target.close()
    await target.wait_closed()
    assert world.counters["gateway.tunnels"] == 1
    assert world.sessions[-1].bytes_sent == 4


def test_tls_context_is_verified_not_skipped(sb: Sandbox) -> None:
    # Without the sandbox CA, TLS through the tunnel fails: verification is real.
    ctx = ssl.create_default_context()
    with httpx.Client(proxy=proxy(sb), verify=ctx, timeout=10) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(sb.site_https_url + "/ip")


# ---------------------------------------------------------------------------- odd targets


class ScriptedTarget:
    """A loopback HTTP target answering scripted bytes per path (to test odd answers)."""

    def __init__(self) -> None:
        import socketserver

        self.connections = 0
        target = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                target.connections += 1
                buf = b""
                served = 0
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = self.request.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    while len(buf) < length:
                        buf += self.request.recv(65536)
                    buf = buf[length:]
                    path = head.split(b" ")[1]
                    served += 1
                    if path == b"/flaky" and served > 1:
                        return  # a kept-alive connection the target has given up on
                    self.request.sendall(SCRIPTS[path])
                    if path == b"/until-close":
                        return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SCRIPTS = {
    b"/until-close": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello until close",
    b"/spoof": (
        b"HTTP/1.1 200 OK\r\nX-Proxaro-Error: no_exit\r\nX-Proxaro-Exit-IP: 1.2.3.4\r\n"
        b"Proxy-Authenticate: Basic\r\nConnection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: 1\r\nX-Fine: yes\r\nContent-Length: 2\r\n\r\nok"
    ),
    b"/noreason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    b"/early": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ),
    b"/flaky": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.fixture
def scripted() -> Iterator[ScriptedTarget]:
    target = ScriptedTarget()
    yield target
    target.close()


def test_odd_answers_are_relayed_right(sb: Sandbox, scripted: ScriptedTarget) -> None:
    auth = basic(*creds(sb))
    with raw(sb) as conn:
        r = conn.request("GET", scripted.url("/spoof"), auth=auth)
        assert (r.status, r.body, r.header("X-Fine")) == (200, b"ok", "yes")
        assert r.error is None  # the target cannot speak for the gateway
        assert r.header("X-Proxaro-Exit-IP") != "1.2.3.4"
        assert r.header("Proxy-Authenticate") is None and r.header("X-Secret-Hop") is None
        r = conn.request("GET", scripted.url("/noreason"), auth=auth)
        assert (r.status, r.body) == (200, b"ok")
        r = conn.request("GET", scripted.url("/early"), auth=auth)
        assert r.status == 103  # the interim answer is relayed...
        r = conn.read_response()
        assert (r.status, r.body) == (200, b"ok")  # ...then the final one
        r = conn.request("GET", scripted.url("/until-close"), auth=auth)
        assert (r.status, r.body) == (200, b"hello until close")
        assert r.header("Connection") == "close"
        assert conn.at_eof()


def test_a_pooled_connection_the_target_dropped_is_retried_once(
    sb: Sandbox, scripted: ScriptedTarget
) -> None:
    auth = basic(*creds(sb, "-session-pool1"))  # one exit, so one pooled connection
    with raw(sb) as conn:
        assert conn.request("GET", scripted.url("/flaky"), auth=auth).status == 200
        # The target drops the kept-alive connection when the second request arrives on it.
        r = conn.request("GET", scripted.url("/flaky"), auth=auth)
        assert (r.status, r.body) == (200, b"ok")  # resent on a fresh connection
        assert scripted.connections == 2
        # A POST is not sent twice: the dropped connection is the exit's failure.
        r = conn.request("POST", scripted.url("/flaky"), auth=auth, body=b"x")
        assert (r.status, r.error) == (502, "exit_failed")


def test_whole_sandbox_reports_gateway_traffic_through_the_api(sandbox: Sandbox) -> None:
    """With every component up (the conftest fixture), traffic shows in /v1/usage and sessions."""
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    with httpx.Client(base_url=sandbox.api_url, headers=headers, timeout=10) as api:
        before = api.get("/v1/usage").json()["total_bytes"]
        with httpx.Client(proxy=proxy(sandbox, "-country-jp"), timeout=10) as client:
            r = client.get(sandbox.site_url + "/bytes/20000")
        assert r.status_code == 200
        assert api.get("/v1/usage").json()["total_bytes"] >= before + 20000
        latest = api.get("/v1/sessions", params={"limit": 1}).json()["data"][0]
        assert latest["exit_ip"] == r.headers["X-Proxaro-Exit-IP"]
        assert latest["exit_country"] == "jp" and latest["bytes_recv"] > 20000
    counters = httpx.get(f"{sandbox.api_url}/_sandbox/counters", timeout=10).json()
    assert counters["gateway.requests"] >= 1 and counters["site.requests"] >= 1


async def test_a_tunnel_ends_when_the_target_closes() -> None:
    world = World(seed=2)

    async def says_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    target = await asyncio.start_server(says_bye, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    gw = GatewayServer(world)
    await gw.start()
    try:
        auth = basic(world.credentials.username, world.credentials.password)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        line = f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"
        writer.write(line.encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        # The client never closes its side; the gateway still ends the tunnel.
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"
        writer.close()
        await aeventually(lambda: world.sessions)
        assert world.sessions[-1].bytes_recv == 3
    finally:
        await gw.close()
        target.close()
        await target.wait_closed()
