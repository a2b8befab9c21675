"""The demo shop: a countable catalogue, /ip and /headers, anti-bot and slow pages."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.site import PAGE_SIZE, catalogue
from tests.conftest import SandboxFactory


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api", "gateway", "site"})


@pytest.fixture
def client(sb: Sandbox) -> Iterator[httpx.Client]:
    """A direct client (no proxy) to the site."""
    with httpx.Client(base_url=sb.site_url, timeout=10) as c:
        yield c


def proxy(sb: Sandbox, suffix: str = "") -> str:
    cred = sb.world.credentials
    return f"http://{cred.username}{suffix}:{cred.password}@{sb.gateway_host}:{sb.gateway_port}"


HREF = re.compile(r"href='([^']+)'")


def test_catalogue_is_a_few_hundred_products_fixed_by_the_seed() -> None:
    a, b, c = catalogue(0), catalogue(0), catalogue(1)
    assert a == b
    assert a != c
    assert 200 <= len(a) <= 400
    assert [p.id for p in a] == list(range(1, len(a) + 1))


def test_a_crawl_finds_exactly_the_catalogue(client: httpx.Client) -> None:
    totals = client.get("/catalog.json").json()
    seen: set[str] = set()
    queue = ["/"]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        r = client.get(url)
        assert r.status_code == 200, url
        if "text/html" in r.headers["content-type"]:
            queue.extend(h for h in HREF.findall(r.text) if h not in seen)
    products = {u for u in seen if u.startswith("/product/")}
    listings = {u for u in seen if u.startswith("/products?page=")}
    assert len(products) == totals["products"]
    assert len(listings) == totals["pages"] == -(-totals["products"] // PAGE_SIZE)
    assert totals["listing_urls"] == [f"/products?page={n}" for n in range(1, totals["pages"] + 1)]


def test_product_pages_are_stable(sb: Sandbox, client: httpx.Client) -> None:
    first = catalogue(sb.world.seed)[0]
    a, b = client.get("/product/1"), client.get("/product/1")
    assert a.text == b.text
    assert f"<h1 class='name'>{first.name}</h1>" in a.text
    assert f"<span class='price'>{first.price}</span>" in a.text
    assert f"<span class='sku'>{first.sku}</span>" in a.text
    assert client.get("/product/0").status_code == 404
    assert client.get("/product/99999").status_code == 404
    assert client.get("/product/x").status_code == 404
    assert client.get("/products?page=0").status_code == 404
    head = client.head("/product/1")
    assert head.status_code == 200 and head.content == b""


def test_json_listing_pages_through_everything(client: httpx.Client) -> None:
    total = client.get("/catalog.json").json()["products"]
    ids: list[int] = []
    url: str | None = "/api/products?page=1"
    while url:
        page = client.get(url).json()
        ids.extend(p["id"] for p in page["data"])
        url = page["next"]
    assert ids == list(range(1, total + 1))


def test_ip_of_a_direct_client_is_its_own_address(client: httpx.Client) -> None:
    assert client.get("/ip").json() == {
        "ip": "127.0.0.1",
        "country": None,
        "asn": None,
        "exit_class": None,
    }


def test_ip_through_the_gateway_is_the_exit(sb: Sandbox) -> None:
    with httpx.Client(proxy=proxy(sb, "-country-de-class-isp"), timeout=10) as c:
        body = c.get(sb.site_url + "/ip").json()
    assert (body["country"], body["exit_class"]) == ("de", "isp")
    ex = next(e for e in sb.world.exits if e.ip == body["ip"])
    assert ex.asn == body["asn"]


def test_headers_as_received(client: httpx.Client) -> None:
    r = client.get("/headers", headers={"X-Custom-Thing": "v1"})
    headers = r.json()["headers"]
    assert headers["X-Custom-Thing"] == "v1"
    assert "Host" in headers


def test_https_with_the_sandbox_ca(sb: Sandbox) -> None:
    with httpx.Client(verify=sb.client_ssl_context(), timeout=10) as c:
        assert c.get(sb.site_https_url + "/catalog.json").json()["products"] > 0
    with httpx.Client(timeout=10) as c, pytest.raises(httpx.ConnectError):
        c.get(sb.site_https_url + "/catalog.json")


def test_redirects_and_statuses(sb: Sandbox, client: httpx.Client) -> None:
    r = client.get("/redirect", params={"to": "/headers"})
    assert (r.status_code, r.headers["Location"]) == (302, "/headers")
    r = client.get("/redirect", params={"to": sb.site_https_url + "/ip", "status": "307"})
    assert (r.status_code, r.headers["Location"]) == (307, sb.site_https_url + "/ip")
    assert client.get("/redirect", params={"to": "/", "status": "200"}).status_code == 400
    assert client.get("/redirect").status_code == 400
    for code in (200, 404, 418, 500, 503):
        assert client.get(f"/status/{code}").status_code == code
    assert client.post("/status/201").status_code == 201
    r = client.get("/status/204")
    assert (r.status_code, r.content) == (204, b"")
    assert client.get("/status/99").status_code == 400


def test_bytes_stream_echo_and_delay(client: httpx.Client) -> None:
    assert len(client.get("/bytes/70000").content) == 70000
    r = client.get("/stream/5?size=100")
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.content == b"".join(bytes([i]) * 100 for i in range(5))
    body = client.post("/echo", content=b"hello").json()
    assert (body["bytes"], body["content_length"]) == (5, "5")
    assert client.get("/delay/20").json() == {"delayed_ms": 20}
    # The delay holds the answer back: a client that waits less than it gets none (a loaded
    # machine only makes the answer later, so this cannot go the other way).
    with pytest.raises(httpx.ReadTimeout):
        client.get("/delay/2000", timeout=0.2)


def test_budget_then_429_then_banned_then_free_again(sb: Sandbox, client: httpx.Client) -> None:
    sb.control("site", budget=5, ban_window=60, ban_seconds=30)
    assert [client.get("/").status_code for _ in range(5)] == [200] * 5
    r = client.get("/")
    assert r.status_code == 429 and r.headers["Retry-After"] == "30"
    banned = client.get("/product/1")
    assert banned.status_code == 403 and "banned" in banned.text
    assert client.get("/catalog.json").status_code == 200  # the totals stay readable
    sb.control("clock", advance=20)
    assert client.get("/").status_code == 403
    sb.control("clock", advance=11)
    assert client.get("/").status_code == 200


def test_the_window_refills(sb: Sandbox, client: httpx.Client) -> None:
    sb.control("site", budget=3, ban_window=10, ban_seconds=30)
    assert [client.get("/").status_code for _ in range(3)] == [200] * 3
    sb.control("clock", advance=11)
    assert [client.get("/").status_code for _ in range(3)] == [200] * 3


def test_each_exit_has_its_own_budget(sb: Sandbox) -> None:
    sb.control("site", budget=3, ban_window=60, ban_seconds=60)
    with httpx.Client(proxy=proxy(sb, "-session-a"), timeout=10) as a:
        codes = [a.get(sb.site_url + "/").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 403]
    with httpx.Client(proxy=proxy(sb, "-session-b"), timeout=10) as b:
        r = b.get(sb.site_url + "/")
        assert r.status_code == 200
        assert "X-Proxaro-Error" not in r.headers  # the site's answers are the site's own


def test_slow_pages_and_the_gateway_timeout(sb: Sandbox, client: httpx.Client) -> None:
    # No stopwatch: a slow page is one the gateway gives up on (504 target_timeout after
    # target_timeout seconds) and a client that waits less than slow_ms gets no answer from;
    # the gap (2.5 s of delay against a 1 s timeout) only grows on a loaded machine.
    sb.control("site", slow_ms=2500, slow_paths=["/product/"])
    sb.control("gateway", target_timeout=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/product/2", timeout=0.2)
    assert client.get("/").status_code == 200
    with httpx.Client(proxy=proxy(sb), timeout=10) as c:
        r = c.get(sb.site_url + "/product/2")
        assert (r.status_code, r.headers["X-Proxaro-Error"]) == (504, "target_timeout")
        assert c.get(sb.site_url + "/").status_code == 200  # not a slow path
        # No paths: every page is slow (the totals excepted).
        sb.control("site", slow_paths=[])
        r = c.get(sb.site_url + "/")
        assert (r.status_code, r.headers["X-Proxaro-Error"]) == (504, "target_timeout")
        assert c.get(sb.site_url + "/catalog.json").status_code == 200


def test_site_requests_are_counted(sb: Sandbox, client: httpx.Client) -> None:
    before = sb.world.counters["site.requests"]
    for _ in range(4):
        client.get("/ip")
    assert sb.world.counters["site.requests"] == before + 4
