"""The Playwright helper against the sandbox, with a real headless Chromium.

Nothing is mocked: the sandbox's API, gateway and JavaScript-rendered shop run on loopback, and
the browser is the system Chromium.  Skipped, with the reason, only where Playwright or
Chromium is truly missing (CI installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxaro_scrape import AttemptsExhaustedError, GatewayManager
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.site import catalogue

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason='Playwright is not installed: pip install "proxaro-scrape[playwright]"',
)
from proxaro_scrape.integrations.playwright import (  # noqa: E402
    BrowserNotFoundError,
    BrowserPage,
    ProxaroBrowser,
    find_chromium,
    is_heavy_request,
    launch_chromium,
)

CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH: apt-get install chromium"
)
pytestmark = [pytest.mark.timeout(120)]

COUNTRIES = ("us", "de", "fr")


async def counters(sb: Sandbox) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as c:
        return dict((await c.get(f"{sb.api_url}/_sandbox/counters")).json())


@contextlib.asynccontextmanager
async def browsing(
    sb: Sandbox, **options: Any
) -> AsyncIterator[tuple[GatewayManager, ProxaroBrowser]]:
    """A started manager, a headless Chromium and a helper over them, all closed after."""
    manager_kw = options.pop("manager_kw", {})
    options.setdefault("context_options", {"ignore_https_errors": True})
    async with GatewayManager(sb.api_key, sb.api_url, **manager_kw) as mgr:
        async with playwright_api.async_playwright() as pw:
            browser = await launch_chromium(pw, executable_path=CHROMIUM)
            try:
                async with ProxaroBrowser(mgr, browser, **options) as pages:
                    yield mgr, pages
                    assert pages.peak_contexts <= pages._slots.maxsize
            finally:
                await browser.close()


async def rendered(visit: BrowserPage) -> Any:
    """Wait for the page's script to have built its content; the container's locator."""
    app = visit.page.locator("#app")
    await visit.page.wait_for_function(
        "document.getElementById('app').getAttribute('data-rendered') !== null"
    )
    assert await app.get_attribute("data-rendered") == "true"
    return app


async def json_of(visit: BrowserPage) -> Any:
    import json

    return json.loads(await visit.page.locator("body").inner_text())


# ---------------------------------------------------------------------------- no browser


def test_a_missing_chromium_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BrowserNotFoundError) as info:
        find_chromium("/nonexistent/chromium")
    assert "apt-get install chromium" in str(info.value)
    assert info.value.param == "executable_path"
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrowserNotFoundError) as info:
        find_chromium()
    assert "apt-get install chromium" in str(info.value)


def test_the_saver_rule_for_scrapy_playwright() -> None:
    class Req:
        def __init__(self, kind: str) -> None:
            self.resource_type = kind

    heavy = [k for k in ("document", "script", "fetch", "xhr", "stylesheet", "image", "font",
                         "media") if is_heavy_request(Req(k))]  # type: ignore[arg-type]  # fmt: skip
    assert heavy == ["image", "font", "media"]


@pytest.mark.parametrize(
    ("status", "headers", "url", "refused"),
    [
        (407, {"x-proxaro-error": "auth_failed"}, "http://shop.test/api/1.json", True),
        (407, {}, "http://shop.test/api/1.json", False),  # the site's own 407, in the clear
        (407, {}, "https://shop.test/api/1.json", True),  # inside a tunnel: the CONNECT's
        (407, None, "HTTPS://shop.test/x", True),
        (403, {"x-proxaro-error": "auth_failed"}, "http://shop.test/x", False),
        (200, {}, "https://shop.test/x", False),
        (502, {"x-proxaro-error": "exit_unreachable"}, "http://shop.test/x", False),
    ],
    ids=["http_gateway", "http_site", "https", "https_upper", "403", "200", "exit_502"],
)
def test_which_answers_to_a_pages_own_requests_are_the_gateway_refusing_it(
    status: int, headers: Any, url: str, refused: bool
) -> None:
    from proxaro_scrape.integrations._playwright_edge import refused_by_gateway

    assert refused_by_gateway(status, headers, url) is refused


# ---------------------------------------------------------------------------- context slots


async def test_context_slots_cap_lru_and_retire() -> None:
    from proxaro_scrape.integrations._playwright_edge import ContextSlots

    made: list[str] = []
    closed: list[str] = []

    async def close(value: str) -> None:
        closed.append(value)

    slots: ContextSlots[str, str] = ContextSlots(2, close)

    def maker(key: str) -> Any:
        async def make(generation: int) -> str:
            made.append(f"{key}{generation}")
            return f"{key}{generation}"

        return make

    a = await slots.acquire("a", maker("a"))
    b = await slots.acquire("b", maker("b"))
    assert (a.value, b.value, len(slots)) == ("a0", "b0", 2)
    # Both in use: a third route waits rather than exceed the cap...
    waiting = asyncio.ensure_future(slots.acquire("c", maker("c")))
    await asyncio.sleep(0.01)
    assert not waiting.done() and len(slots) == 2
    await slots.release(a)  # ...until one is idle: the least recently used idle one closes.
    c = await asyncio.wait_for(waiting, 5)
    assert c.value == "c0" and closed == ["a0"] and len(slots) == 2
    # The same key shares its context; a retired one closes with its last user.
    b2 = await slots.acquire("b", maker("b"))
    assert b2 is b and b.users == 2
    await slots.retire(b)
    assert closed == ["a0"] and len(slots) == 2  # still in use: open, and counted
    await slots.release(b)
    await slots.release(b2)
    assert closed == ["a0", "b0"] and len(slots) == 1
    b3 = await slots.acquire("b", maker("b"))
    assert b3.value == "b1"  # a new generation: a new context for the same route
    await slots.release(b3)
    await slots.release(c)
    await slots.retire_where(lambda key: key == "c")
    assert closed[-1] == "c0"
    await slots.aclose()
    assert sorted(closed) == ["a0", "b0", "b1", "c0"] and len(slots) == 0
    assert slots.peak == 2 and made == ["a0", "b0", "c0", "b1"]


# ---------------------------------------------------------------------------- rendering


@needs_chromium
async def test_js_pages_render_in_three_countries_through_their_exits(sandbox: Sandbox) -> None:
    sb = sandbox
    products = catalogue(0)
    async with browsing(sb, max_contexts=4) as (mgr, pages):
        for i, country in enumerate(COUNTRIES):
            for base in (sb.site_url, sb.site_https_url):
                product = products[i * 7 + (base == sb.site_url)]
                key = f"{country}-{base[:5]}"
                async with pages.open(
                    f"{base}/js/product/{product.id}", target={"country": country}, session_key=key
                ) as visit:
                    app = await rendered(visit)
                    # Script-made content: the HTML itself holds an empty #app.
                    assert await app.locator("h1.name").inner_text() == product.name
                    assert visit.status == 200
                    if base == sb.site_url:
                        assert visit.exit is not None and visit.exit.country == country
                    else:
                        assert visit.exit is None  # the browser hides the CONNECT answer
                # The same route, the same context and exit: /ip and the script's own fetch.
                async with pages.open(
                    f"{base}/ip", target={"country": country}, session_key=key
                ) as visit:
                    seen = await json_of(visit)
                    assert seen["country"] == country
                    if visit.exit is not None:
                        assert visit.exit.ip == seen["ip"]
                async with pages.open(
                    f"{base}/js/ip", target={"country": country}, session_key=key
                ) as visit:
                    app = await rendered(visit)
                    assert await app.locator("dd.country").inner_text() == country
                    assert await app.locator("dd.ip").inner_text() == seen["ip"]
                    # Every subresource leaves through the page's context: the same exit.
                    assert await app.locator("dd.same-exit").inner_text() == "yes"
        listing = await pages.open(
            f"{sb.site_https_url}/js/products?page=2", target={"country": "de"}
        )
        try:
            app = await rendered(listing)
            assert await app.locator("li.product").count() > 0
        finally:
            await listing.close()
        assert mgr.stats()["requests/country/fr"] >= 6
        assert pages.contexts <= 4


@needs_chromium
async def test_credentials_never_reach_the_site_nor_the_log(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    sb = sandbox
    caplog.set_level(logging.DEBUG)
    async with browsing(sb) as (mgr, pages):
        password = mgr.credentials.password.reveal()  # type: ignore[union-attr]
        for base in (sb.site_url, sb.site_https_url):
            for key in (None, "cart42"):
                async with pages.open(f"{base}/headers", session_key=key) as visit:
                    text = await visit.page.locator("body").inner_text()
                    headers = {k.lower() for k in (await json_of(visit))["headers"]}
                assert "proxy-authorization" not in headers and not any(
                    h.startswith("proxy-") for h in headers
                )
                assert password not in text
        assert password not in repr(pages) and password not in repr(visit)
    assert caplog.records and password not in caplog.text


# ---------------------------------------------------------------------------- bans, rotation


@needs_chromium
async def test_a_ban_moves_the_page_to_a_new_context(sandbox: Sandbox) -> None:
    sb = sandbox
    await sb.acontrol("site", budget=3, ban_window=600, ban_seconds=600)
    async with browsing(sb) as (mgr, pages):
        ips, contexts = [], []
        for _ in range(4):  # the 4th answer is a 429 on that exit: banned
            async with pages.open(f"{sb.site_url}/ip", session_key="shop") as visit:
                ips.append((await json_of(visit))["ip"])
                contexts.append(visit.page.context)
        assert len(set(ips[:3])) == 1 and ips[3] != ips[0]
        assert contexts[3] is not contexts[0] and contexts[0] is contexts[2]
        assert mgr.stats()["bans"] == 1
        # The banned context is closed: its pages are gone, and it is no longer in use.
        assert contexts[0] not in pages.browser.contexts
        # HTTPS, rotating: a context keeps its tunnel (and exit), so a ban must retire it.
        for _ in range(6):
            async with pages.open(f"{sb.site_https_url}/ip", target={"country": "us"}) as visit:
                assert visit.status == 200
        assert mgr.stats()["bans"] >= 2


@needs_chromium
async def test_a_rotation_with_no_grace_loses_nothing(sandbox: Sandbox) -> None:
    sb = sandbox
    async with browsing(sb) as (mgr, pages):
        keys = [f"k{i}" for i in range(3)]
        for base in (sb.site_url, sb.site_https_url):
            for key in keys:
                async with pages.open(f"{base}/js/product/3", session_key=key) as visit:
                    await rendered(visit)
        version = mgr.credentials_version
        await sb.acontrol("grace", seconds=0)
        await sb.acontrol("rotate")
        before = await counters(sb)
        done = 0
        for base in (sb.site_https_url, sb.site_url):
            for key in keys:
                async with pages.open(f"{base}/js/product/4", session_key=key) as visit:
                    await rendered(visit)
                    done += 1
        assert done == 6
        after = await counters(sb)
        calls = "api.requests:GET /v1/credentials"
        assert after[calls] - before.get(calls, 0) == 1  # one refresh served every page
        assert mgr.credentials_version == version + 1
        # Contexts made with the old password are closed; the live ones use the new one.
        assert {k[1] for k in pages._slots.keys()} == {version + 1}


@needs_chromium
async def test_contexts_never_above_the_cap(sandbox: Sandbox) -> None:
    sb = sandbox
    async with browsing(sb, max_contexts=3) as (mgr, pages):
        seen_contexts: list[int] = []

        async def one(i: int) -> str:
            base = sb.site_url if i % 2 else sb.site_https_url
            async with pages.open(f"{base}/js/product/{i + 1}", session_key=f"user{i}") as visit:
                seen_contexts.append(len(pages.browser.contexts))
                app = await rendered(visit)
                return await app.locator("h1.name").inner_text()

        names = await asyncio.gather(*(one(i) for i in range(12)))
        assert all(names) and len(names) == 12
        assert max(seen_contexts) <= 3 and pages.peak_contexts == 3
        assert len(pages.browser.contexts) <= 3


@needs_chromium
async def test_attempts_spent_raise_the_managers_error(sandbox: Sandbox) -> None:
    sb = sandbox
    await sb.acontrol("site", budget=0, ban_window=600, ban_seconds=600)
    async with browsing(sb, manager_kw={"max_attempts": 3}) as (mgr, pages):
        for base in (sb.site_url, sb.site_https_url):
            with pytest.raises(AttemptsExhaustedError) as info:
                await pages.open(f"{base}/ip", target={"country": "us"})
            assert len(info.value.tried) == 3
        assert pages.contexts == 0  # every failed context was closed


@needs_chromium
async def test_a_sites_own_gateway_headers_and_407_are_its_answer(sandbox: Sandbox) -> None:
    sb = sandbox
    async with browsing(sb) as (mgr, pages):
        before = await counters(sb)
        async with pages.open(f"{sb.site_https_url}/spoof/502", target={"country": "de"}) as visit:
            assert visit.status == 502 and visit.exit is None
        # A site's 407 inside a tunnel: Chromium refuses it, and it is not the gateway's.
        with pytest.raises(playwright_api.Error, match="ERR_UNEXPECTED_PROXY_AUTH"):
            await pages.open(f"{sb.site_https_url}/spoof/407")
        async with pages.open(f"{sb.site_url}/spoof/407") as visit:
            assert visit.status == 407 and visit.exit is not None and visit.exit.country != "zz"
        after = await counters(sb)
        calls = "api.requests:GET /v1/credentials"
        assert after.get(calls, 0) == before.get(calls, 0)
        assert mgr.stats().get("failovers", 0) == 0 and not any(
            state != "closed" for state in mgr.breakers().values()
        )


@needs_chromium
async def test_the_bandwidth_saver_blocks_images_fonts_and_media(sandbox: Sandbox) -> None:
    sb = sandbox
    add_image = """() => new Promise(done => {
        const img = new Image(); img.onload = img.onerror = () => done(true);
        img.src = "/bytes/4096?img=" + Math.random(); document.body.appendChild(img); })"""
    for block, verdict in ((True, "net::ERR_BLOCKED_BY_CLIENT"), (False, None)):
        async with browsing(sb, block_resources=block) as (mgr, pages):
            async with pages.open(f"{sb.site_url}/js/product/2", session_key="s") as visit:
                failed: list[str | None] = []
                finished: list[str] = []
                visit.page.on(
                    "requestfailed",
                    lambda r: failed.append(r.failure) if r.resource_type == "image" else None,
                )
                visit.page.on(
                    "requestfinished",
                    lambda r: finished.append(r.url) if r.resource_type == "image" else None,
                )
                await rendered(visit)  # scripts and their fetches are not blocked
                await visit.page.evaluate(add_image)
                if verdict:
                    assert len(failed) == 1 and str(failed[0]).startswith(verdict), failed
                    assert not finished
                else:
                    assert not failed and len(finished) == 1


@needs_chromium
async def test_arguments_are_checked(sandbox: Sandbox) -> None:
    from proxaro_scrape.errors import ConfigurationError

    async with GatewayManager(sb_key := sandbox.api_key, sandbox.api_url) as mgr:
        assert sb_key
        async with playwright_api.async_playwright() as pw:
            browser = await launch_chromium(pw, executable_path=CHROMIUM)
            try:
                bad: list[tuple[dict[str, Any], str]] = [
                    ({"max_contexts": 0}, "max_contexts"),
                    ({"max_contexts": True}, "max_contexts"),
                    ({"context_options": {"proxy": {"server": "x"}}}, "context_options"),
                    (
                        {"context_options": {"extra_http_headers": {"proxy-authorization": "x"}}},
                        "context_options",
                    ),
                    ({"block_resources": "image"}, "block_resources"),
                    ({"wait_until": "never"}, "wait_until"),
                    ({"target": False}, "target"),
                ]
                for kwargs, param in bad:
                    with pytest.raises(ConfigurationError) as info:
                        ProxaroBrowser(mgr, browser, **kwargs)
                    assert info.value.param == param, kwargs
                with pytest.raises(ConfigurationError):
                    ProxaroBrowser(mgr, object())  # type: ignore[arg-type]
            finally:
                await browser.close()


@needs_chromium
@pytest.mark.slow
def test_the_example_runs_against_a_sandbox() -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXARO_")}
    done = subprocess.run(
        [sys.executable, str(examples / "playwright_example.py")],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        cwd=examples.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "local sandbox" in out
    for country in ("us", "de", "jp"):
        assert re.search(rf"^country={country}\s+200\s+exit \S+ country={country}\b", out, re.M)
    assert "rendered by script: '" in out
    assert "the fetch left through the page's exit: yes" in out
