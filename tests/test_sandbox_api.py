"""The sandbox API against the reference, endpoint by endpoint, over real loopback HTTP.

Plain httpx only: the sandbox is tested independently of the project's own REST client, so that
the two cannot agree on the same mistake.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.world import GIB, WebhookAttempt, WebhookEndpoint
from tests.conftest import SandboxFactory

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
REQUEST_ID = re.compile(r"^req_[0-9A-HJKMNP-TV-Z]{26}$")
ENVELOPE_KEYS = {"type", "code", "message", "param", "request_id"}


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api"})


def client(sb: Sandbox, key: str | None = None, **headers: str) -> httpx.Client:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=sb.api_url, headers=headers, timeout=10.0, trust_env=False)


@pytest.fixture
def api(sb: Sandbox) -> Iterator[httpx.Client]:
    with client(sb, sb.api_key) as c:
        yield c


def assert_error(
    resp: httpx.Response, status: int, type_: str, *, param: Any = ..., code: str | None = None
) -> dict[str, Any]:
    """The reference's envelope, exactly, with a request id that is also the header."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == ENVELOPE_KEYS
    assert err["type"] == type_
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    assert REQUEST_ID.match(err["request_id"]), err["request_id"]
    assert resp.headers["X-Request-Id"] == err["request_id"]
    if param is not ...:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def walk(c: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        page = c.get(path, params=query).json()
        assert page["object"] == "list"
        items += page["data"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return items
        assert isinstance(page["next_cursor"], str) and page["next_cursor"]
        cursor = page["next_cursor"]
    raise AssertionError("pagination did not end")


# ---------------------------------------------------------------------------- account


def test_me(api: httpx.Client, sb: Sandbox) -> None:
    body = api.get("/v1/me").json()
    assert set(body) == {"object", "id", "email", "created_at", "plan"}
    assert body["object"] == "account"
    assert body["id"].startswith("acct_") and body["id"] == sb.world.account.id
    assert ISO.match(body["created_at"])
    assert body["plan"]["id"] == "growth" and body["plan"]["name"] == "Growth"
    assert set(body["plan"]) == {"id", "name", "status", "current_period_end"}
    assert body["plan"]["status"] == "active"
    assert body["plan"]["current_period_end"].endswith("T23:59:59Z")


def test_plans_is_public_and_is_the_catalog(sb: Sandbox) -> None:
    with client(sb) as anonymous:
        resp = anonymous.get("/v1/plans")
    assert resp.status_code == 200
    assert resp.json() == {
        "object": "list",
        "data": [
            {"id": "starter", "name": "Starter", "price_usd": 29, "bandwidth_gb": 5},
            {"id": "growth", "name": "Growth", "price_usd": 99, "bandwidth_gb": 25},
            {"id": "scale", "name": "Scale", "price_usd": 299, "bandwidth_gb": 100},
            {"id": "network", "name": "Network", "price_usd": None, "bandwidth_gb": None},
        ],
    }


def test_status_is_public(sb: Sandbox) -> None:
    with client(sb) as anonymous:
        resp = anonymous.get("/v1/status")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


# ---------------------------------------------------------------------------- usage


def test_usage_default_is_current_period_by_class(api: httpx.Client, sb: Sandbox) -> None:
    body = api.get("/v1/usage").json()
    assert set(body) == {
        "object",
        "period_start",
        "period_end",
        "total_bytes",
        "cap_bytes",
        "breakdown",
    }
    assert body["object"] == "usage"
    now = datetime.now(timezone.utc)
    assert body["period_start"] == f"{now:%Y-%m}-01T00:00:00Z"
    assert body["period_end"].startswith(f"{now:%Y-%m}-") and body["period_end"].endswith(
        "T23:59:59Z"
    )
    assert body["cap_bytes"] == 25 * GIB
    assert body["breakdown"], "the seeded world has usage this month"
    for item in body["breakdown"]:
        assert set(item) == {"exit_class", "bytes"}
        assert item["exit_class"] in protocol.EXIT_CLASSES
        assert isinstance(item["bytes"], int)
    assert body["total_bytes"] == sum(i["bytes"] for i in body["breakdown"])
    assert [i["bytes"] for i in body["breakdown"]] == sorted(
        (i["bytes"] for i in body["breakdown"]), reverse=True
    )


def test_usage_group_by_country_and_periods(api: httpx.Client, sb: Sandbox) -> None:
    by_country = api.get("/v1/usage", params={"group_by": "country"}).json()
    for item in by_country["breakdown"]:
        assert set(item) == {"country", "bytes"}
        assert item["country"] in sb.world.countries
    now = datetime.now(timezone.utc)
    explicit = api.get("/v1/usage", params={"period": f"{now:%Y-%m}"}).json()
    assert explicit == api.get("/v1/usage", params={"period": "current"}).json()
    previous = api.get("/v1/usage", params={"period": "previous"}).json()
    assert previous["period_end"] < explicit["period_start"]
    assert previous["total_bytes"] > explicit["total_bytes"]  # last month was a full one
    old = api.get("/v1/usage", params={"period": "2019-02"}).json()
    assert old["period_start"] == "2019-02-01T00:00:00Z"
    assert old["period_end"] == "2019-02-28T23:59:59Z"
    assert old["total_bytes"] == 0 and old["breakdown"] == []


def test_usage_grows_with_traffic(api: httpx.Client, sb: Sandbox) -> None:
    before = api.get("/v1/usage").json()["total_bytes"]
    sb.control("usage", add_bytes=12345, exit_class="mobile_5g", country="jp")
    after = api.get("/v1/usage").json()
    assert after["total_bytes"] == before + 12345
    jp = api.get("/v1/usage", params={"group_by": "country"}).json()["breakdown"]
    assert any(i["country"] == "jp" and i["bytes"] >= 12345 for i in jp)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"period": "2026-13"}, "period"),
        ({"period": "26-01"}, "period"),
        ({"period": "last"}, "period"),
        ({"period": ""}, "period"),
        ({"period": "2999-01"}, "period"),
        ({"group_by": "asn"}, "group_by"),
        ({"granularity": "day"}, "granularity"),
    ],
)
def test_usage_rejects_bad_parameters(
    api: httpx.Client, params: dict[str, str], param: str
) -> None:
    assert_error(api.get("/v1/usage", params=params), 400, "invalid_request", param=param)


# ---------------------------------------------------------------------------- orders


def test_orders_shape_newest_first_and_only_mine(api: httpx.Client, sb: Sandbox) -> None:
    page = api.get("/v1/orders").json()
    assert set(page) == {"object", "data", "has_more", "next_cursor"}
    assert len(page["data"]) == 25 and page["has_more"] is True
    for order in page["data"]:
        assert set(order) == {
            "object",
            "id",
            "plan_id",
            "amount_usd",
            "status",
            "payment_method",
            "created_at",
            "paid_at",
        }
        assert order["object"] == "order" and order["id"].startswith("ord_")
        assert isinstance(order["amount_usd"], float)
        assert order["status"] in ("paid", "pending", "cancelled", "expired")
        assert ISO.match(order["created_at"])
        assert (order["paid_at"] is not None) == (order["status"] == "paid")
    created = [o["created_at"] for o in page["data"]]
    assert created == sorted(created, reverse=True)
    everything = walk(api, "/v1/orders", limit=100)
    theirs = {o.id for o in sb.world.orders if o.account_id == sb.world.other_account.id}
    assert theirs and not theirs & {o["id"] for o in everything}


def test_orders_pagination_has_no_gap_and_no_duplicate(api: httpx.Client, sb: Sandbox) -> None:
    all_at_once = api.get("/v1/orders", params={"limit": 100}).json()
    assert all_at_once["has_more"] is False and all_at_once["next_cursor"] is None
    expected = [o["id"] for o in all_at_once["data"]]
    assert len(expected) > 30
    for limit in (1, 7, 25):
        got = [o["id"] for o in walk(api, "/v1/orders", limit=limit)]
        assert got == expected


def test_orders_pagination_is_stable_when_orders_arrive(api: httpx.Client, sb: Sandbox) -> None:
    first = api.get("/v1/orders", params={"limit": 10}).json()
    seen = [o["id"] for o in first["data"]]
    sb.control("event", type="order.paid")  # moves the pending order to paid
    sb.control("event", type="order.paid")  # no pending order left: a new order at the head
    cursor = first["next_cursor"]
    while cursor:
        page = api.get("/v1/orders", params={"limit": 10, "cursor": cursor}).json()
        seen += [o["id"] for o in page["data"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen))
    mine = [o for o in sb.world.orders if o.account_id == sb.world.account.id]
    assert len(seen) == len(mine) - 1  # everything but the order created after page one


def test_orders_status_filter(api: httpx.Client) -> None:
    for status in ("paid", "pending", "cancelled", "expired"):
        items = walk(api, "/v1/orders", status=status, limit=100)
        assert all(o["status"] == status for o in items)
    assert walk(api, "/v1/orders", status="pending")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "1000"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "refunded"}, "status"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "c_Zm9v"}, "cursor"),
        ({"sort": "asc"}, "sort"),
    ],
)
def test_orders_rejects_bad_parameters(
    api: httpx.Client, params: dict[str, str], param: str
) -> None:
    assert_error(api.get("/v1/orders", params=params), 400, "invalid_request", param=param)


def test_cursor_of_another_list_is_refused(api: httpx.Client, sb: Sandbox) -> None:
    sb.control("sessions", add=5)
    cursor = api.get("/v1/sessions", params={"limit": 1}).json()["next_cursor"]
    resp = api.get("/v1/orders", params={"cursor": cursor})
    assert_error(resp, 400, "invalid_request", param="cursor")


def test_repeated_parameter_is_refused(sb: Sandbox, api: httpx.Client) -> None:
    resp = api.get(f"{sb.api_url}/v1/orders?limit=1&limit=2")
    assert_error(resp, 400, "invalid_request", param="limit")


# ---------------------------------------------------------------------------- credentials


def test_credentials(api: httpx.Client, sb: Sandbox) -> None:
    body = api.get("/v1/credentials").json()
    assert set(body) == {
        "object",
        "id",
        "gateway",
        "port",
        "username",
        "password",
        "bandwidth_gb_cap",
        "bandwidth_gb_used",
        "expires_at",
    }
    assert body["object"] == "credentials" and body["id"].startswith("cred_")
    assert isinstance(body["port"], int)
    assert body["username"].startswith("nb_growth_") and "-" not in body["username"]
    assert body["password"] == sb.world.credentials.password
    assert body["bandwidth_gb_cap"] == 25
    assert isinstance(body["bandwidth_gb_used"], float) and 0 < body["bandwidth_gb_used"] < 25
    assert ISO.match(body["expires_at"])


def test_rotate_credentials(api: httpx.Client, sb: Sandbox) -> None:
    old = api.get("/v1/credentials").json()
    resp = api.post("/v1/credentials/rotate")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"object", "id", "rotated_at", "password"}
    assert body["object"] == "credentials" and body["id"] == old["id"]
    assert ISO.match(body["rotated_at"])
    assert body["password"] != old["password"]
    assert api.get("/v1/credentials").json()["password"] == body["password"]
    world = sb.world
    assert sb.call(world.check_gateway_auth, old["username"], old["password"])  # grace
    assert sb.call(world.check_gateway_auth, old["username"], body["password"])
    assert world.events[-1].type == "credentials.rotated"
    assert world.events[-1].data["id"] == old["id"]
    sb.control("clock", advance=61)
    assert not sb.call(world.check_gateway_auth, old["username"], old["password"])


def test_rotate_needs_post(api: httpx.Client) -> None:
    resp = api.get("/v1/credentials/rotate")
    err = assert_error(resp, 405, "invalid_request", code="method_not_allowed")
    assert "POST" in err["message"] and resp.headers["Allow"] == "POST"


# ---------------------------------------------------------------------------- sessions


def test_sessions_shape_and_pagination(api: httpx.Client, sb: Sandbox) -> None:
    sb.control("sessions", add=250)
    page = api.get("/v1/sessions").json()
    assert len(page["data"]) == 100 and page["has_more"] is True
    assert page["next_cursor"].startswith("c_")
    item = page["data"][0]
    assert set(item) == {
        "id",
        "started_at",
        "ended_at",
        "exit_ip",
        "exit_class",
        "exit_country",
        "exit_asn",
        "bytes_sent",
        "bytes_recv",
    }
    assert item["id"].startswith("sess_") and item["exit_asn"].startswith("AS")
    ipaddress.ip_address(item["exit_ip"])
    assert ISO.match(item["started_at"]) and ISO.match(item["ended_at"])
    for limit in (100, 33, 1000):
        ids = [s["id"] for s in walk(api, "/v1/sessions", limit=limit)]
        assert len(ids) == len(set(ids)) == 250
    started = [s["started_at"] for s in walk(api, "/v1/sessions", limit=1000)]
    assert started == sorted(started, reverse=True)


def test_sessions_filter_by_exit_class(api: httpx.Client, sb: Sandbox) -> None:
    sb.control("sessions", add=20, exit_class="mobile_5g")
    sb.control("sessions", add=30, exit_class="residential")
    mobile = walk(api, "/v1/sessions", exit_class="mobile_5g")
    assert len(mobile) == 20 and {s["exit_class"] for s in mobile} == {"mobile_5g"}
    assert walk(api, "/v1/sessions", exit_class="datacenter") == []


def test_sessions_rolling_24h_and_last_5000(api: httpx.Client, sb: Sandbox) -> None:
    sb.control("sessions", add=10)
    sb.control("clock", advance=86400 + 60)
    assert api.get("/v1/sessions").json()["data"] == []
    sb.control("sessions", add=5000, spacing_seconds=0.01)
    sb.control("sessions", add=10)
    ids = [s["id"] for s in walk(api, "/v1/sessions", limit=1000)]
    assert len(ids) == len(set(ids)) == 5000


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"exit_class": "satellite"}, "exit_class"),
        ({"cursor": "c_"}, "cursor"),
        ({"country": "us"}, "country"),
    ],
)
def test_sessions_rejects_bad_parameters(
    api: httpx.Client, params: dict[str, str], param: str
) -> None:
    assert_error(api.get("/v1/sessions", params=params), 400, "invalid_request", param=param)


# ---------------------------------------------------------------------------- network


def test_countries(api: httpx.Client, sb: Sandbox) -> None:
    body = api.get("/v1/countries").json()
    assert set(body) == {"object", "data"} and body["object"] == "list"
    assert len(body["data"]) >= 24
    for item in body["data"]:
        assert set(item) == {
            "code",
            "name",
            "continent",
            "exit_classes",
            "cities_available",
            "estimated_pool_size",
            "pool_health",
        }
        assert re.fullmatch("[a-z]{2}", item["code"])
        assert item["cities_available"] == len(sb.world.countries[item["code"]].cities)
        assert set(item["exit_classes"]) <= set(protocol.EXIT_CLASSES)
        assert item["estimated_pool_size"] > 0 and item["pool_health"] == "healthy"
    us = next(i for i in body["data"] if i["code"] == "us")
    assert us["name"] == "United States" and us["continent"] == "North America"


def test_down_country_stays_listed_with_no_pool(api: httpx.Client, sb: Sandbox) -> None:
    sb.control("country", code="de", pool_health="down")
    de = next(i for i in api.get("/v1/countries").json()["data"] if i["code"] == "de")
    assert de["pool_health"] == "down" and de["estimated_pool_size"] == 0
    asns = api.get("/v1/countries/de/asns").json()["data"]
    assert asns and {a["pool_health"] for a in asns} == {"down"}
    sb.control("country", code="de", pool_health="healthy")
    de = next(i for i in api.get("/v1/countries").json()["data"] if i["code"] == "de")
    assert de["pool_health"] == "healthy" and de["estimated_pool_size"] > 0


def test_asns(api: httpx.Client, sb: Sandbox) -> None:
    body = api.get("/v1/countries/us/asns").json()
    assert set(body) == {"object", "data"} and body["object"] == "list"
    by_asn = {a["asn"]: a for a in body["data"]}
    assert by_asn["AS7922"] == {
        "asn": "AS7922",
        "org": "Comcast",
        "exit_class": "residential",
        "pool_health": "healthy",
    }
    assert by_asn["AS22394"]["pool_health"] == "degraded"
    for item in body["data"]:
        assert set(item) == {"asn", "org", "exit_class", "pool_health"}
    sb.control("asn", asn="AS7922", pool_health="down")
    again = {a["asn"]: a for a in api.get("/v1/countries/us/asns").json()["data"]}
    assert again["AS7922"]["pool_health"] == "down"


def test_asns_unknown_country_is_404(api: httpx.Client) -> None:
    assert_error(api.get("/v1/countries/zz/asns"), 404, "not_found", param="code")
    err = assert_error(api.get("/v1/countries/US/asns"), 404, "not_found", param="code")
    assert "lower case" in err["message"]


def test_asns_on_starter_is_scope_required(api: httpx.Client, sb: Sandbox) -> None:
    sb.control("plan", plan="starter")
    assert_error(api.get("/v1/countries/us/asns"), 403, "forbidden", code="scope_required")
    assert_error(api.get("/v1/countries/zz/asns"), 403, "forbidden", code="scope_required")
    assert api.get("/v1/countries").status_code == 200
    sb.control("plan", plan="scale")
    assert api.get("/v1/countries/us/asns").status_code == 200


# ---------------------------------------------------------------------------- allowlist


def test_allowlist_add_list_delete(api: httpx.Client, sb: Sandbox) -> None:
    assert api.get("/v1/allowlist").json() == {"object": "list", "data": []}  # not theirs
    resp = api.post("/v1/allowlist", json={"cidr": "198.51.100.42", "label": "primary crawler"})
    assert resp.status_code == 200
    entry = resp.json()
    assert set(entry) == {"object", "id", "cidr", "label", "created_at"}
    assert entry["object"] == "allowlist_entry" and entry["id"].startswith("al_")
    assert entry["cidr"] == "198.51.100.42/32" and entry["label"] == "primary crawler"
    event = sb.world.events[-1]
    assert event.type == "allowlist.updated"
    assert event.data["id"] == entry["id"] and event.data["action"] == "added"
    v6 = api.post("/v1/allowlist", json={"cidr": "2001:db8:abcd::/48"}).json()
    assert v6["cidr"] == "2001:db8:abcd::/48" and v6["label"] is None
    wide = api.post("/v1/allowlist", json={"cidr": "203.0.113.0/24", "label": "x" * 80})
    assert wide.status_code == 200
    listed = api.get("/v1/allowlist").json()["data"]
    assert [e["id"] for e in listed] == [entry["id"], v6["id"], wide.json()["id"]]
    assert listed[0] == {k: v for k, v in entry.items() if k != "object"}  # as the reference
    gone = api.delete(f"/v1/allowlist/{entry['id']}")
    assert gone.json() == {"object": "allowlist_entry", "id": entry["id"], "deleted": True}
    assert sb.world.events[-1].data["action"] == "removed"
    assert entry["id"] not in {e["id"] for e in api.get("/v1/allowlist").json()["data"]}
    assert_error(api.delete(f"/v1/allowlist/{entry['id']}"), 404, "not_found")


def test_allowlist_other_accounts_entry(api: httpx.Client, sb: Sandbox) -> None:
    theirs = next(e for e in sb.world.allowlist if e.account_id == sb.world.other_account.id)
    assert_error(api.delete(f"/v1/allowlist/{theirs.id}"), 404, "not_found")
    assert theirs in sb.world.allowlist
    # The same CIDR on another account is no conflict for this one.
    assert api.post("/v1/allowlist", json={"cidr": theirs.cidr}).status_code == 200


def test_allowlist_duplicate_is_409(api: httpx.Client) -> None:
    assert api.post("/v1/allowlist", json={"cidr": "198.51.100.7/32"}).status_code == 200
    assert_error(
        api.post("/v1/allowlist", json={"cidr": "198.51.100.7"}), 409, "conflict", param="cidr"
    )


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"cidr": "10.0.0.0/23"}, 422, "cidr"),
        ({"cidr": "10.0.0.0/8"}, 422, "cidr"),
        ({"cidr": "2001:db8::/47"}, 422, "cidr"),
        ({"cidr": "2001:db8::/32"}, 422, "cidr"),
        ({"cidr": "10.0.0.1/24"}, 422, "cidr"),
        ({"cidr": "10.0.0.1", "label": "y" * 81}, 422, "label"),
        ({"cidr": "not-an-ip"}, 400, "cidr"),
        ({"cidr": "10.0.0.0/33"}, 400, "cidr"),
        ({"cidr": 167772161}, 400, "cidr"),
        ({"label": "no cidr"}, 400, "cidr"),
        ({}, 400, "cidr"),
        ({"cidr": "10.0.0.1", "label": 5}, 400, "label"),
        ({"cidr": "10.0.0.1", "note": "x"}, 400, "note"),
    ],
)
def test_allowlist_validation(
    api: httpx.Client, body: dict[str, Any], status: int, param: str
) -> None:
    type_ = "unprocessable_entity" if status == 422 else "invalid_request"
    assert_error(api.post("/v1/allowlist", json=body), status, type_, param=param)


def test_malformed_json_and_non_object_bodies(api: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    resp = api.post("/v1/allowlist", content=b'{"cidr": ', headers=headers)
    assert_error(resp, 400, "invalid_request", param=None, code="invalid_json")
    resp = api.post("/v1/allowlist", content=b'["10.0.0.1"]', headers=headers)
    assert_error(resp, 400, "invalid_request", param=None)
    resp = api.post("/v1/credentials/rotate", json={"now": True})
    assert_error(resp, 400, "invalid_request", param="now")


def test_delete_allowlist_needs_delete(api: httpx.Client) -> None:
    entry = api.post("/v1/allowlist", json={"cidr": "192.0.2.1"}).json()
    resp = api.get(f"/v1/allowlist/{entry['id']}")
    assert_error(resp, 405, "invalid_request", code="method_not_allowed")
    assert resp.headers["Allow"] == "DELETE"


# ---------------------------------------------------------------------------- webhooks


def test_webhooks_create_list_rotate(api: httpx.Client, sb: Sandbox) -> None:
    resp = api.post(
        "/v1/webhooks",
        json={"url": "https://ops.example.com/hooks/nb", "events": ["order.paid", "*"]},
    )
    assert resp.status_code == 200
    hook = resp.json()
    assert set(hook) == {"object", "id", "url", "events", "label", "secret", "created_at"}
    assert hook["object"] == "webhook" and hook["id"].startswith("wh_")
    assert hook["events"] == ["order.paid", "*"] and hook["label"] is None
    assert re.fullmatch(r"whsec_test_[A-Za-z0-9]{32}", hook["secret"])
    assert sb.world.webhooks[-1].secret == hook["secret"]
    listed = api.get("/v1/webhooks").json()
    assert listed["object"] == "list"
    assert listed["data"] == [{k: v for k, v in hook.items() if k != "secret"}]
    rotated = api.post(f"/v1/webhooks/{hook['id']}/rotate").json()
    assert rotated["id"] == hook["id"] and rotated["secret"] != hook["secret"]
    assert re.fullmatch(r"whsec_test_[A-Za-z0-9]{32}", rotated["secret"])
    assert sb.world.webhooks[-1].secret == rotated["secret"]
    assert "secret" not in api.get("/v1/webhooks").json()["data"][0]


def test_webhook_attempts(api: httpx.Client, sb: Sandbox) -> None:
    hook = api.post(
        "/v1/webhooks", json={"url": "https://127.0.0.1:9/h", "events": ["*"], "label": "me"}
    ).json()
    other = api.post("/v1/webhooks", json={"url": "https://127.0.0.1:9/o", "events": ["*"]}).json()
    assert api.get(f"/v1/webhooks/{hook['id']}/attempts").json() == {
        "object": "list",
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }

    def add_attempts() -> None:
        t = sb.world.clock.now()
        for i in range(30):
            for wid in (hook["id"], other["id"]):
                sb.world.attempts.append(
                    WebhookAttempt(
                        sb.world.new_id("wha"),
                        wid,
                        f"evt_{i}",
                        "order.paid",
                        1,
                        t + i,
                        500 if i % 2 else 200,
                        not i % 2,
                        None if not i % 2 else "HTTP 500",
                        t + i + 30 if i % 2 else None,
                    )
                )

    sb.call(add_attempts)
    page = api.get(f"/v1/webhooks/{hook['id']}/attempts").json()
    assert len(page["data"]) == 25 and page["has_more"] is True
    first = page["data"][0]
    assert set(first) == {
        "object",
        "id",
        "webhook_id",
        "event_id",
        "event_type",
        "attempt",
        "attempted_at",
        "status",
        "ok",
        "error",
        "next_retry_at",
    }
    assert first["object"] == "webhook_attempt" and first["event_id"] == "evt_29"
    everything = walk(api, f"/v1/webhooks/{hook['id']}/attempts", limit=7)
    assert len(everything) == len({a["id"] for a in everything}) == 30
    assert {a["webhook_id"] for a in everything} == {hook["id"]}


def test_webhooks_unknown_and_other_accounts_ids(api: httpx.Client, sb: Sandbox) -> None:
    def add_theirs() -> str:
        hook = WebhookEndpoint(
            sb.world.new_id("wh"),
            "https://them.example.org/h",
            ["*"],
            None,
            "whsec_test_" + "x" * 32,
            sb.world.clock.now(),
            sb.world.other_account.id,
        )
        sb.world.webhooks.append(hook)
        return hook.id

    theirs = sb.call(add_theirs)
    assert api.get("/v1/webhooks").json()["data"] == []
    for wid in (theirs, "wh_nope"):
        assert_error(api.post(f"/v1/webhooks/{wid}/rotate"), 404, "not_found", param="id")
        assert_error(api.get(f"/v1/webhooks/{wid}/attempts"), 404, "not_found", param="id")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"url": "http://ops.example.com/h", "events": ["order.paid"]}, 422, "url"),
        ({"url": "ftp://ops.example.com/h", "events": ["order.paid"]}, 422, "url"),
        ({"url": "https://ops.example.com/h", "events": ["order.shipped"]}, 422, "events"),
        ({"url": "https://ops.example.com/h", "events": []}, 422, "events"),
        ({"url": "not a url", "events": ["order.paid"]}, 400, "url"),
        ({"events": ["order.paid"]}, 400, "url"),
        ({"url": "https://ops.example.com/h"}, 400, "events"),
        ({"url": "https://ops.example.com/h", "events": "order.paid"}, 400, "events"),
        ({"url": "https://ops.example.com/h", "events": ["*"], "label": 3}, 400, "label"),
        ({"url": "https://ops.example.com/h", "events": ["*"], "secret": "x"}, 400, "secret"),
    ],
)
def test_webhook_validation(
    api: httpx.Client, body: dict[str, Any], status: int, param: str
) -> None:
    type_ = "unprocessable_entity" if status == 422 else "invalid_request"
    assert_error(api.post("/v1/webhooks", json=body), status, type_, param=param)


# ---------------------------------------------------------------------------- auth and scopes


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        ("Bearer", "malformed_api_key"),
        ("Basic dXNlcjpwYXNz", "malformed_api_key"),
        ("Bearer proxaro_test_123", "malformed_api_key"),
        ("Bearer proxaro_test_" + "A" * 32, "malformed_api_key"),
        ("Bearer sk_test_" + "a" * 32, "malformed_api_key"),
        ("Bearer proxaro_live_0123456789abcdef0123456789abcdef", "live_key_not_accepted"),
        ("Bearer proxaro_test_" + "0" * 32, "invalid_api_key"),
    ],
)
def test_authentication_required(sb: Sandbox, authorization: str | None, code: str) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with client(sb, **headers) as c:
        err = assert_error(c.get("/v1/me"), 401, "authentication_required", code=code)
    if code == "live_key_not_accepted":
        assert "test keys only" in err["message"]
    assert "0123456789abcdef" not in err["message"]  # a key is never echoed


def test_bearer_scheme_is_case_insensitive(sb: Sandbox) -> None:
    with client(sb, Authorization=f"bearer {sb.api_key}") as c:
        assert c.get("/v1/me").status_code == 200


def test_revoked_key(sb: Sandbox) -> None:
    key = sb.control("keys", scope="read_write")["api_key"]
    with client(sb, key) as c:
        assert c.get("/v1/me").status_code == 200
        sb.control("keys", api_key=key, revoke=True)
        assert_error(c.get("/v1/me"), 401, "authentication_required", code="invalid_api_key")


def test_read_only_key_cannot_write(sb: Sandbox) -> None:
    key = sb.control("keys", scope="read_only")["api_key"]
    with client(sb, sb.api_key) as admin:
        al_id = admin.post("/v1/allowlist", json={"cidr": "192.0.2.9"}).json()["id"]
        wh_id = admin.post(
            "/v1/webhooks", json={"url": "https://127.0.0.1:9/", "events": ["*"]}
        ).json()["id"]
    with client(sb, key) as ro:
        for path in (
            "/v1/me",
            "/v1/usage",
            "/v1/orders",
            "/v1/credentials",
            "/v1/sessions",
            "/v1/countries",
            "/v1/countries/us/asns",
            "/v1/allowlist",
            "/v1/webhooks",
            f"/v1/webhooks/{wh_id}/attempts",
        ):
            assert ro.get(path).status_code == 200, path
        writes = [
            ro.post("/v1/credentials/rotate"),
            ro.post("/v1/allowlist", json={"cidr": "192.0.2.10"}),
            ro.delete(f"/v1/allowlist/{al_id}"),
            ro.post("/v1/webhooks", json={"url": "https://127.0.0.1:9/", "events": ["*"]}),
            ro.post(f"/v1/webhooks/{wh_id}/rotate"),
        ]
        for resp in writes:
            err = assert_error(resp, 403, "forbidden", code="insufficient_scope")
            assert "read_only" in err["message"]
    # Raising the scope lets the same key write.
    sb.control("keys", api_key=key, scope="read_write")
    with client(sb, key) as rw:
        assert rw.delete(f"/v1/allowlist/{al_id}").status_code == 200


# ---------------------------------------------------------------------------- errors


def test_every_error_row_of_the_reference(sb: Sandbox, api: httpx.Client) -> None:
    """One request per row of the error table, each answering the exact envelope."""
    api.post("/v1/allowlist", json={"cidr": "198.51.100.1"})
    cases: list[tuple[httpx.Response, int, str]] = []
    cases.append((api.post("/v1/allowlist", content=b"{", headers={}), 400, "invalid_request"))
    with client(sb) as anonymous:
        cases.append((anonymous.get("/v1/me"), 401, "authentication_required"))
    ro = sb.control("keys", scope="read_only")["api_key"]
    with client(sb, ro) as c:
        cases.append((c.post("/v1/credentials/rotate"), 403, "forbidden"))
    cases.append((api.delete("/v1/allowlist/al_missing"), 404, "not_found"))
    cases.append((api.post("/v1/allowlist", json={"cidr": "198.51.100.1"}), 409, "conflict"))
    cases.append(
        (api.post("/v1/allowlist", json={"cidr": "10.0.0.0/8"}), 422, "unprocessable_entity")
    )
    sb.control("faults", statuses=[429, 500, 503])
    cases.append((api.get("/v1/me"), 429, "rate_limited"))
    cases.append((api.get("/v1/me"), 500, "internal_error"))
    cases.append((api.get("/v1/me"), 503, "service_unavailable"))
    for resp, status, type_ in cases:
        assert_error(resp, status, type_)
    assert int(cases[6][0].headers["Retry-After"]) >= 0


def test_unknown_endpoint_is_404(api: httpx.Client) -> None:
    assert_error(api.get("/v1/nothing"), 404, "not_found", code="unknown_endpoint")
    assert_error(api.get("/v2/me"), 404, "not_found")


def test_request_ids_are_unique(sb: Sandbox, api: httpx.Client) -> None:
    ids = []
    with client(sb) as anonymous:
        for i in range(60):
            resp = api.get("/v1/me") if i % 3 else anonymous.get("/v1/me")
            assert REQUEST_ID.match(resp.headers["X-Request-Id"])
            ids.append(resp.headers["X-Request-Id"])
    assert len(set(ids)) == len(ids)


def test_api_version_header(api: httpx.Client) -> None:
    resp = api.get("/v1/me", headers={"X-API-Version": "2026-04-01"})
    assert resp.status_code == 200 and resp.headers["X-API-Version"] == "2026-04-01"
    assert api.get("/v1/me").headers["X-API-Version"] == protocol.DEFAULT_API_VERSION
    resp = api.get("/v1/me", headers={"X-API-Version": "2031-01-01"})
    assert_error(resp, 400, "invalid_request", param="X-API-Version")
    assert resp.headers["X-API-Version"] == protocol.DEFAULT_API_VERSION


# ---------------------------------------------------------------------------- rate limits


def rate_headers(resp: httpx.Response) -> tuple[int, int, int]:
    h = resp.headers
    return int(h["X-RateLimit-Limit"]), int(h["X-RateLimit-Remaining"]), int(h["X-RateLimit-Reset"])


def test_rate_limit_headers_on_every_response(sb: Sandbox, api: httpx.Client) -> None:
    responses = [
        api.get("/v1/me"),
        api.get("/v1/nothing"),
        api.post("/v1/allowlist", json={}),
        api.get("/v1/plans"),
    ]
    with client(sb) as anonymous:
        responses += [anonymous.get("/v1/me"), anonymous.get("/v1/status")]
    sb.control("faults", statuses=[503])
    responses.append(api.get("/v1/me"))
    for resp in responses:
        limit, remaining, reset = rate_headers(resp)
        assert limit == 300 and 0 <= remaining < 300
        assert abs(reset - (sb.world.clock.now() + 60)) < 5
    # Keyed requests count against the key, one by one.
    assert [rate_headers(r)[1] for r in responses[:4]] == [299, 298, 297, 296]


def test_starter_limit_trips_at_60_a_minute_and_20_per_10s_then_recovers(sb: Sandbox) -> None:
    sb.control("plan", plan="starter")
    key = sb.control("keys")["api_key"]
    with client(sb, key) as c:
        remaining = []
        for burst in range(3):
            for _ in range(20):
                resp = c.get("/v1/me")
                assert resp.status_code == 200, resp.text
                remaining.append(rate_headers(resp)[1])
            # The 21st within 10 seconds trips the burst window...
            resp = c.get("/v1/me")
            err = assert_error(resp, 429, "rate_limited")
            assert "60" in err["message"]
            assert resp.headers["X-RateLimit-Burst-Remaining"] == "0"
            if burst < 2:
                assert 1 <= int(resp.headers["Retry-After"]) <= 10
            else:
                # ... and on the third round the minute is full too: wait for the minute.
                assert rate_headers(resp)[:2] == (60, 0)
                assert 30 <= int(resp.headers["Retry-After"]) <= 40
            sb.control("clock", advance=10.5)
        assert remaining == list(range(59, -1, -1))
        # 60 requests within 31.5 seconds: the minute window is full.
        resp = c.get("/v1/me")
        assert_error(resp, 429, "rate_limited")
        assert rate_headers(resp)[:2] == (60, 0)
        assert 20 <= int(resp.headers["Retry-After"]) <= 30
        assert resp.headers["X-RateLimit-Burst-Remaining"] == "20"
        sb.control("clock", advance=int(resp.headers["Retry-After"]))
        resp = c.get("/v1/me")
        assert resp.status_code == 200
        sb.control("clock", advance=60)
        resp = c.get("/v1/me")
        assert resp.status_code == 200 and rate_headers(resp)[1] == 59


def test_growth_limit_trips_at_300_a_minute(sb: Sandbox) -> None:
    key = sb.control("keys")["api_key"]
    other = sb.control("keys")["api_key"]
    with client(sb, key) as c, client(sb, other) as c2:
        for _ in range(3):
            statuses = [c.get("/v1/status").status_code for _ in range(100)]
            assert statuses == [200] * 100
            assert c.get("/v1/status").status_code == 429  # burst: 100 in 10 s
            sb.control("clock", advance=10.5)
        resp = c.get("/v1/status")
        assert_error(resp, 429, "rate_limited")
        assert rate_headers(resp)[:2] == (300, 0)
        # Limits are per key.
        assert c2.get("/v1/status").status_code == 200
        sb.control("clock", advance=60)
        assert c.get("/v1/status").status_code == 200


def test_retry_after_is_real_time_on_a_fast_clock(sb: Sandbox) -> None:
    sb.control("plan", plan="starter")
    key = sb.control("keys")["api_key"]
    with client(sb, key) as c:
        for _ in range(20):
            assert c.get("/v1/me").status_code == 200
        # About 10 world seconds to wait: 10 s at speed 1, 1 s at speed 10.
        sb.control("clock", speed=10)
        resp = c.get("/v1/me")
        assert_error(resp, 429, "rate_limited")
        assert resp.headers["Retry-After"] == "1"
        # What that real second does to world time at speed 10, without sleeping through it.
        sb.control("clock", advance=10)
        assert c.get("/v1/me").status_code == 200


def test_rate_limit_reset_control(sb: Sandbox) -> None:
    sb.control("plan", plan="starter")
    with client(sb, sb.api_key) as c:
        while c.get("/v1/me").status_code == 200:
            pass
        sb.control("reset_counters", rate_limits=True)
        assert c.get("/v1/me").status_code == 200


# ---------------------------------------------------------------------------- faults


def test_fault_queue_answers_in_order_then_recovers(sb: Sandbox, api: httpx.Client) -> None:
    assert sb.control("faults", statuses=[503, 503, 500]) == {
        "statuses": [503, 503, 500],
        "latency_ms": 0,
    }
    got = [api.get("/v1/credentials") for _ in range(4)]
    assert [r.status_code for r in got] == [503, 503, 500, 200]
    assert_error(got[0], 503, "service_unavailable")
    assert_error(got[2], 500, "internal_error")
    assert got[0].headers["Retry-After"] == "1"
    # Faults hit public endpoints too (a broken API is broken for everyone).
    sb.control("faults", statuses=[503])
    with client(sb) as anonymous:
        assert anonymous.get("/v1/status").status_code == 503
        assert anonymous.get("/v1/status").status_code == 200


def test_fault_429_has_retry_after(sb: Sandbox, api: httpx.Client) -> None:
    sb.control("faults", statuses=[429])
    resp = api.get("/v1/me")
    assert_error(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "1"
    assert api.get("/v1/me").status_code == 200


def test_latency_and_clear(sb: Sandbox, api: httpx.Client) -> None:
    # The latency holds every answer back: a client that waits less gets none (a loaded
    # machine only makes the answer later, so this cannot go the other way).
    sb.control("faults", latency_ms=2000)
    with pytest.raises(httpx.ReadTimeout):
        api.get("/v1/me", timeout=0.2)
    sb.control("faults", statuses=[500, 500])
    assert sb.control("faults", clear=True) == {"statuses": [], "latency_ms": 0}
    assert api.get("/v1/me").status_code == 200  # the queued 500s went with it


# ---------------------------------------------------------------------------- counters


def test_counters_use_route_patterns(sb: Sandbox, api: httpx.Client) -> None:
    sb.control("reset_counters")
    api.get("/v1/credentials")
    api.get("/v1/credentials")
    api.get("/v1/countries/us/asns")
    api.get("/v1/countries/de/asns")
    with client(sb) as anonymous:
        anonymous.get("/v1/me")
    counters = httpx.get(f"{sb.api_url}/_sandbox/counters", trust_env=False).json()
    assert counters["api.requests"] == 5
    assert counters["api.requests:GET /v1/credentials"] == 2
    assert counters["api.requests:GET /v1/countries/{code}/asns"] == 2
    assert counters["api.requests:GET /v1/me"] == 1
    assert sb.world.counters["api.requests"] == 5
