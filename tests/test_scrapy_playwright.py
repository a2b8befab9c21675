"""scrapy-playwright with the Proxaro add-on: browser pages in a context per route.

Real crawls (pytest-twisted, the asyncio reactor) of the sandbox's JavaScript-rendered shop with
a real headless Chromium.  Skipped, with the reason, only where scrapy-playwright or Chromium is
truly missing (CI installs both).
"""

from __future__ import annotations

import html
import json
import logging
import pickle
import re
import shutil
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy import signals
from scrapy.crawler import Crawler, CrawlerRunner

from proxaro_scrape.integrations.scrapy import ProxaroAddon
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox.site import catalogue

pytest.importorskip(
    "scrapy_playwright",
    reason='scrapy-playwright is not installed: pip install "proxaro-scrape[playwright]"',
)
from scrapy_playwright.page import PageMethod  # noqa: E402

from proxaro_scrape.integrations.playwright import CHROMIUM_ARGS  # noqa: E402

CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: apt-get install chromium"),
    pytest.mark.timeout(180),
]

COUNTRIES = ("us", "de", "fr")
HANDLER = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"
RENDERED = PageMethod("wait_for_selector", "#app[data-rendered]")


def settings_for(sb: Sandbox, **extra: Any) -> dict[str, Any]:
    """The add-on, scrapy-playwright's handlers and the system Chromium, on the sandbox."""
    return {
        "ADDONS": {ProxaroAddon: 0},
        "PROXARO_API_KEY": sb.api_key,
        "PROXARO_BASE_URL": sb.api_url,
        "DOWNLOAD_HANDLERS": {"http": HANDLER, "https": HANDLER},
        "PLAYWRIGHT_LAUNCH_OPTIONS": {
            "executable_path": CHROMIUM,
            "args": [*CHROMIUM_ARGS, "--no-sandbox"],
        },
        "PROXARO_PLAYWRIGHT_CONTEXT_KWARGS": {"ignore_https_errors": True},
        "PROXARO_PLAYWRIGHT_MAX_CONTEXTS": 3,
        "TELNETCONSOLE_ENABLED": False,
        "MEMUSAGE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "CONCURRENT_REQUESTS": 8,
        "LOG_LEVEL": "DEBUG",
        **extra,
    }


class Pages(scrapy.Spider):
    """Render ``requests`` (url, meta) in the browser and keep what each page showed."""

    name = "pages"

    def __init__(self, requests: list[tuple[str, dict[str, Any]]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.to_fetch = requests
        self.pages: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, BaseException] = {}
        self.scheduled: list[bytes] = []
        self.on_page: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Pages:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.queued, signal=signals.request_scheduled)
        return spider  # type: ignore[return-value]

    def queued(self, request: scrapy.Request, spider: scrapy.Spider) -> None:
        # What a disk queue or Redis would hold: it must pickle, and hold no secret.
        self.scheduled.append(pickle.dumps(request.to_dict(spider=self)))

    async def start(self) -> Any:
        for url, meta in self.to_fetch:
            yield scrapy.Request(
                url,
                meta={"playwright": True, **meta},
                callback=self.parse,
                errback=self.failed,
                dont_filter=True,
            )

    def parse(self, response: scrapy.http.Response) -> None:
        assert response.url not in self.pages, f"{response.url} reached the callback twice"
        text = response.text
        body: Any = None
        css: Any = lambda query: None  # noqa: E731 - JSON pages have no HTML to query
        if "/js/" in response.url:
            css = lambda query: response.css(query).get()  # noqa: E731
        else:
            # The browser shows JSON inside a <pre>; the page's content is that HTML.
            match = re.search(r"<pre[^>]*>(.*?)</pre>", text, re.S)
            body = json.loads(html.unescape(match.group(1)) if match else text)
        self.pages[response.url] = {
            "status": response.status,
            "rendered": css("#app::attr(data-rendered)"),
            "name": css("h1.name::text"),
            "country": css("dd.country::text"),
            "same_exit": css("dd.same-exit::text"),
            "body": body,
            "text": text,
            "exit": response.meta.get("proxaro_exit"),
            "context": response.meta.get("playwright_context"),
            "kwargs": response.meta.get("playwright_context_kwargs"),
        }
        if self.on_page is not None:
            self.on_page(self, response)

    def failed(self, failure: Any) -> None:
        self.errors[failure.request.url] = failure.value


async def crawl(settings: dict[str, Any], **kwargs: Any) -> tuple[Crawler, Pages]:
    runner = CrawlerRunner(settings)
    crawler = runner.create_crawler(Pages)
    await runner.crawl(crawler, **kwargs)
    spider = crawler.spider
    assert isinstance(spider, Pages)
    return crawler, spider


def stat(crawler: Crawler, key: str) -> Any:
    assert crawler.stats is not None
    return crawler.stats.get_value(key)


def passwords_of(sb: Sandbox) -> list[str]:
    """Every gateway password the sandbox issued: the current one and those rotated out."""
    cred = sb.world.credentials
    return [cred.password, *(p for p, _ in cred.previous)]


# ---------------------------------------------------------------------------- the shop


@pytest_twisted.ensureDeferred
async def test_js_shop_in_three_countries(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    sb = sandbox
    caplog.set_level(logging.DEBUG)
    products = catalogue(0)
    requests: list[tuple[str, dict[str, Any]]] = []
    for i, country in enumerate(COUNTRIES):
        for base in (sb.site_url, sb.site_https_url):
            route = {"proxaro": {"country": country}, "proxaro_session": f"{country}{base[:5]}"}
            for p in products[i * 4 : i * 4 + 3]:
                requests.append(
                    (f"{base}/js/product/{p.id}", {**route, "playwright_page_methods": [RENDERED]})
                )
            requests.append((f"{base}/ip?c={country}", route))
            requests.append(
                (f"{base}/js/ip?c={country}", {**route, "playwright_page_methods": [RENDERED]})
            )
            requests.append((f"{base}/headers?c={country}", {"proxaro": {"country": country}}))
    # The bandwidth saver on: scripts and their fetches still run (only images, fonts and
    # media are aborted).
    saver = {"PLAYWRIGHT_ABORT_REQUEST": "proxaro_scrape.integrations.playwright.is_heavy_request"}
    crawler, spider = await crawl(settings_for(sb, **saver), requests=requests)
    assert spider.errors == {}
    assert len(spider.pages) == len(requests)
    names = {p.id: p.name for p in products}
    passwords = passwords_of(sb)
    for url, page in spider.pages.items():
        assert page["status"] == 200, url
        assert page["kwargs"] is None or "proxy" not in page["kwargs"], url  # taken off
        if "/js/product/" in url:
            assert page["rendered"] == "true" and page["name"] == names[int(url.rsplit("/", 1)[1])]
        country = url.rsplit("c=", 1)[-1] if "c=" in url else None
        if "/ip?" in url and "/js/" not in url:
            assert page["body"]["country"] == country, url
            if url.startswith("http:"):
                # Plain HTTP: the gateway's own headers name the exit; HTTPS: unknown.
                assert page["exit"].country == country and page["exit"].ip == page["body"]["ip"]
            else:
                assert page["exit"] is None
        if "/js/ip" in url:
            assert page["country"] == country and page["same_exit"] == "yes", url
        if "/headers" in url:
            sent = {k.lower() for k in page["body"]["headers"]}
            assert not any(h.startswith("proxy-") for h in sent), url
        assert not any(pw in page["text"] for pw in passwords), url
    assert stat(crawler, "proxaro/playwright/contexts_max") <= 3
    assert stat(crawler, "playwright/context_count/max_concurrent") <= 3
    assert not any(pw in caplog.text for pw in passwords)
    assert not any(pw.encode() in blob for pw in passwords for blob in spider.scheduled)


# ---------------------------------------------------------------------------- bans, rotation, cap


@pytest_twisted.ensureDeferred
async def test_a_ban_moves_the_page_to_a_new_context(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.control("site", budget=3, ban_window=600, ban_seconds=600)
    sticky = {"proxaro": {"country": "us"}, "proxaro_session": "shop"}
    rotating = {"proxaro": {"country": "de"}}
    requests = [(f"{sb.site_url}/ip?n={i}", sticky) for i in range(5)]
    requests += [(f"{sb.site_https_url}/ip?n={i}", rotating) for i in range(5)]
    crawler, spider = await crawl(settings_for(sb, CONCURRENT_REQUESTS=1), requests=requests)
    assert spider.errors == {} and len(spider.pages) == 10
    for base in (sb.site_url, sb.site_https_url):
        pages = [p for url, p in spider.pages.items() if url.startswith(base)]
        assert {p["status"] for p in pages} == {200}  # never a ban page in a callback
        # Three pages on the first exit, then a 429: the page moved to a new context (a new
        # session over HTTP; over HTTPS a new context, so a new tunnel and a new exit).
        assert len({p["body"]["ip"] for p in pages}) == 2, base
        assert len({p["context"] for p in pages}) == 2, base
    assert stat(crawler, "proxaro/bans") == 2
    assert stat(crawler, "proxaro/retry/reason_count/ban") == 2
    assert stat(crawler, "proxaro/playwright/contexts_closed") >= 2
    passwords = passwords_of(sb)
    # The retries went through the scheduler without the password.
    assert len(spider.scheduled) == 12
    assert not any(pw.encode() in blob for pw in passwords for blob in spider.scheduled)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_rotation_with_no_grace_loses_nothing(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    sb = sandbox
    caplog.set_level(logging.DEBUG)
    requests: list[tuple[str, dict[str, Any]]] = []
    for i in range(12):
        base = sb.site_url if i % 2 else sb.site_https_url
        meta = {"proxaro_session": f"k{i // 4}", "playwright_page_methods": [RENDERED]}
        requests.append((f"{base}/js/product/{i + 1}", meta))
    rotated: list[int] = []

    def rotate_once(spider: Pages, response: scrapy.http.Response) -> None:
        if len(spider.pages) == 3 and not rotated:
            sb.control("grace", seconds=0)
            sb.control("rotate")
            rotated.append(len(spider.pages))

    crawler, spider = await _crawl_with(sb, requests, rotate_once, CONCURRENT_REQUESTS=2)
    assert rotated == [3]
    assert spider.errors == {}
    assert len(spider.pages) == 12
    assert all(p["rendered"] == "true" and p["name"] for p in spider.pages.values())
    assert stat(crawler, "proxaro/credentials_version") == 2
    # Pages after the rotation were rendered in contexts made with the new password.
    assert any(p["context"].endswith(("v2/http", "v2/https")) or ":v2:" in p["context"]
               for p in spider.pages.values())  # fmt: skip
    passwords = passwords_of(sb)
    assert len(passwords) == 2
    assert not any(pw in caplog.text for pw in passwords)
    assert not any(pw.encode() in blob for pw in passwords for blob in spider.scheduled)


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_a_page_whose_own_requests_the_gateway_refused_is_loaded_again(
    sandbox: Sandbox, scheme: str
) -> None:
    """The gap a rotation without grace left: the navigation answered with the old password,
    then the page's own request refused (a 407), and a page rendered "error" delivered as a
    success.  Deterministic: the rotation happens between the navigation and the page's fetch
    (a page method), once; over HTTPS the fetch goes to another host, so a new CONNECT."""
    import asyncio

    sb = sandbox
    base = sb.site_url if scheme == "http" else sb.site_https_url
    other = base.replace("127.0.0.1", "localhost")  # over HTTPS: a tunnel of its own
    rotated: list[bool] = []

    async def rotate_once(page: Any) -> None:
        if not rotated:
            rotated.append(True)
            await asyncio.to_thread(sb.control, "grace", seconds=0)
            await asyncio.to_thread(sb.control, "rotate")

    fetch = PageMethod(
        "evaluate",
        "url => fetch(url, {mode: 'no-cors'}).then(r => 'sent').catch(e => 'refused')",
        f"{other}/api/product/2.json",
    )
    meta = {"playwright_page_methods": [RENDERED, PageMethod(rotate_once), fetch]}
    crawler, spider = await crawl(settings_for(sb), requests=[(f"{base}/js/product/1", meta)])
    assert rotated == [True]
    assert spider.errors == {}
    [page] = spider.pages.values()
    assert page["rendered"] == "true" and page["name"]
    assert fetch.result == "sent"  # the delivered attempt's own request went through
    assert stat(crawler, "proxaro/credentials_version") == 2
    assert stat(crawler, "proxaro/retries") == 1
    assert page["context"].endswith(f"v2/{scheme}") or ":v2:" in page["context"]
    assert stat(crawler, "proxaro/playwright/contexts") == 2


async def _crawl_with(
    sb: Sandbox, requests: list[tuple[str, dict[str, Any]]], on_page: Any, **extra: Any
) -> tuple[Crawler, Pages]:
    runner = CrawlerRunner(settings_for(sb, **extra))
    crawler = runner.create_crawler(Pages)
    deferred = runner.crawl(crawler, requests=requests)
    spider = crawler.spider
    assert isinstance(spider, Pages)
    spider.on_page = on_page
    await deferred
    return crawler, spider


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_live_contexts_never_above_the_cap(sandbox: Sandbox) -> None:
    sb = sandbox
    requests = [
        (
            f"{base}/js/product/{i + 1}",
            {"proxaro_session": f"user{i}", "playwright_page_methods": [RENDERED]},
        )
        for i in range(10)
        for base in (sb.site_url, sb.site_https_url)
    ]
    crawler, spider = await crawl(
        settings_for(sb, PROXARO_PLAYWRIGHT_MAX_CONTEXTS=2, CONCURRENT_REQUESTS=8),
        requests=requests,
    )
    assert spider.errors == {} and len(spider.pages) == 20
    assert all(p["rendered"] == "true" for p in spider.pages.values())
    assert stat(crawler, "proxaro/playwright/contexts") == 20
    assert stat(crawler, "proxaro/playwright/contexts_max") == 2
    assert stat(crawler, "playwright/context_count/max_concurrent") <= 2
    assert stat(crawler, "proxaro/playwright/contexts_closed") >= 18


@pytest.mark.slow
def test_the_example_spider_runs_against_a_sandbox() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXARO_")}
    done = subprocess.run(
        [sys.executable, str(examples / "scrapy_playwright_spider.py")],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        cwd=examples.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "local sandbox" in out
    rows = [line.split() for line in out.splitlines() if line[:2] in ("us", "de", "jp")]
    assert sorted({r[0] for r in rows}) == ["de", "jp", "us"] and len(rows) == 9
    assert "pages per exit country: {" in out and "'us': 4" in out and "'jp': 4" in out
