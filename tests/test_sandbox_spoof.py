"""The demo site's spoof pages: a target that sets ``X-Proxaro-*`` headers in its own answers.

Protocol section 3: over plain HTTP the gateway strips every ``X-Proxaro-*`` header the target
sent before adding its own, so there they are the gateway's; inside a CONNECT tunnel it neither
sees nor changes the site's answers, so there they arrive as the site sent them.
"""

from __future__ import annotations

import json

import httpx
import pytest

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import Sandbox
from tests._proxy_client import RawConn, Response, basic
from tests.conftest import SandboxFactory

#: (status, the X-Proxaro-Error the site sends by default for it).
DEFAULTS = [
    (200, "bad_targeting"),
    (400, "bad_targeting"),
    (403, "source_not_allowed"),
    (407, "auth_failed"),
    (500, "no_exit"),
    (502, "no_exit"),
    (504, "target_timeout"),
]
FAKE_EXIT = {
    "x-proxaro-exit-ip": "203.0.113.7",
    "x-proxaro-exit-country": "zz",
    "x-proxaro-exit-asn": "AS64496",
    "x-proxaro-exit-class": "datacenter",
    "x-proxaro-session": "spoofed",
}


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api", "gateway", "site"})


def creds(sb: Sandbox, suffix: str = "") -> tuple[str, str]:
    cred = sb.world.credentials
    return cred.username + suffix, cred.password


def get(sb: Sandbox, path: str, suffix: str = "") -> Response:
    """One plain-HTTP request through the gateway, every byte of the answer visible."""
    with RawConn(sb.gateway_host, sb.gateway_port) as conn:
        return conn.request("GET", sb.site_url + path, auth=basic(*creds(sb, suffix)))


def proxaro_headers(headers: httpx.Headers | dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-proxaro-")}


def gateway_errors(sb: Sandbox) -> int:
    return sum(n for k, n in sb.world.counters.items() if k.startswith("gateway.errors:"))


# ---------------------------------------------------------------------------- the pages


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_spoof_pages_answer_as_asked_on_both_ports(sb: Sandbox, scheme: str) -> None:
    base = sb.site_url if scheme == "http" else sb.site_https_url
    with httpx.Client(base_url=base, verify=sb.client_ssl_context(), timeout=10) as client:
        for status, code in DEFAULTS:
            r = client.get(f"/spoof/{status}")
            assert r.status_code == status
            assert proxaro_headers(r.headers) == {**FAKE_EXIT, "x-proxaro-error": code}
            assert r.json() == {"spoofed_by": "site", "status": status, "error": code}
            challenge = r.headers.get("Proxy-Authenticate")
            assert challenge == ('Basic realm="site"' if status == 407 else None)


def test_spoof_error_codes_can_be_chosen_or_left_out(sb: Sandbox) -> None:
    with httpx.Client(base_url=sb.site_url, timeout=10) as client:
        r = client.get("/spoof/502", params={"error": "exit_failed"})
        assert (r.status_code, r.headers["X-Proxaro-Error"]) == (502, "exit_failed")
        bare = client.get("/spoof/407", params={"error": ""})
        assert bare.status_code == 407 and "X-Proxaro-Error" not in bare.headers
        assert bare.headers["Proxy-Authenticate"] == 'Basic realm="site"'
        assert bare.json()["error"] is None
        head = client.head("/spoof/502")
        assert (head.status_code, head.headers["X-Proxaro-Error"], head.content) == (
            502,
            "no_exit",
            b"",
        )
        empty = client.post("/spoof/204")
        assert (empty.status_code, empty.content) == (204, b"")
        assert empty.headers["X-Proxaro-Error"] == "no_exit"
        # Both sides of each bound: status 200..599, a code of [a-z_]{1,40}.
        for path in ("/spoof/199", "/spoof/600", "/spoof/x", "/spoof/-1"):
            assert client.get(path).status_code == 400, path
        assert client.get("/spoof/200").status_code == 200
        assert client.get("/spoof/599").status_code == 599
        assert client.get("/spoof/502", params={"error": "a" * 40}).status_code == 502
        for bad in ("a" * 41, "No_Exit", "no-exit", "no_exit\r\nX-Evil: 1"):
            assert client.get("/spoof/502", params={"error": bad}).status_code == 400, bad


def test_spoof_pages_are_outside_the_anti_bot_budget(sb: Sandbox) -> None:
    sb.control("site", budget=2, ban_window=60, ban_seconds=30)
    before = sb.world.counters["site.requests"]
    with httpx.Client(base_url=sb.site_url, timeout=10) as client:
        assert [client.get("/spoof/502").status_code for _ in range(10)] == [502] * 10
        # The budget is untouched by them: two pages, then the 429 that starts a ban.
        assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/").status_code == 403
        # Banned, and the spoof pages still answer exactly as asked.
        r = client.get("/spoof/200")
        assert (r.status_code, r.headers["X-Proxaro-Error"]) == (200, "bad_targeting")
    assert sb.world.counters["site.requests"] == before + 15


# ---------------------------------------------------------------------------- through the gateway


def test_over_plain_http_the_gateway_strips_the_sites_proxaro_headers(sb: Sandbox) -> None:
    exit_ip = json.loads(get(sb, "/ip", "-session-spoof1").body)["ip"]
    errors = gateway_errors(sb)
    for status, _ in DEFAULTS:
        r = get(sb, f"/spoof/{status}", "-session-spoof1")
        assert r.status == status
        # The site's answer (its body says so), with no X-Proxaro-Error and no Proxy-*:
        assert json.loads(r.body)["spoofed_by"] == "site"
        assert r.error is None
        assert r.header("Proxy-Authenticate") is None
        # ... and the exit headers are the gateway's, each once, naming the real exit.
        assert r.header("X-Proxaro-Exit-IP") == exit_ip
        assert r.header("X-Proxaro-Exit-Country") != "zz"
        assert r.header("X-Proxaro-Session") == "spoof1"
    assert gateway_errors(sb) == errors  # the gateway refused nothing


def test_over_plain_http_with_httpx(sb: Sandbox) -> None:
    with httpx.Client(proxy=sb.proxy_url(), timeout=10) as client:
        for status, _ in DEFAULTS:
            r = client.get(f"{sb.site_url}/spoof/{status}")
            assert r.status_code == status
            seen = proxaro_headers(r.headers)
            assert "x-proxaro-error" not in seen
            assert seen["x-proxaro-exit-ip"] != FAKE_EXIT["x-proxaro-exit-ip"]
            assert "x-proxaro-session" not in seen  # rotating: the gateway names no session


def test_inside_a_tunnel_the_sites_headers_arrive_as_sent(sb: Sandbox) -> None:
    errors = gateway_errors(sb)
    tunnels = sb.world.counters["gateway.tunnels"]
    with httpx.Client(proxy=sb.proxy_url(), verify=sb.client_ssl_context(), timeout=10) as c:
        for status, code in DEFAULTS:
            r = c.get(f"{sb.site_https_url}/spoof/{status}")
            assert r.status_code == status
            assert proxaro_headers(r.headers) == {**FAKE_EXIT, "x-proxaro-error": code}
            if status == 407:
                assert r.headers["Proxy-Authenticate"] == 'Basic realm="site"'
        # The next request to the same target goes through.
        assert c.get(f"{sb.site_https_url}/ip").status_code == 200
    assert gateway_errors(sb) == errors
    assert sb.world.counters["gateway.tunnels"] > tunnels


def test_in_a_raw_tunnel_the_connect_answer_is_the_gateways_and_the_rest_the_sites(
    sb: Sandbox,
) -> None:
    target = sb.site_https_url.removeprefix("https://")
    with RawConn(sb.gateway_host, sb.gateway_port) as conn:
        est = conn.request("CONNECT", target, auth=basic(*creds(sb, "-country-nl")))
        assert est.status == 200 and est.error is None
        assert est.header("X-Proxaro-Exit-Country") == "nl"
        conn.start_tls(sb.client_ssl_context(), "127.0.0.1")
        conn.send(f"GET /spoof/502 HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        inner = conn.read_response()
        assert (inner.status, inner.error) == (502, protocol.ERROR_NO_EXIT)
        assert inner.header("X-Proxaro-Exit-Country") == "zz"
        conn.send(f"GET /ip HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        after = conn.read_response()
    assert after.status == 200
    assert json.loads(after.body)["ip"] == est.header("X-Proxaro-Exit-IP")
