"""The sandbox's ``/_sandbox/*`` controls, the reference's curl examples, the runner, the plugin.

Plain httpx (and the real curl) against ``Sandbox(components={"api"})``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.world import Event
from tests.conftest import SandboxFactory

CURL = "/usr/bin/curl"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
FULL_SANDBOX = all(
    importlib.util.find_spec(f"proxaro_scrape.sandbox.{name}") is not None
    for name in ("gateway", "site", "delivery")
)


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api"})


@pytest.fixture
def api(sb: Sandbox) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sb.api_key}"}
    with httpx.Client(base_url=sb.api_url, headers=headers, trust_env=False) as c:
        yield c


def raw_control(sb: Sandbox, name: str, body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(f"{sb.api_url}/_sandbox/{name}", json=body, trust_env=False, **kw)


def control_error(sb: Sandbox, name: str, body: Any) -> dict[str, Any]:
    resp = raw_control(sb, name, body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request" and err["code"] == "invalid_control"
    assert err["message"].startswith(f"/_sandbox/{name}: ")
    return dict(err)


# ---------------------------------------------------------------------------- controls


def test_plan(sb: Sandbox, api: httpx.Client) -> None:
    answer = sb.control("plan", plan="starter")
    assert answer == {
        "plan": "starter",
        "asn_allowed": False,
        "rate_limit": {"per_minute": 60, "burst_per_10s": 20},
    }
    assert api.get("/v1/me").json()["plan"]["id"] == "starter"
    assert api.get("/v1/credentials").json()["bandwidth_gb_cap"] == 5
    sb.control("plan", plan="network")
    assert api.get("/v1/credentials").json()["bandwidth_gb_cap"] is None
    assert api.get("/v1/usage").json()["cap_bytes"] is None
    assert control_error(sb, "plan", {"plan": "gold"})["param"] == "plan"
    control_error(sb, "plan", {})


def test_keys(sb: Sandbox) -> None:
    issued = sb.control("keys")
    assert issued["scope"] == "admin"
    assert re.fullmatch(r"proxaro_test_[0-9a-f]{32}", issued["api_key"])
    ro = sb.control("keys", scope="read_only")
    assert sb.world.keys[ro["api_key"]].scope == "read_only"
    assert sb.control("keys", api_key=ro["api_key"], scope="admin")["scope"] == "admin"
    assert sb.world.keys[ro["api_key"]].scope == "admin"
    assert sb.control("keys", api_key=ro["api_key"], revoke=True)["revoked"] is True
    assert ro["api_key"] not in sb.world.keys
    control_error(sb, "keys", {"scope": "superuser"})
    control_error(sb, "keys", {"api_key": "proxaro_test_" + "0" * 32, "scope": "admin"})
    control_error(sb, "keys", {"revoke": True})
    control_error(sb, "keys", {"api_key": issued["api_key"]})  # a scope or revoke is needed


def test_country_and_asn(sb: Sandbox) -> None:
    down = sb.control("country", code="fr", pool_health="down")
    assert down["code"] == "fr" and down["pool_health"] == "down"
    assert down["estimated_pool_size"] == 0
    assert sb.world.countries["fr"].pool_health == "down"
    assert not sb.call(sb.world.live_exits, "fr")
    asn = sb.control("asn", asn="7922", pool_health="degraded")
    assert asn == {
        "asn": "AS7922",
        "org": "Comcast",
        "exit_class": "residential",
        "pool_health": "degraded",
        "country": "us",
    }
    control_error(sb, "country", {"code": "zz", "pool_health": "down"})
    control_error(sb, "country", {"code": "FR", "pool_health": "down"})
    control_error(sb, "country", {"code": "fr", "pool_health": "degraded"})
    control_error(sb, "asn", {"asn": "AS1", "pool_health": "down"})
    control_error(sb, "asn", {"asn": "AS7922", "pool_health": "sick"})


def test_faults_validation(sb: Sandbox) -> None:
    assert sb.control("faults", statuses=[503], latency_ms=5) == {
        "statuses": [503],
        "latency_ms": 5,
    }
    assert sb.control("faults", statuses=[500])["statuses"] == [503, 500]  # appended
    assert sb.control("faults", clear=True, statuses=[429])["statuses"] == [429]  # clear first
    assert control_error(sb, "faults", {"statuses": [418]})["param"] == "statuses"
    control_error(sb, "faults", {"statuses": 503})
    control_error(sb, "faults", {"latency_ms": -1})
    control_error(sb, "faults", {"latency_ms": "fast"})
    control_error(sb, "faults", {"retries": 3})


def test_grace_rotate_and_expire(sb: Sandbox, api: httpx.Client) -> None:
    world = sb.world
    user, first = world.credentials.username, world.credentials.password
    assert sb.control("grace", seconds=2) == {"seconds": 2.0}
    rotated = sb.control("rotate")
    assert set(rotated) == {"object", "id", "rotated_at", "password", "grace_seconds"}
    assert rotated["password"] != first and rotated["grace_seconds"] == 2.0
    assert api.get("/v1/credentials").json()["password"] == rotated["password"]
    assert world.events[-1].type == "credentials.rotated"
    assert sb.call(world.check_gateway_auth, user, first)
    sb.control("clock", advance=3)
    assert not sb.call(world.check_gateway_auth, user, first)
    # Shortening the grace also cuts passwords already in their grace.
    sb.control("grace", seconds=600)
    second = sb.control("rotate")["password"]
    assert sb.call(world.check_gateway_auth, user, rotated["password"])
    sb.control("grace", seconds=0)
    assert not sb.call(world.check_gateway_auth, user, rotated["password"])
    assert sb.call(world.check_gateway_auth, user, second)
    # Expiry.
    answer = sb.control("expire_credentials", in_seconds=100)
    assert ISO.match(answer["expires_at"]) and answer["id"] == world.credentials.id
    assert sb.call(world.check_gateway_auth, user, second)
    sb.control("clock", advance=101)
    assert not sb.call(world.check_gateway_auth, user, second)
    at_once = sb.control("expire_credentials")
    assert api.get("/v1/credentials").json()["expires_at"] == at_once["expires_at"]
    control_error(sb, "grace", {"seconds": -1})
    control_error(sb, "grace", {})
    control_error(sb, "expire_credentials", {"in_seconds": -5})
    control_error(sb, "rotate", {"now": True})


def test_clock(sb: Sandbox) -> None:
    before = sb.world.clock.now()
    answer = sb.control("clock", advance=600)
    assert answer["timestamp"] - before >= 600 and ISO.match(answer["now"])
    assert answer["speed"] == 1.0
    assert sb.control("clock", speed=60)["speed"] == 60.0
    assert sb.world.clock.speed == 60.0
    control_error(sb, "clock", {})
    control_error(sb, "clock", {"advance": -1})
    control_error(sb, "clock", {"speed": 0})
    control_error(sb, "clock", {"speed": True})


def test_usage_control_fires_thresholds(sb: Sandbox, api: httpx.Client) -> None:
    before = api.get("/v1/usage").json()
    answer = sb.control("usage", add_bytes=1000)
    assert answer["total_bytes"] == before["total_bytes"] + 1000
    assert answer["cap_bytes"] == before["cap_bytes"]
    assert re.fullmatch(r"\d{4}-\d{2}", answer["period"])
    answer = sb.control("usage", to_percent=80, exit_class="isp", country="de")
    assert answer["total_bytes"] >= answer["cap_bytes"] * 0.8
    assert [e.type for e in sb.world.events][-1:] == ["usage.threshold.80"]
    sb.control("usage", to_percent=100)
    assert sb.world.events[-1].type == "usage.threshold.100"
    assert sb.world.events[-1].data["threshold"] == 100
    control_error(sb, "usage", {})
    control_error(sb, "usage", {"add_bytes": 1, "to_percent": 5})
    control_error(sb, "usage", {"add_bytes": -1})
    control_error(sb, "usage", {"add_bytes": 1, "exit_class": "satellite"})
    control_error(sb, "usage", {"add_bytes": 1, "country": "zz"})
    sb.control("plan", plan="network")
    control_error(sb, "usage", {"to_percent": 50})


def test_sessions_control(sb: Sandbox, api: httpx.Client) -> None:
    answer = sb.control("sessions", add=3, country="gb", exit_class="mobile_5g", bytes=1000)
    assert answer == {"added": 3, "total": 3}
    data = api.get("/v1/sessions").json()["data"]
    assert {(s["exit_country"], s["exit_class"]) for s in data} == {("gb", "mobile_5g")}
    assert {s["bytes_sent"] + s["bytes_recv"] for s in data} == {1000}
    control_error(sb, "sessions", {"add": 0})
    control_error(sb, "sessions", {"add": 1, "country": "cl", "exit_class": "mobile_5g"})


def test_site_and_gateway_knobs(sb: Sandbox) -> None:
    site = sb.control(
        "site", budget=20, ban_window=60, ban_seconds=30, slow_ms=5, slow_paths=["/slow"]
    )
    assert site == {
        "budget": 20,
        "ban_window": 60.0,
        "ban_seconds": 30.0,
        "slow_ms": 5,
        "slow_paths": ["/slow"],
    }
    knobs = sb.world.knobs
    assert (knobs.site_budget, knobs.site_slow_paths) == (20, ["/slow"])
    assert sb.control("site", budget=7)["slow_ms"] == 5  # the others stay
    gateway = sb.control(
        "gateway", target_timeout=2.0, exit_drop_rate=0.1, degraded_failure_rate=0.5
    )
    assert gateway == {"target_timeout": 2.0, "exit_drop_rate": 0.1, "degraded_failure_rate": 0.5}
    assert knobs.target_timeout == 2.0 and sb.world.degraded_failure_rate == 0.5
    control_error(sb, "site", {"budget": "many"})
    control_error(sb, "site", {"slow_paths": "/slow"})
    control_error(sb, "site", {"ban_window": 0})
    control_error(sb, "gateway", {"exit_drop_rate": 2})
    control_error(sb, "gateway", {"target_timeout": 0})
    control_error(sb, "gateway", {"speed": 1})


@pytest.mark.parametrize("type_", protocol.WEBHOOK_EVENTS)
def test_event_emits_plausible_data(sb: Sandbox, type_: str) -> None:
    seen: list[Event] = []
    sb.call(sb.world.on_event, seen.append)
    payload = sb.control("event", type=type_)
    assert set(payload) == {"object", "id", "type", "created_at", "data"}
    assert payload["object"] == "event" and payload["type"] == type_
    assert payload["id"].startswith("evt_") and ISO.match(payload["created_at"])
    assert [e.id for e in seen] == [payload["id"]]
    data = payload["data"]
    if type_.startswith("order."):
        assert data["object"] == "order" and data["id"].startswith("ord_")
        assert data["status"] == type_.split(".")[1]
    elif type_ == "credentials.rotated":
        assert data["object"] == "credentials" and data["id"] == sb.world.credentials.id
        assert ISO.match(data["rotated_at"])
    elif type_.startswith("usage.threshold."):
        assert data["object"] == "usage" and data["threshold"] == int(type_.rsplit(".")[-1])
        assert data["total_bytes"] >= data["cap_bytes"] * data["threshold"] // 100
    else:
        assert data["object"] == "allowlist_entry" and data["id"].startswith("al_")
        assert data["action"] in ("added", "removed") and "/" in data["cidr"]


def test_event_order_paid_moves_the_pending_order(sb: Sandbox, api: httpx.Client) -> None:
    pending = api.get("/v1/orders", params={"status": "pending"}).json()["data"]
    assert len(pending) == 1
    payload = sb.control("event", type="order.paid")
    assert payload["data"]["id"] == pending[0]["id"]
    assert ISO.match(payload["data"]["paid_at"])
    assert api.get("/v1/orders", params={"status": "pending"}).json()["data"] == []
    paid = api.get("/v1/orders", params={"status": "paid", "limit": 100}).json()["data"]
    assert payload["data"] in paid


def test_event_with_given_data_and_errors(sb: Sandbox) -> None:
    payload = sb.control("event", type="allowlist.updated", data={"custom": 1})
    assert payload["data"] == {"custom": 1}
    control_error(sb, "event", {"type": "order.shipped"})
    control_error(sb, "event", {"type": "order.paid", "data": [1]})
    control_error(sb, "event", {})


def test_reset_counters_log_and_counters(sb: Sandbox, api: httpx.Client) -> None:
    api.get("/v1/me")
    assert sb.world.counters["api.requests"] == 1
    assert sb.control("reset_counters") == {"counters": {}, "rate_limits_reset": False}
    assert httpx.get(f"{sb.api_url}/_sandbox/counters", trust_env=False).json() == {}
    key = sb.control("keys", scope="read_only")["api_key"]
    sb.control("keys", api_key=key, scope="read_write")
    api.post("/v1/allowlist", json={"cidr": "192.0.2.44"})
    resp = httpx.get(f"{sb.api_url}/_sandbox/log", trust_env=False)
    assert resp.status_code == 200 and key not in resp.text and sb.api_key not in resp.text
    log = resp.json()["data"]
    kinds = {h["kind"] for h in log}
    assert {"api", "control", "allowlist_added", "event"} <= kinds
    for h in log:
        assert set(h) == {"at", "timestamp", "kind", "detail"} and ISO.match(h["at"])
    only = httpx.get(
        f"{sb.api_url}/_sandbox/log", params={"kind": "event,allowlist_added"}, trust_env=False
    ).json()["data"]
    assert [h["kind"] for h in only] == ["allowlist_added", "event"]
    assert only[1]["detail"]["type"] == "allowlist.updated"
    api_lines = [h for h in log if h["kind"] == "api"]
    assert api_lines[-1]["detail"]["route"] == "/v1/allowlist"
    assert api_lines[-1]["detail"]["status"] == 200
    assert api_lines[-1]["detail"]["request_id"].startswith("req_")


def test_bad_control_requests(sb: Sandbox) -> None:
    resp = httpx.post(f"{sb.api_url}/_sandbox/nope", json={}, trust_env=False)
    assert resp.status_code == 404 and "error" in resp.json()
    resp = httpx.get(f"{sb.api_url}/_sandbox/plan", trust_env=False)
    assert resp.status_code == 405 and "error" in resp.json()
    resp = raw_control(sb, "plan", content=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]["message"]
    control_error(sb, "plan", ["starter"])
    assert control_error(sb, "plan", {"plan": "starter", "x": 1})["param"] == "x"
    # Controls are not API requests: not counted, not rate limited.
    assert sb.world.counters["api.requests"] == 0


# ---------------------------------------------------------------------------- curl examples

BASE = "https://api.proxaro.io"


def reference_get(path: str) -> str:
    """The reference's GET example for ``path``: every one of them has this form, verbatim."""
    return f'curl -H "Authorization: Bearer $PROXARO_API_KEY" \\\n  {BASE}{path}'


#: The reference's examples (``{code}`` and ``{id}`` are filled in by the test).
CURL_GET_EXAMPLES: dict[str, str] = {
    "quick start": f'curl {BASE}/v1/me \\\n  -H "Authorization: Bearer $PROXARO_API_KEY"',
    "me": reference_get("/v1/me"),
    "usage": reference_get("/v1/usage"),
    "orders": reference_get("/v1/orders"),
    "plans": reference_get("/v1/plans"),
    "credentials": reference_get("/v1/credentials"),
    "sessions": reference_get("/v1/sessions"),
    "countries": reference_get("/v1/countries"),
    "asns": reference_get("/v1/countries/{code}/asns"),
    "allowlist": reference_get("/v1/allowlist"),
}
CURL_ROTATE = reference_get("/v1/credentials/rotate")
CURL_ALLOWLIST_ADD = """curl -X POST https://api.proxaro.io/v1/allowlist \\
  -H "Authorization: Bearer $PROXARO_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"cidr": "198.51.100.42/32", "label": "primary crawler"}'"""
CURL_ALLOWLIST_DELETE = reference_get("/v1/allowlist/{id}")
CURL_WEBHOOK_ADD = """curl -X POST https://api.proxaro.io/v1/webhooks \\
  -H "Authorization: Bearer $PROXARO_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "url": "https://ops.example.com/hooks/nb",
    "events": ["order.paid", "usage.threshold.80"]
  }'"""
CURL_WEBHOOK_LIST = reference_get("/v1/webhooks")

#: The reference's documented responses, verbatim.
DOCUMENTED: dict[str, str] = {
    "me": """{"object": "account", "id": "acct_01HVQ8...", "email": "ops@example.com",
        "created_at": "2025-04-12T10:14:22Z", "plan": {"id": "growth", "name": "Growth",
        "status": "active", "current_period_end": "2026-05-12T10:14:22Z"}}""",
    "usage": """{"object": "usage", "period_start": "2026-04-01T00:00:00Z",
        "period_end": "2026-04-30T23:59:59Z", "total_bytes": 84122983241,
        "cap_bytes": 107374182400, "breakdown": [
        {"exit_class": "residential", "bytes": 52110000000},
        {"exit_class": "isp", "bytes": 22400000000},
        {"exit_class": "mobile_4g", "bytes": 7212983241},
        {"exit_class": "mobile_5g", "bytes": 2400000000}]}""",
    "orders": """{"object": "list", "data": [{"object": "order", "id": "ord_01HVQ8MKS2A...",
        "plan_id": "growth", "amount_usd": 99.00, "status": "paid",
        "payment_method": "card_c2c", "created_at": "2026-04-01T09:11:44Z",
        "paid_at": "2026-04-01T09:12:08Z"}], "has_more": false, "next_cursor": null}""",
    "plans": """{"object": "list", "data": [
        {"id": "starter", "name": "Starter", "price_usd": 29, "bandwidth_gb": 5},
        {"id": "growth", "name": "Growth", "price_usd": 99, "bandwidth_gb": 25},
        {"id": "scale", "name": "Scale", "price_usd": 299, "bandwidth_gb": 100},
        {"id": "network", "name": "Network", "price_usd": null, "bandwidth_gb": null}]}""",
    "credentials": """{"object": "credentials", "id": "cred_01HVQ...",
        "gateway": "gateway.proxaro.io", "port": 7777, "username": "nb_growth_a1b2c3d4",
        "password": "tN3Jx9-PeQ4sVWuM", "bandwidth_gb_cap": 25, "bandwidth_gb_used": 4.7,
        "expires_at": "2026-05-12T10:14:22Z"}""",
    "rotate": """{"object": "credentials", "id": "cred_01HVQ...",
        "rotated_at": "2026-04-22T14:30:00Z", "password": "f8Kq2-ZrV6W-xpY3"}""",
    "sessions": """{"object": "list", "data": [{"id": "sess_01HVQ...",
        "started_at": "2026-04-22T14:29:52Z", "ended_at": "2026-04-22T14:30:11Z",
        "exit_ip": "72.164.18.44", "exit_class": "residential", "exit_country": "us",
        "exit_asn": "AS7922", "bytes_sent": 4218, "bytes_recv": 512341}],
        "has_more": true, "next_cursor": "c_0uKf..."}""",
    "countries": """{"object": "list", "data": [{"code": "us", "name": "United States",
        "continent": "North America",
        "exit_classes": ["residential", "isp", "mobile_4g", "mobile_5g"],
        "cities_available": 47, "estimated_pool_size": 8200000}]}""",
    "asns": """{"object": "list", "data": [
        {"asn": "AS7922", "org": "Comcast", "exit_class": "residential", "pool_health": "healthy"},
        {"asn": "AS21928", "org": "T-Mobile", "exit_class": "mobile_4g", "pool_health": "healthy"},
        {"asn": "AS22394", "org": "Verizon", "exit_class": "mobile_5g", "pool_health": "degraded"}
        ]}""",
    "allowlist": """{"object": "list", "data": [
        {"id": "al_01HVQ...", "cidr": "198.51.100.42/32", "label": "primary crawler",
         "created_at": "2026-04-01T10:00:00Z"},
        {"id": "al_01HVR...", "cidr": "203.0.113.0/24", "label": "datacenter /24",
         "created_at": "2026-04-03T18:12:00Z"}]}""",
    "allowlist_add": """{"object": "allowlist_entry", "id": "al_01HVQ...",
        "cidr": "198.51.100.42/32", "label": "primary crawler",
        "created_at": "2026-04-22T14:30:00Z"}""",
    "allowlist_delete": """{ "object": "allowlist_entry", "id": "al_01HVQ...", "deleted": true }""",
    "webhook_add": """{"object": "webhook", "id": "wh_01HVQ...",
        "url": "https://ops.example.com/hooks/nb", "events": ["order.paid", "usage.threshold.80"],
        "secret": "whsec_live_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "created_at": "2026-04-22T14:30:00Z"}""",
}
DOCUMENTED["quick start"] = DOCUMENTED["me"]

#: Fields the sandbox adds to the reference's objects (the reference only ever adds fields).
ADDITIVE = {"pool_health", "label"}
#: Fields the reference shows filled that may be null.
NULLABLE = {"paid_at", "next_cursor", "label"}


def assert_shape(doc: Any, got: Any, path: str = "$") -> None:
    """``got`` has the documented keys (plus additive ones) and value types, recursively."""
    if isinstance(doc, dict):
        assert isinstance(got, dict), path
        assert set(doc) <= set(got) and set(got) - set(doc) <= ADDITIVE, (
            f"{path}: {sorted(got)} vs {sorted(doc)}"
        )
        for k, v in doc.items():
            if got[k] is None and k in NULLABLE:
                continue
            assert_shape(v, got[k], f"{path}.{k}")
    elif isinstance(doc, list):
        assert isinstance(got, list), path
        if doc and got:
            pairs = zip(doc, got) if len(doc) == len(got) else ((doc[0], g) for g in got)
            for i, (d, g) in enumerate(pairs):
                assert_shape(d, g, f"{path}[{i}]")
    elif doc is None:
        return
    elif isinstance(doc, bool):
        assert isinstance(got, bool), path
    elif isinstance(doc, float):
        assert isinstance(got, float), path
    elif isinstance(doc, int):
        assert isinstance(got, int) and not isinstance(got, bool), path
    else:
        assert isinstance(got, str), path
        if ISO.match(doc):
            assert ISO.match(got), f"{path}: {got!r}"
        prefix = re.match(r"^([a-z]+_)01HV", doc)  # an id: keep its prefix
        if prefix:
            assert got.startswith(prefix.group(1)), f"{path}: {got!r}"


def run_curl(sb: Sandbox, example: str, **fill: str) -> Any:
    """Run a reference example with the real curl, the sandbox's URL and a test key."""
    command = example.replace(BASE, sb.api_url)
    for name, value in fill.items():
        command = command.replace("{" + name + "}", value)
    assert shutil.which("curl", path="/usr/bin") == CURL
    env = {"PATH": "/usr/bin:/bin", "PROXARO_API_KEY": sb.api_key}  # no proxy variables
    done = subprocess.run(
        ["/bin/bash", "-c", command], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", sorted(CURL_GET_EXAMPLES))
def test_curl_get_examples_return_documented_shapes(sb: Sandbox, name: str) -> None:
    if name in ("sessions",):
        sb.control("sessions", add=150)  # enough for a second page, as documented
    if name == "allowlist":
        with httpx.Client(base_url=sb.api_url, trust_env=False) as c:
            headers = {"Authorization": f"Bearer {sb.api_key}"}
            c.post(
                "/v1/allowlist", json={"cidr": "198.51.100.42/32", "label": "a"}, headers=headers
            )
            c.post("/v1/allowlist", json={"cidr": "203.0.113.0/24", "label": "b"}, headers=headers)
    got = run_curl(sb, CURL_GET_EXAMPLES[name], code="us")
    doc = json.loads(DOCUMENTED[name])
    assert_shape(doc, got)
    if name == "plans":
        assert got == doc
    if name == "asns":
        assert [a for a in got["data"] if a["asn"] in ("AS7922", "AS21928", "AS22394")] == doc[
            "data"
        ]


def test_curl_write_examples_return_documented_shapes(sb: Sandbox) -> None:
    added = run_curl(sb, CURL_ALLOWLIST_ADD)
    assert_shape(json.loads(DOCUMENTED["allowlist_add"]), added)
    assert added["cidr"] == "198.51.100.42/32" and added["label"] == "primary crawler"

    hook = run_curl(sb, CURL_WEBHOOK_ADD)
    doc_hook = json.loads(DOCUMENTED["webhook_add"])
    assert_shape(doc_hook, hook)
    assert hook["events"] == doc_hook["events"] and hook["url"] == doc_hook["url"]
    assert hook["secret"].startswith("whsec_test_")  # the sandbox issues test secrets
    listed = run_curl(sb, CURL_WEBHOOK_LIST)
    assert listed["object"] == "list" and listed["data"][0]["id"] == hook["id"]
    assert "secret" not in listed["data"][0]

    # The reference's rotate and delete examples omit -X, so curl sends GET: the sandbox
    # answers 405 naming the method the endpoint's heading documents...
    literal = run_curl(sb, CURL_ROTATE)
    assert (
        literal["error"]["code"] == "method_not_allowed" and "POST" in literal["error"]["message"]
    )
    literal = run_curl(sb, CURL_ALLOWLIST_DELETE, id=added["id"])
    assert literal["error"]["code"] == "method_not_allowed"
    assert "DELETE" in literal["error"]["message"]
    # ... and with the documented method they return the documented shapes.
    rotated = run_curl(sb, CURL_ROTATE.replace("curl -H", "curl -X POST -H"))
    assert_shape(json.loads(DOCUMENTED["rotate"]), rotated)
    deleted = run_curl(
        sb, CURL_ALLOWLIST_DELETE.replace("curl -H", "curl -X DELETE -H"), id=added["id"]
    )
    assert_shape(json.loads(DOCUMENTED["allowlist_delete"]), deleted)
    assert deleted == {"object": "allowlist_entry", "id": added["id"], "deleted": True}


def test_curl_status(sb: Sandbox) -> None:
    done = subprocess.run(
        [CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{sb.api_url}/v1/status"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout == "200"


# ---------------------------------------------------------------------------- runner, plugin, CLI


def test_sandbox_info_and_dumps(sb: Sandbox) -> None:
    info = json.loads(sb.dumps())
    assert "\n" not in sb.dumps()
    assert set(info) == {
        "api_url",
        "api_key",
        "gateway_host",
        "gateway_port",
        "site_url",
        "site_https_url",
        "ca_cert",
    }
    assert info["api_url"].startswith("http://127.0.0.1:") and info["api_key"] == sb.api_key
    assert sb.api_key not in repr(sb)


async def test_sandbox_as_async_context_manager() -> None:
    async with Sandbox(seed=3, components={"api"}) as sb:
        async with httpx.AsyncClient(base_url=sb.api_url, trust_env=False) as c:
            resp = await c.get("/v1/me", headers={"Authorization": f"Bearer {sb.api_key}"})
            assert resp.status_code == 200
            assert (await sb.acontrol("plan", plan="scale"))["plan"] == "scale"
            assert (await c.get("/v1/status")).json()["status"] == "ok"


def _pytest_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def test_pytest_plugin_is_registered(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=_pytest_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "proxaro_sandbox" in done.stdout, done.stdout + done.stderr


@pytest.mark.skipif(not FULL_SANDBOX, reason="needs the gateway, site and delivery modules")
def test_pytest_plugin_fixture_runs_a_whole_sandbox(tmp_path: Path) -> None:
    test_file = tmp_path / "test_user_side.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import httpx

            def test_with_a_local_proxaro(proxaro_sandbox):
                resp = httpx.get(
                    proxaro_sandbox.api_url + "/v1/me",
                    headers={"Authorization": "Bearer " + proxaro_sandbox.api_key},
                    trust_env=False,
                )
                assert resp.status_code == 200
                assert proxaro_sandbox.gateway_port > 0
                assert proxaro_sandbox.site_url.startswith("http://127.0.0.1:")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=_pytest_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


@pytest.mark.skipif(not FULL_SANDBOX, reason="needs the gateway, site and delivery modules")
def test_cli_sandbox_json_prints_one_line_then_serves() -> None:
    exe = Path(sys.executable).with_name("proxaro-scrape")
    proc = subprocess.Popen(
        [str(exe), "sandbox", "--json", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        assert set(info) == {
            "api_url",
            "api_key",
            "gateway_host",
            "gateway_port",
            "site_url",
            "site_https_url",
            "ca_cert",
        }
        assert info["gateway_port"] > 0 and Path(info["ca_cert"]).is_file()
        resp = httpx.get(
            info["api_url"] + "/v1/me",
            headers={"Authorization": f"Bearer {info['api_key']}"},
            trust_env=False,
        )
        assert resp.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
