"""The shop's JavaScript-rendered pages, and /ip and /headers for browsers.

Plain HTTP shows that the pages' HTML lacks the content and their JSON endpoints hold it.  The
pages' script is then run for real, under Node with a small DOM stand-in (no browser is needed
for this tier), to show that it fetches the JSON and builds the content a browser would show.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.site import PAGE_SIZE, catalogue
from tests.conftest import SandboxFactory

NODE = shutil.which("node")

#: A DOM just large enough for the pages' script: elements, text nodes, attributes, title.
DOM_STAND_IN = r"""
const fs = require("fs");
const [pageUrl, attrsJson, scriptPath] = process.argv.slice(2);
class Element {
  constructor(tag) { this.tag = tag; this.className = ""; this.attrs = {}; this.kids = []; }
  set textContent(value) { this.kids = [new Text(String(value))]; }
  get textContent() { return this.kids.map((k) => k.textContent).join(""); }
  setAttribute(name, value) { this.attrs[name] = String(value); }
  getAttribute(name) { return name in this.attrs ? this.attrs[name] : null; }
  appendChild(kid) { this.kids.push(kid); return kid; }
  toJSON() { return { tag: this.tag, cls: this.className, attrs: this.attrs, kids: this.kids }; }
}
class Text {
  constructor(text) { this.text = text; }
  get textContent() { return this.text; }
  toJSON() { return { text: this.text }; }
}
const root = new Element("main");
Object.assign(root.attrs, JSON.parse(attrsJson));
globalThis.document = {
  title: "",
  getElementById: (id) => (id === "app" ? root : null),
  createElement: (tag) => new Element(tag),
  createTextNode: (text) => new Text(text),
};
globalThis.location = { href: pageUrl };
process.on("exit", () => {
  process.stdout.write(JSON.stringify({ title: document.title, root: root }));
});
eval(fs.readFileSync(scriptPath, "utf8"));
"""

APP = re.compile(r"<main id='app'([^>]*)></main>")
ATTR = re.compile(r"([a-z-]+)='([^']*)'")
SCRIPT = re.compile(r"<script>\n(.*)</script>", re.S)


@pytest.fixture
def sb(make_sandbox: SandboxFactory) -> Sandbox:
    return make_sandbox(components={"api", "gateway", "site"})


@pytest.fixture
def client(sb: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sb.site_url, timeout=10) as c:
        yield c


def shell(page: str) -> tuple[dict[str, str], str]:
    """The ``#app`` container's attributes and the inline script of a JS page."""
    app = APP.search(page)
    script = SCRIPT.search(page)
    assert app is not None and script is not None, page
    return {k: html.unescape(v) for k, v in ATTR.findall(app.group(1))}, script.group(1)


# ---------------------------------------------------------------------------- plain HTTP


def test_product_pages_hold_no_content_and_their_json_holds_it(
    sb: Sandbox, client: httpx.Client
) -> None:
    products = catalogue(sb.world.seed)
    for p in (products[0], products[len(products) // 2], products[-1]):
        page = client.get(f"/js/product/{p.id}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for shown in (p.name, p.price, p.sku, html.escape(p.description)):
            assert shown not in page.text, shown
        attrs, _ = shell(page.text)
        assert attrs["data-kind"] == "product"
        assert attrs["data-src"] == f"/api/product/{p.id}.json"
        data = client.get(attrs["data-src"]).json()
        assert data == p.as_json()
    for bad in ("0", str(len(products) + 1), "x"):
        assert client.get(f"/js/product/{bad}").status_code == 404
        missing = client.get(f"/api/product/{bad}.json")
        assert missing.status_code == 404 and missing.json() == {"error": "no such product"}


def test_listing_pages_hold_no_content_and_their_json_holds_it(
    sb: Sandbox, client: httpx.Client
) -> None:
    products = catalogue(sb.world.seed)
    pages = -(-len(products) // PAGE_SIZE)
    for number in (1, pages):
        page = client.get("/js/products", params={"page": number})
        assert page.status_code == 200
        chunk = products[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        assert not any(p.name in page.text for p in chunk)
        assert "href='/js/product/" not in page.text  # the links are the script's to make
        attrs, _ = shell(page.text)
        listing = client.get(attrs["data-src"]).json()
        assert [p["name"] for p in listing["data"]] == [p.name for p in chunk]
    for bad in ("0", str(pages + 1), "x"):
        assert client.get("/js/products", params={"page": bad}).status_code == 404


def test_the_static_shop_never_links_to_the_js_pages(client: httpx.Client) -> None:
    for path in ("/", "/products?page=1", "/product/1"):
        assert "/js/" not in client.get(path).text


def test_ip_and_headers_for_a_browser(client: httpx.Client) -> None:
    assert client.get("/ip").json()["ip"] == "127.0.0.1"  # JSON stays the default
    assert client.get("/ip", params={"format": "json"}).json()["ip"] == "127.0.0.1"
    page = client.get("/ip", params={"format": "html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "<tr><th>ip</th><td>127.0.0.1</td></tr>" in page.text
    assert "<tr><th>country</th><td></td></tr>" in page.text
    page = client.get("/headers", params={"format": "html"}, headers={"X-Probe": "<b>&"})
    assert "<tr><th>X-Probe</th><td>&lt;b&gt;&amp;</td></tr>" in page.text
    for bad in ("xml", "HTML", ""):
        assert client.get("/ip", params={"format": bad}).status_code == 400
        assert client.get("/headers", params={"format": bad}).status_code == 400


def test_favicon_is_empty_and_outside_the_budget(sb: Sandbox, client: httpx.Client) -> None:
    sb.control("site", budget=1, ban_window=60, ban_seconds=30)
    assert [client.get("/favicon.ico").status_code for _ in range(5)] == [204] * 5
    assert [client.get("/").status_code for _ in range(2)] == [200, 429]


def test_js_pages_and_their_json_count_against_the_budget(
    sb: Sandbox, client: httpx.Client
) -> None:
    sb.control("site", budget=2, ban_window=60, ban_seconds=30)
    assert client.get("/js/product/1").status_code == 200
    assert client.get("/api/product/1.json").status_code == 200
    assert client.get("/js/product/2").status_code == 429


def test_js_ip_names_the_exit_the_page_came_through(sb: Sandbox) -> None:
    with httpx.Client(proxy=sb.proxy_url(sb.world.credentials.username + "-session-js1")) as c:
        exit_ip = c.get(sb.site_url + "/ip").json()["ip"]
        attrs, _ = shell(c.get(sb.site_url + "/js/ip").text)
    assert attrs["data-page-ip"] == exit_ip != "127.0.0.1"
    assert attrs["data-src"] == "/ip"


# ---------------------------------------------------------------------------- the script, run


def render(sb: Sandbox, path: str, tmp_path: Path, **change: str) -> dict[str, Any]:
    """Load a JS page and run its script under Node; the document it built, as JSON.

    ``change`` replaces attributes of ``#app`` first (``data_src="/elsewhere"``).
    """
    url = sb.site_url + path
    attrs, script = shell(httpx.get(url, timeout=10).text)
    attrs.update({name.replace("_", "-"): value for name, value in change.items()})
    harness, source = tmp_path / "dom.js", tmp_path / "page.js"
    harness.write_text(DOM_STAND_IN)
    source.write_text(script)
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(harness), url, json.dumps(attrs), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def by_class(node: dict[str, Any], cls: str) -> list[dict[str, Any]]:
    found = [node] if node.get("cls") == cls else []
    for kid in node.get("kids", []):
        found.extend(by_class(kid, cls))
    return found


def text(node: dict[str, Any]) -> str:
    return node["text"] if "text" in node else "".join(text(k) for k in node["kids"])


needs_node = pytest.mark.skipif(NODE is None, reason="no node to run the pages' script")


@needs_node
def test_the_script_builds_the_product_page(sb: Sandbox, tmp_path: Path) -> None:
    p = catalogue(sb.world.seed)[41]
    doc = render(sb, f"/js/product/{p.id}", tmp_path)
    root = doc["root"]
    assert root["attrs"]["data-rendered"] == "true"
    assert doc["title"] == p.name
    shown = {cls: text(by_class(root, cls)[0]) for cls in ("name", "price", "sku", "category")}
    assert shown == {"name": p.name, "price": p.price, "sku": p.sku, "category": p.category}
    assert text(by_class(root, "stock")[0]) == str(p.stock)
    assert text(by_class(root, "description")[0]) == p.description
    (back,) = by_class(root, "back")
    assert back["attrs"]["href"] == f"/js/products?page={(p.id - 1) // PAGE_SIZE + 1}"


@needs_node
def test_the_script_builds_the_listing_with_links(sb: Sandbox, tmp_path: Path) -> None:
    products = catalogue(sb.world.seed)
    doc = render(sb, "/js/products?page=2", tmp_path)
    root = doc["root"]
    assert root["attrs"]["data-rendered"] == "true"
    items = by_class(root, "product")
    chunk = products[PAGE_SIZE : 2 * PAGE_SIZE]
    assert [i["attrs"]["data-id"] for i in items] == [str(p.id) for p in chunk]
    links = [i["kids"][0] for i in items]
    assert [a["attrs"]["href"] for a in links] == [f"/js/product/{p.id}" for p in chunk]
    assert [text(a) for a in links] == [p.name for p in chunk]
    assert by_class(root, "prev")[0]["attrs"]["href"] == "/js/products?page=1"
    assert by_class(root, "next")[0]["attrs"]["href"] == "/js/products?page=3"


@needs_node
def test_the_script_shows_what_ip_says(sb: Sandbox, tmp_path: Path) -> None:
    doc = render(sb, "/js/ip", tmp_path)
    root = doc["root"]
    assert root["attrs"]["data-rendered"] == "true"
    assert text(by_class(root, "ip")[1]) == "127.0.0.1"  # [0] is the <dl class="ip">
    assert text(by_class(root, "same-exit")[0]) == "yes"


@needs_node
def test_the_script_says_when_its_json_is_missing(sb: Sandbox, tmp_path: Path) -> None:
    doc = render(sb, "/js/product/1", tmp_path, data_src="/api/product/0.json")
    root = doc["root"]
    assert root["attrs"]["data-rendered"] == "error"
    (error,) = by_class(root, "error")
    assert "/api/product/0.json" in text(error) and "HTTP 404" in text(error)
    assert by_class(root, "name") == []
