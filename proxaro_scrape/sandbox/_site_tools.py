"""The demo site's tools for tests: what a client looks like from the site, and odd answers.

Served by :func:`proxaro_scrape.sandbox.site.build_site_app` beside the shop (the site's module
docstring lists every path).  ``/spoof/<status>`` is the loopback target of protocol section 3's
trust rule: a site that sets ``X-Proxaro-*`` headers in its *own* answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
from collections.abc import Mapping

from aiohttp import web

from proxaro_scrape import protocol
from proxaro_scrape.sandbox.world import World

__all__ = [
    "MAX_BYTES",
    "SPOOF_DEFAULT_ERRORS",
    "SPOOF_EXIT_HEADERS",
    "SPOOF_PREFIX",
    "SPOOF_PROXY_AUTHENTICATE",
    "tool_routes",
    "whois",
]

#: The largest body ``/bytes/<n>`` sends and ``/echo`` accepts.
MAX_BYTES = 50 * 1024 * 1024

SPOOF_PREFIX = "/spoof/"
#: The ``X-Proxaro-Error`` a spoof page sends by default, per status (``no_exit`` otherwise).
SPOOF_DEFAULT_ERRORS: dict[int, str] = {
    200: protocol.ERROR_BAD_TARGETING,
    400: protocol.ERROR_BAD_TARGETING,
    403: protocol.ERROR_SOURCE_NOT_ALLOWED,
    407: protocol.ERROR_AUTH_FAILED,
    502: protocol.ERROR_NO_EXIT,
    504: protocol.ERROR_TARGET_TIMEOUT,
}
#: The exit a spoof page claims to have come through (documentation addresses, RFC 5737 /
#: RFC 5398, and a country code no exit has), so that a test can tell them from the gateway's.
SPOOF_EXIT_HEADERS: dict[str, str] = {
    protocol.HEADER_EXIT_IP: "203.0.113.7",
    protocol.HEADER_EXIT_COUNTRY: "zz",
    protocol.HEADER_EXIT_ASN: "AS64496",
    protocol.HEADER_EXIT_CLASS: "datacenter",
    protocol.HEADER_SESSION: "spoofed",
}
#: What a spoofed 407 asks for: the site's realm, not the gateway's ``proxaro``.
SPOOF_PROXY_AUTHENTICATE = 'Basic realm="site"'

_ERROR_TOKEN = re.compile(r"[a-z_]{1,40}")
_FORMATS = ("json", "html")


def whois(world: World, address: str) -> dict[str, str | None]:
    """What ``/ip`` answers for a client address: the exit's public IP and what the world
    knows of it when the address is an exit's, else the address itself and nulls."""
    ex = world.exit_for_address(address)
    if ex is None:
        return {"ip": address, "country": None, "asn": None, "exit_class": None}
    return {"ip": ex.ip, "country": ex.country, "asn": ex.asn, "exit_class": ex.exit_class}


def _wants_html(request: web.Request) -> bool:
    """``?format=html`` (a page for a person at a browser) or ``json`` (the default)."""
    fmt = request.query.get("format", "json")
    if fmt not in _FORMATS:
        raise web.HTTPBadRequest(text="format is json or html\n")
    return fmt == "html"


def _table(title: str, cls: str, rows: Mapping[str, str | None]) -> web.Response:
    """``rows`` as an HTML table, one ``<tr>`` per key (``<th>`` name, ``<td>`` value)."""
    cells = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{'' if v is None else html.escape(v)}</td></tr>"
        for k, v in rows.items()
    )
    text = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"<table class='{cls}'>\n{cells}\n</table>\n</body></html>\n"
    )
    return web.Response(text=text, content_type="text/html")


def tool_routes(world: World) -> web.RouteTableDef:
    """The tools' routes over ``world`` (``/ip`` names the exit a request came through)."""
    routes = web.RouteTableDef()

    @routes.get("/ip")
    async def ip(request: web.Request) -> web.Response:
        seen = whois(world, request.remote or "")
        if _wants_html(request):
            return _table("Your address as this site sees it", "ip", seen)
        return web.json_response(seen)

    @routes.get("/headers")
    async def headers(request: web.Request) -> web.Response:
        seen: dict[str, str] = {}
        for raw_name, raw_value in request.raw_headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            seen[name] = f"{seen[name]}, {value}" if name in seen else value
        if _wants_html(request):
            return _table("The request headers this site received", "headers", seen)
        return web.json_response({"headers": seen})

    @routes.get("/favicon.ico")
    async def favicon(request: web.Request) -> web.Response:
        # Browsers ask for it on their own; an empty answer keeps their logs quiet.
        return web.Response(status=204)

    @routes.get("/redirect")
    async def redirect(request: web.Request) -> web.Response:
        to = request.query.get("to")
        if not to:
            raise web.HTTPBadRequest(text="give ?to=URL\n")
        try:
            status = int(request.query.get("status", "302"))
        except ValueError:
            status = 0
        if status not in (301, 302, 303, 307, 308):
            raise web.HTTPBadRequest(text="status is one of 301, 302, 303, 307, 308\n")
        return web.Response(status=status, headers={"Location": to}, text=f"see {to}\n")

    @routes.route("*", "/status/{code}")
    async def status(request: web.Request) -> web.Response:
        try:
            code = int(request.match_info["code"])
        except ValueError:
            code = 0
        if not 200 <= code <= 599:
            raise web.HTTPBadRequest(text="status is 200..599\n")
        if code in (204, 304):
            return web.Response(status=code)
        return web.Response(status=code, text=f"status {code}\n")

    @routes.get("/delay/{ms}")
    async def delay(request: web.Request) -> web.Response:
        try:
            ms = min(60_000, max(0, int(request.match_info["ms"])))
        except ValueError:
            raise web.HTTPBadRequest(text="milliseconds, as an integer\n") from None
        await asyncio.sleep(ms / 1000)
        return web.json_response({"delayed_ms": ms})

    @routes.get("/bytes/{n}")
    async def nbytes(request: web.Request) -> web.Response:
        try:
            n = int(request.match_info["n"])
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BYTES:
            raise web.HTTPBadRequest(text=f"0..{MAX_BYTES} bytes\n")
        block = bytes(range(256))
        body = (block * (n // 256 + 1))[:n]
        return web.Response(body=body, content_type="application/octet-stream")

    @routes.get("/stream/{n}")
    async def stream(request: web.Request) -> web.StreamResponse:
        try:
            n = int(request.match_info["n"])
            size = int(request.query.get("size", "1024"))
            delay_ms = int(request.query.get("delay_ms", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="integers, please\n") from None
        if not (0 <= n <= 10_000 and 1 <= size <= 1024 * 1024 and 0 <= delay_ms <= 10_000):
            raise web.HTTPBadRequest(text="n 0..10000, size 1..1048576, delay_ms 0..10000\n")
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(n):
            await resp.write(bytes([i % 256]) * size)
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
        await resp.write_eof()
        return resp

    @routes.post("/echo")
    @routes.put("/echo")
    async def echo(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        total = 0
        async for data in request.content.iter_any():
            digest.update(data)
            total += len(data)
        return web.json_response(
            {
                "method": request.method,
                "bytes": total,
                "sha256": digest.hexdigest(),
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
                "content_length": request.headers.get("Content-Length"),
            }
        )

    @routes.route("*", SPOOF_PREFIX + "{status}")
    async def spoof(request: web.Request) -> web.Response:
        try:
            status = int(request.match_info["status"])
        except ValueError:
            status = 0
        if not 200 <= status <= 599:
            raise web.HTTPBadRequest(text="status is 200..599\n")
        error = request.query.get("error", SPOOF_DEFAULT_ERRORS.get(status, protocol.ERROR_NO_EXIT))
        if error and not _ERROR_TOKEN.fullmatch(error):
            raise web.HTTPBadRequest(text="error is [a-z_]{1,40}, or empty for no header\n")
        spoofed = dict(SPOOF_EXIT_HEADERS)
        if error:
            spoofed[protocol.HEADER_ERROR] = error
        if status == 407:
            spoofed["Proxy-Authenticate"] = SPOOF_PROXY_AUTHENTICATE
        if status in (204, 304):
            return web.Response(status=status, headers=spoofed)
        payload = {"spoofed_by": "site", "status": status, "error": error or None}
        return web.json_response(payload, status=status, headers=spoofed)

    return routes
