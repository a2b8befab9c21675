"""The demo shop's JavaScript-rendered pages: content that only a script shows.

Each page's HTML is a shell: an empty ``<main id="app">`` whose ``data-src`` names a JSON
endpoint, and an inline script that fetches it and builds the content with the same class names
as the static pages (``h1.name``, ``span.price``...).  A client that does not run scripts sees
none of it; a browser does, and the script marks the container ``data-rendered="true"`` once it
is built (``"error"`` if the fetch failed), so that a test can wait for that attribute.

Listed in :mod:`proxaro_scrape.sandbox.site`'s docstring; no static page links here, so a crawl
of the static shop is unchanged.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from proxaro_scrape.sandbox.site import Product

__all__ = ["JS_PREFIX", "RENDER_SCRIPT", "js_routes"]

JS_PREFIX = "/js/"

#: The one script every JS page inlines.  Plain ES5 and DOM calls only (``textContent``, never
#: ``innerHTML``), so that it runs in any browser and in the tests' small DOM stand-in.
RENDER_SCRIPT = """(function () {
  "use strict";
  var root = document.getElementById("app");
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function link(cls, href, text) {
    var a = el("a", cls, text);
    a.setAttribute("href", href);
    return a;
  }
  function field(box, tag, cls, value) {
    box.appendChild(el(tag, cls, value));
    box.appendChild(document.createTextNode(" "));
  }
  var render = {
    product: function (p) {
      document.title = p.name;
      var box = el("div", "product");
      box.setAttribute("data-id", String(p.id));
      box.appendChild(el("h1", "name", p.name));
      field(box, "span", "price", p.price);
      field(box, "span", "sku", p.sku);
      field(box, "span", "category", p.category);
      field(box, "span", "stock", p.stock);
      box.appendChild(el("p", "description", p.description));
      root.appendChild(box);
      var back = Math.floor((p.id - 1) / Number(root.getAttribute("data-page-size"))) + 1;
      root.appendChild(link("back", "/js/products?page=" + back, "Back to the list"));
    },
    products: function (page) {
      document.title = "Products, page " + page.page;
      root.appendChild(el("h1", null, "Products, page " + page.page + " of " + page.pages));
      var list = el("ul", "products");
      page.data.forEach(function (p) {
        var item = el("li", "product");
        item.setAttribute("data-id", String(p.id));
        item.appendChild(link(null, "/js/product/" + p.id, p.name));
        item.appendChild(document.createTextNode(" "));
        item.appendChild(el("span", "price", p.price));
        list.appendChild(item);
      });
      root.appendChild(list);
      var nav = el("nav", "pagination");
      if (page.page > 1) {
        nav.appendChild(link("prev", "/js/products?page=" + (page.page - 1), "Previous"));
      }
      for (var n = 1; n <= page.pages; n++) {
        nav.appendChild(link("page", "/js/products?page=" + n, String(n)));
      }
      if (page.page < page.pages) {
        nav.appendChild(link("next", "/js/products?page=" + (page.page + 1), "Next"));
      }
      root.appendChild(nav);
    },
    ip: function (seen) {
      var box = el("dl", "ip");
      ["ip", "country", "asn", "exit_class"].forEach(function (key) {
        box.appendChild(el("dt", null, key));
        box.appendChild(el("dd", key, seen[key]));
      });
      var same = seen.ip === root.getAttribute("data-page-ip") ? "yes" : "no";
      box.appendChild(el("dt", null, "same exit as the page"));
      box.appendChild(el("dd", "same-exit", same));
      root.appendChild(box);
    }
  };
  var url = new URL(root.getAttribute("data-src"), location.href).href;
  fetch(url, { headers: { "Accept": "application/json" } })
    .then(function (resp) {
      if (!resp.ok) { throw new Error("HTTP " + resp.status); }
      return resp.json();
    })
    .then(function (data) {
      render[root.getAttribute("data-kind")](data);
      root.setAttribute("data-rendered", "true");
    })
    .catch(function (err) {
      root.appendChild(el("p", "error", "Could not load " + url + ": " + err));
      root.setAttribute("data-rendered", "error");
    });
})();
"""


def _shell(kind: str, src: str, **data: str) -> web.Response:
    """A page whose content the script builds from the JSON at ``src``."""
    attrs = "".join(
        f" data-{name.replace('_', '-')}='{html.escape(v)}'" for name, v in data.items()
    )
    text = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Loading</title></head>\n"
        "<body>\n<header><a class='home' href='/'>Proxaro demo shop</a></header>\n"
        f"<main id='app' data-kind='{kind}' data-src='{html.escape(src)}'{attrs}></main>\n"
        f"<noscript>This page needs JavaScript: its content comes from {html.escape(src)}."
        "</noscript>\n"
        f"<script>\n{RENDER_SCRIPT}</script>\n</body></html>\n"
    )
    return web.Response(text=text, content_type="text/html")


def js_routes(
    products: Sequence[Product],
    page_size: int,
    page_number: Callable[[web.Request], int],
    whois: Callable[[str], dict[str, str | None]],
) -> web.RouteTableDef:
    """The JS pages over the shop's ``products`` and their JSON endpoint.

    ``page_number(request)`` reads ``?page=`` as the static listing does (404 out of range);
    ``whois(address)`` is what ``/ip`` answers for a client address.
    """
    routes = web.RouteTableDef()

    def product_of(request: web.Request) -> Product:
        try:
            pid = int(request.match_info["pid"])
        except ValueError:
            raise web.HTTPNotFound(text="no such product\n") from None
        if not 1 <= pid <= len(products):
            raise web.HTTPNotFound(text="no such product\n")
        return products[pid - 1]

    @routes.get(JS_PREFIX + "products")
    async def listing(request: web.Request) -> web.Response:
        number = page_number(request)
        return _shell("products", f"/api/products?page={number}")

    @routes.get(JS_PREFIX + "product/{pid}")
    async def product(request: web.Request) -> web.Response:
        p = product_of(request)
        return _shell("product", f"/api/product/{p.id}.json", page_size=str(page_size))

    @routes.get("/api/product/{pid}.json")
    async def product_json(request: web.Request) -> web.Response:
        try:
            p = product_of(request)
        except web.HTTPNotFound:
            return web.json_response({"error": "no such product"}, status=404)
        return web.json_response(p.as_json())

    @routes.get(JS_PREFIX + "ip")
    async def ip(request: web.Request) -> web.Response:
        # The page's own client address as the site saw it, for the script to compare with
        # what its fetch of /ip sees: the same exit when the page's subresources leave through
        # the page's own route.
        return _shell("ip", "/ip", page_ip=str(whois(request.remote or "")["ip"]))

    return routes
