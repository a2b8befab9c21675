"""The demo site: a small shop on loopback to scrape through the sandbox gateway.

The runner serves :func:`build_site_app` on HTTP and HTTPS (certificate from the sandbox CA).

The shop (deterministic from ``world.seed``, so a crawl has a known, countable result):

- ``/`` links to ``/products?page=1``; ``/products?page=N`` lists :data:`PAGE_SIZE` products
  (``<li class="product"><a href="/product/ID">``) with ``<a class="next">`` / ``<a
  class="prev">`` and a link to every page in ``<nav class="pagination">``;
- ``/product/<id>`` (ids 1..count): ``<h1 class="name">``, ``<span class="price">``,
  ``<span class="sku">``, ``<span class="category">``, ``<p class="description">``;
- ``/catalog.json``: ``{"products", "pages", "page_size", "product_ids"...}``, the totals a
  crawl must find; ``/api/products?page=N``: the same listing as JSON; ``/robots.txt``.

The same shop rendered by JavaScript (:mod:`proxaro_scrape.sandbox._site_js`), for browsers: each
page's HTML holds an empty ``<main id="app">`` and a script that fetches JSON and builds the
content with the static pages' class names, then sets ``data-rendered="true"`` on ``#app``
(``"error"`` if the fetch failed).  No static page links to them, so crawls of the static shop
are unchanged; each costs two requests of the anti-bot budget (the page and its JSON).

- ``/js/products?page=N``: the listing, from ``/api/products?page=N``, linking to
  ``/js/product/<id>`` and to the other ``/js/products`` pages (``a.prev``, ``a.page``,
  ``a.next``);
- ``/js/product/<id>``: the product page (``h1.name``, ``span.price``, ``span.sku``,
  ``span.category``, ``span.stock``, ``p.description``), from ``/api/product/<id>.json``
  (the product as JSON; a JSON 404 for an unknown id);
- ``/js/ip``: what ``/ip`` says of the script's own fetch (``dd.ip``, ``dd.country``, ``dd.asn``,
  ``dd.exit_class``) beside the page's own address (``#app[data-page-ip]``), and ``dd.same-exit``
  ``yes`` when the page and its fetch left through the same exit.

Tools for tests:

- ``/ip`` → ``{"ip", "country", "asn", "exit_class"}``: the client address as seen; for a
  gateway exit, the exit's public IP and what the world knows of it; otherwise the address
  itself and nulls.  ``/headers`` → ``{"headers": {...}}`` as received (names as sent).  Both
  are plain JSON, which a browser shows as text; ``?format=html`` gives a table instead
  (``<th>`` name, ``<td>`` value) for a person at a browser.  ``/favicon.ico`` answers 204 (a
  browser asks for it on its own; it is outside the anti-bot budget).
- ``/redirect?to=URL[&status=302]`` (same-host or cross-host), ``/status/<code>``,
  ``/delay/<ms>``, ``/bytes/<n>`` (Content-Length), ``/stream/<n>?size=&delay_ms=`` (chunked),
  ``POST|PUT /echo`` → ``{"bytes", "sha256", "transfer_encoding", "content_length"}``.
  (The tools live in :mod:`proxaro_scrape.sandbox._site_tools`.)

A site that speaks as if it were the gateway (the trust rules of ``gateway-protocol.md``,
section 3), on the HTTP and the HTTPS port alike:

- ``/spoof/<status>[?error=<code>]`` (any method, status 200..599) answers ``<status>`` with the
  site's own ``X-Proxaro-Error: <code>`` and a made-up exit: ``X-Proxaro-Exit-IP: 203.0.113.7``,
  ``X-Proxaro-Exit-Country: zz``, ``X-Proxaro-Exit-ASN: AS64496``, ``X-Proxaro-Exit-Class:
  datacenter``, ``X-Proxaro-Session: spoofed``; the body is JSON ``{"spoofed_by": "site",
  "status", "error"}``.  The default code follows the protocol's table for the status:
  ``bad_targeting`` for 200 and 400, ``source_not_allowed`` for 403, ``auth_failed`` for 407,
  ``no_exit`` for 502, ``target_timeout`` for 504, ``no_exit`` for any other; ``?error=`` (empty)
  sends no ``X-Proxaro-Error``; any other code must match ``[a-z_]{1,40}`` (else 400).  A 407
  also carries ``Proxy-Authenticate: Basic realm="site"``.
- What a client sees of them: over plain HTTP the gateway strips every ``X-Proxaro-*`` and
  ``Proxy-*`` header of the site's answer and adds its own exit headers, so the status arrives
  with the real exit and no ``X-Proxaro-Error``; inside a CONNECT tunnel (HTTPS) the answer
  arrives exactly as the site sent it, spoofed headers included, and only the answer to the
  CONNECT carries the gateway's headers.
- They are exempt from the anti-bot budget, bans and slow pages (below), so that they answer the
  same however often and in whatever order a test calls them; they count in ``site.requests``.

Anti-bot, per client address, in world time (``world.knobs``): ``site_budget`` requests per
``site_ban_window`` seconds.  The first request past the budget gets 429 (with
``Retry-After``) and starts a ban: every request of that address then gets a 403 "banned"
page for ``site_ban_seconds``, after which a fresh window starts.  Slow pages: ``site_slow_ms``
of added latency on paths starting with one of ``site_slow_paths`` (all paths when that list
is empty).  ``/catalog.json``, ``/robots.txt``, ``/favicon.ico`` and the ``/spoof/`` pages are
exempt from both, so that tests can always read the totals.  Every request counts in
``site.requests``.
"""

from __future__ import annotations

import asyncio
import html
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from proxaro_scrape.sandbox._site_js import js_routes
from proxaro_scrape.sandbox._site_tools import MAX_BYTES, SPOOF_PREFIX, tool_routes, whois
from proxaro_scrape.sandbox.world import World

__all__ = ["PAGE_SIZE", "Product", "build_site_app", "catalogue"]

PAGE_SIZE = 20
_EXEMPT = frozenset({"/catalog.json", "/robots.txt", "/favicon.ico"})
_MAX_ADDRESSES = 100_000

_ADJECTIVES = (
    "Sturdy",
    "Compact",
    "Classic",
    "Bright",
    "Quiet",
    "Rugged",
    "Elegant",
    "Nimble",
    "Cozy",
    "Vintage",
    "Modern",
    "Handmade",
)
_MATERIALS = ("Oak", "Steel", "Linen", "Ceramic", "Bamboo", "Copper", "Wool", "Glass", "Leather")
_NOUNS = {
    "kitchen": ("Kettle", "Teapot", "Skillet", "Cutting Board", "Mug", "Colander"),
    "garden": ("Trowel", "Planter", "Watering Can", "Bird Feeder", "Hose Reel"),
    "office": ("Desk Lamp", "Notebook", "Pen Holder", "Monitor Stand", "Stapler"),
    "outdoor": ("Lantern", "Backpack", "Camp Chair", "Water Bottle", "Hammock"),
    "home": ("Throw Blanket", "Candle", "Wall Clock", "Vase", "Doormat", "Bookend"),
}


@dataclass(frozen=True)
class Product:
    """One product of the demo shop."""

    id: int
    name: str
    category: str
    price: str  # "49.90": a string, as scraped
    sku: str
    stock: int
    description: str

    def as_json(self) -> dict[str, object]:
        """The product as ``/api/products`` and ``/api/product/<id>.json`` serve it."""
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "price": self.price,
            "sku": self.sku,
            "stock": self.stock,
            "description": self.description,
            "url": f"/product/{self.id}",
        }


def catalogue(seed: int) -> list[Product]:
    """The shop's products for ``seed``: a few hundred, always the same for a seed."""
    rng = random.Random(f"proxaro-site:{seed}")
    count = rng.randrange(240, 361)
    categories = sorted(_NOUNS)
    products = []
    for pid in range(1, count + 1):
        category = rng.choice(categories)
        noun = rng.choice(_NOUNS[category])
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_MATERIALS)} {noun}"
        price = f"{rng.randrange(400, 50000) / 100:.2f}"
        sku = f"PX-{rng.randrange(100000, 1000000)}"
        description = (
            f"A {name.lower()} for your {category}. "
            f"Ships in {rng.randrange(1, 8)} days; {rng.randrange(1, 6)}-year warranty."
        )
        products.append(
            Product(pid, name, category, price, sku, rng.randrange(0, 120), description)
        )
    return products


def _page(title: str, body: str) -> web.Response:
    text = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n<body>\n"
        "<header><a class='home' href='/'>Proxaro demo shop</a></header>\n"
        f"{body}\n</body></html>\n"
    )
    return web.Response(text=text, content_type="text/html")


@dataclass
class _Visitor:
    window_start: float
    count: int = 0
    banned_until: float = 0.0


def build_site_app(world: World) -> web.Application:
    """The demo shop as an aiohttp application (see the module docstring)."""
    products = catalogue(world.seed)
    pages = math.ceil(len(products) / PAGE_SIZE)
    visitors: dict[str, _Visitor] = {}

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        world.counters["site.requests"] += 1
        path = request.path
        if path in _EXEMPT or path.startswith(SPOOF_PREFIX):
            return await handler(request)
        knobs = world.knobs
        address = request.remote or ""
        now = world.clock.now()
        visitor = visitors.get(address)
        if visitor is None:
            if len(visitors) >= _MAX_ADDRESSES:
                visitors.clear()
            visitor = visitors[address] = _Visitor(now)
        if visitor.banned_until > now:
            return web.Response(
                status=403,
                text="<!doctype html><html><body><h1>Access denied</h1>"
                "<p class='banned'>You have been banned. Too many requests.</p></body></html>",
                content_type="text/html",
            )
        if now - visitor.window_start >= knobs.site_ban_window:
            visitor.window_start = now
            visitor.count = 0
        visitor.count += 1
        if visitor.count > knobs.site_budget:
            visitor.banned_until = now + knobs.site_ban_seconds
            visitor.window_start = visitor.banned_until
            visitor.count = 0
            world.note("site_ban", address=address, seconds=knobs.site_ban_seconds)
            return web.Response(
                status=429,
                text="Too many requests; slow down.\n",
                headers={"Retry-After": str(max(1, math.ceil(knobs.site_ban_seconds)))},
            )
        if knobs.site_slow_ms > 0 and (
            not knobs.site_slow_paths or any(path.startswith(p) for p in knobs.site_slow_paths)
        ):
            await asyncio.sleep(knobs.site_slow_ms / 1000)
        return await handler(request)

    routes = web.RouteTableDef()

    @routes.get("/")
    async def home(request: web.Request) -> web.Response:
        return _page(
            "Proxaro demo shop",
            f"<h1>Proxaro demo shop</h1>\n<p>{len(products)} products on {pages} pages.</p>\n"
            "<a class='products' href='/products?page=1'>All products</a>",
        )

    def page_number(request: web.Request) -> int:
        try:
            number = int(request.query.get("page", "1"))
        except ValueError:
            raise web.HTTPNotFound(text="no such page\n") from None
        if not 1 <= number <= pages:
            raise web.HTTPNotFound(text="no such page\n")
        return number

    @routes.get("/products")
    async def listing(request: web.Request) -> web.Response:
        number = page_number(request)
        chunk = products[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        items = "\n".join(
            f"<li class='product' data-id='{p.id}'><a href='/product/{p.id}'>"
            f"{html.escape(p.name)}</a> <span class='price'>{p.price}</span></li>"
            for p in chunk
        )
        nav = []
        if number > 1:
            nav.append(f"<a class='prev' href='/products?page={number - 1}'>Previous</a>")
        nav.extend(
            f"<a class='page' href='/products?page={n}'>{n}</a>" for n in range(1, pages + 1)
        )
        if number < pages:
            nav.append(f"<a class='next' href='/products?page={number + 1}'>Next</a>")
        return _page(
            f"Products, page {number}",
            f"<h1>Products, page {number} of {pages}</h1>\n<ul class='products'>\n{items}\n"
            f"</ul>\n<nav class='pagination'>{' '.join(nav)}</nav>",
        )

    @routes.get("/api/products")
    async def listing_json(request: web.Request) -> web.Response:
        number = page_number(request)
        chunk = products[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        return web.json_response(
            {
                "page": number,
                "pages": pages,
                "data": [p.as_json() for p in chunk],
                "next": f"/api/products?page={number + 1}" if number < pages else None,
            }
        )

    @routes.get("/product/{pid}")
    async def product(request: web.Request) -> web.Response:
        try:
            pid = int(request.match_info["pid"])
        except ValueError:
            raise web.HTTPNotFound(text="no such product\n") from None
        if not 1 <= pid <= len(products):
            raise web.HTTPNotFound(text="no such product\n")
        p = products[pid - 1]
        listing_page = (pid - 1) // PAGE_SIZE + 1
        return _page(
            p.name,
            f"<div class='product' data-id='{p.id}'>\n<h1 class='name'>{html.escape(p.name)}</h1>\n"
            f"<span class='price'>{p.price}</span> <span class='sku'>{p.sku}</span> "
            f"<span class='category'>{p.category}</span> <span class='stock'>{p.stock}</span>\n"
            f"<p class='description'>{html.escape(p.description)}</p>\n</div>\n"
            f"<a class='back' href='/products?page={listing_page}'>Back to the list</a>",
        )

    @routes.get("/catalog.json")
    async def catalog(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "products": len(products),
                "pages": pages,
                "page_size": PAGE_SIZE,
                "seed": world.seed,
                "product_ids": [1, len(products)],
                "listing_urls": [f"/products?page={n}" for n in range(1, pages + 1)],
            }
        )

    @routes.get("/robots.txt")
    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nAllow: /\n")

    app = web.Application(middlewares=[guard], client_max_size=MAX_BYTES)
    app.add_routes(routes)
    app.add_routes(js_routes(products, PAGE_SIZE, page_number, lambda a: whois(world, a)))
    app.add_routes(tool_routes(world))
    return app
