"""No secret leaves where it belongs, on any stack, whatever happens.

With the API key, every gateway password of the run (rotations included) and a webhook secret
known, a representative run of each client stack (httpx sync and async, requests, aiohttp) and
a Scrapy crawl goes through what a real run meets: HTTP and HTTPS, a ban, a rotation and its
407s, exits failing until the budget is spent, expired credentials, an API error, webhooks
genuine and forged.  Root logging is captured at DEBUG meanwhile.  Then every log line, every
stats key and value, every exception met (its message, ``repr`` and whole chain, formatted as
a traceback) and the ``str``/``repr`` of every object a user holds (routes, manager, clients,
credentials models, transports, adapters, sessions, middleware, receiver, events, errors) is
searched for each secret, and for the ``Proxy-Authorization`` values built from them: none.

At the target, ``/headers`` must never show a ``Proxy-*`` header nor any secret: over HTTP,
over HTTPS, and after redirects (same host, other host, HTTP to HTTPS, HTTPS to HTTP).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_twisted

from proxaro_scrape import (
    AsyncProxaro,
    Proxaro,
    ProxaroError,
    WebhookReceiver,
    compute_signature,
    parse_event,
)
from proxaro_scrape.sandbox import Sandbox
from tests._scrapy_traffic import (
    Sustained,
    control,
    crawl_under,
    manager_of,
    settings_for,
    wait_until,
)
from tests._stack_drivers import DRIVERS, Driver

pytestmark = pytest.mark.timeout(90)

WEBHOOK_SECRET = "whsec_test_" + "5ec7e7" * 5 + "ab"


def debug_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    """Capture DEBUG from every logger, ours included even if something in this process set
    the package's level higher (the benchmarks do, when run in-process)."""
    caplog.set_level(logging.DEBUG)
    for name in ("proxaro_scrape", "scrapy", "httpx", "httpcore", "aiohttp", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)


def ours(caplog: pytest.LogCaptureFixture) -> int:
    """Log records of proxaro_scrape's own loggers."""
    return sum(1 for r in caplog.records if r.name.startswith("proxaro_scrape"))


def forms(secret: str) -> set[str]:
    """A secret and the shapes it could leak in: as is, percent-encoded, base64-encoded."""
    out = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
    return {s for s in out if len(s) >= 8}


_B64 = re.compile(r"[A-Za-z0-9+/]{12,}={0,2}")


def decoded_tokens(text: str) -> str:
    """Every base64 token of ``text``, decoded: a ``Proxy-Authorization`` value is
    ``base64(username:password)``, which hides the password from a plain search."""
    out = []
    for token in _B64.findall(text):
        try:
            out.append(base64.b64decode(token + "=" * (-len(token) % 4)).decode("latin-1"))
        except (ValueError, binascii.Error):
            continue
    return "\n".join(out)


def leaks(haystacks: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """``where: which secret`` for every haystack that holds a secret (never the secret)."""
    found = []
    for where, text in haystacks.items():
        text = f"{text}\n{decoded_tokens(text)}"
        for name, secret in secrets.items():
            if any(form in text for form in forms(secret)):
                found.append(f"{where}: {name}")
        if "Basic " in text and "proxy-authorization" in text.lower():
            found.append(f"{where}: a Proxy-Authorization value")
    return found


def exception_texts(label: str, exc: BaseException) -> dict[str, str]:
    """Message, repr, args and the formatted traceback of ``exc`` and of its whole chain."""
    out: dict[str, str] = {}
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    i = 0
    while todo and i < 20:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        out[f"{label}[{i}] {type(e).__name__}"] = "\n".join(
            [str(e), repr(e), repr(e.args), *traceback.format_exception(e)]
        )
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        i += 1
    return out


def objects_texts(objects: dict[str, Any]) -> dict[str, str]:
    return {f"repr {name}": f"{obj!s}\n{obj!r}" for name, obj in objects.items()}


def headers_urls(sb: Sandbox) -> list[str]:
    http, https = sb.site_url, sb.site_https_url
    other_http = http.replace("127.0.0.1", "localhost")
    other_https = https.replace("127.0.0.1", "localhost")

    def via(start: str, to: str) -> str:
        return f"{start}/redirect?to={quote(to, safe='')}"

    return [
        f"{http}/headers",
        f"{https}/headers",
        via(http, f"{http}/headers"),  # same host
        via(http, f"{other_http}/headers"),  # other host
        via(http, f"{https}/headers"),  # HTTP -> HTTPS
        via(https, f"{http}/headers"),  # HTTPS -> HTTP
        via(https, f"{other_https}/headers"),  # HTTPS -> HTTPS, other host
    ]


def target_saw(headers: dict[str, str], url: str, secrets: dict[str, str]) -> list[str]:
    """What a target must never see: a ``Proxy-*`` header, a secret in any header."""
    bad = [f"{url}: header {k}" for k in headers if k.lower().startswith("proxy-")]
    text = json.dumps(headers)
    bad += [f"{url}: {name}" for name, s in secrets.items() if any(f in text for f in forms(s))]
    return bad


async def deliver(receiver_url: str, sb: Sandbox, body: bytes, signature: str | None) -> int:
    headers = {"X-NB-Signature": signature} if signature is not None else {}
    async with httpx.AsyncClient(verify=sb.client_ssl_context(), timeout=10) as c:
        return (await c.post(receiver_url, content=body, headers=headers)).status_code


async def try_get(drv: Driver, url: str, errors: list[BaseException], **kw: Any) -> Any:
    try:
        return await drv.get(url, **kw)
    except Exception as exc:  # noqa: BLE001 - collected and searched
        errors.append(exc)
        return None


@pytest.mark.parametrize("stack", sorted(DRIVERS))
async def test_no_secret_anywhere_on_the_client_stacks(
    stack: str, sandbox: Sandbox, caplog: pytest.LogCaptureFixture, record_property: Any
) -> None:
    sb = sandbox
    debug_everywhere(caplog)
    secrets = {"api_key": sb.api_key, "webhook_secret": WEBHOOK_SECRET}
    passwords = [sb.world.credentials.password]
    errors: list[BaseException] = []
    at_target: list[str] = []
    objects: dict[str, Any] = {}
    drv = DRIVERS[stack](sb)
    await sb.acontrol("grace", seconds=0.2)
    async with drv.opened(target={"country": "us"}) as d:
        mgr = d.manager
        assert mgr is not None
        receiver = WebhookReceiver(WEBHOOK_SECRET)
        receiver.attach(mgr)
        url = await receiver.start("127.0.0.1", 0, ssl_context=sb.server_ssl_context())
        try:
            # Plain traffic, HTTP and HTTPS, and what the targets saw.
            for u in headers_urls(sb):
                r = await try_get(d, u, errors)
                if r is not None:
                    at_target += target_saw(r.json()["headers"], u, secrets)
            # A ban on a sticky exit: retried elsewhere.
            await sb.acontrol("site", budget=2, ban_window=60, ban_seconds=60)
            for _ in range(4):
                await try_get(d, f"{sb.site_url}/ip", errors, session="shop")
            await sb.acontrol("site", budget=1_000_000)
            # A rotation announced by a webhook (and a forged copy), then its 407s.
            rotated = await sb.acontrol("rotate")
            passwords.append(rotated["password"])
            body = json.dumps(sb.world.events[-1].payload()).encode()
            objects["event"] = parse_event(body)
            await deliver(url, sb, body, compute_signature(body, WEBHOOK_SECRET))
            await deliver(url, sb, body, compute_signature(body, "whsec_test_forged0000"))
            await deliver(url, sb, body, None)
            passwords.append((await sb.acontrol("rotate"))["password"])
            for u in headers_urls(sb)[:2]:
                r = await try_get(d, u, errors, target={"country": "de"})
                if r is not None:
                    at_target += target_saw(r.json()["headers"], u, secrets)
            # Exits failing until the budget is spent: an explicit error, on both schemes.
            await sb.acontrol("gateway", exit_drop_rate=1.0)
            await try_get(d, f"{sb.site_url}/ip", errors)
            await try_get(d, f"{sb.site_https_url}/ip", errors, target={"country": "fr"})
            await sb.acontrol("gateway", exit_drop_rate=0.0)
            # Expired credentials: GatewayAuthError, and the refresh that could not help.
            await sb.acontrol("expire_credentials")
            await try_get(d, f"{sb.site_url}/ip", errors)
            await try_get(d, f"{sb.site_https_url}/ip", errors, target={"country": "jp"})
            await sb.acontrol("expire_credentials", in_seconds=86400)
            # A route, as integrations see it.
            objects["route"] = mgr.request(f"{sb.site_url}/ip").next_route()
            objects["routing"] = mgr.request(f"{sb.site_url}/ip")
        finally:
            await receiver.close()
        objects.update(
            manager=mgr,
            credentials=mgr.credentials,
            receiver=receiver,
            dedupe=receiver.dedupe,
            driver_client=getattr(d, "client", None) or getattr(d, "session", None),
            transport=getattr(getattr(d, "client", None), "_transport", None),
            adapter=getattr(getattr(d, "session", None), "proxaro_adapter", None),
            middleware=getattr(d, "middleware", None),
        )
        stats = mgr.stats()
    # The REST clients, their models and errors.
    with Proxaro(sb.api_key, sb.api_url, max_retries=0) as client:
        objects.update(client=client, credentials_model=client.credentials.get())
        objects["rotated_model"] = client.credentials.rotate()
        passwords.append(objects["rotated_model"].password.reveal())
        await sb.acontrol("faults", statuses=[503])
        try:
            client.credentials.get()
        except ProxaroError as exc:
            errors.append(exc)
    async with AsyncProxaro(sb.api_key, sb.api_url, max_retries=0) as aclient:
        objects["async_client"] = aclient
        objects["async_credentials_model"] = await aclient.credentials.get()
    for i, p in enumerate(passwords):
        secrets[f"gateway_password_{i}"] = p
    haystacks: dict[str, str] = {
        "log": "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records),
        "log_text": caplog.text,
        "stats": json.dumps(stats),
    }
    haystacks.update(objects_texts(objects))
    for i, exc in enumerate(errors):
        haystacks.update(exception_texts(f"error {i}", exc))
    found = leaks(haystacks, secrets)
    # The search finds a password in each shape it could take (else it would prove nothing).
    route = objects["route"]
    for probe in (route.proxy_url, route.proxy_authorization, route.password.reveal()):
        assert leaks({"probe": probe}, secrets), "the search misses a secret"
    kinds = sorted({type(e).__name__ for e in errors})
    record_property(
        f"secrets/{stack}",
        json.dumps(
            {
                "log_records": len(caplog.records),
                "errors_searched": kinds,
                "objects_searched": sorted(objects),
                "haystacks": len(haystacks),
                "passwords": len(passwords),
                "leaks": found + at_target,
            }
        ),
    )
    print(f"\n[secrets/{stack}] {len(caplog.records)} log records, errors {kinds}, leaks {found}")
    assert not found, found
    assert not at_target, at_target
    # The run met what it was meant to meet (else this test would prove little).
    assert {"AttemptsExhaustedError", "GatewayAuthError", "ServiceUnavailableError"} <= set(kinds)
    assert stats.get("bans", 0) >= 1 and stats["rotations"] >= 1
    assert receiver.stats()["invalid_signature"] == 1 and receiver.stats()["accepted"] == 1
    assert ours(caplog) >= 5  # the manager's own lines were searched too


@pytest_twisted.ensureDeferred
async def test_no_secret_anywhere_in_a_scrapy_crawl(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture, record_property: Any
) -> None:
    sb = sandbox
    debug_everywhere(caplog)
    sb.control("grace", seconds=0.2)
    sb.control("site", budget=6, ban_window=60, ban_seconds=60)
    passwords = [sb.world.credentials.password]
    errors: list[BaseException] = []
    objects: dict[str, Any] = {}

    async def script(spider: Sustained) -> None:
        # Traffic under the first password first (answers, not a fixed pause).
        await wait_until(lambda: spider.responses >= 10)
        passwords.append((await control(sb, "rotate"))["password"])
        assert spider.crawler is not None
        mgr = manager_of(spider.crawler)
        # Until the 407s after the grace have brought the new password in (a loaded machine
        # may take a while), then until exits failing every attempt have spent a budget.
        await wait_until(lambda: mgr.stats().get("rotations", 0) >= 1)
        objects.update(manager=mgr, credentials=mgr.credentials)
        objects["route"] = mgr.request(f"{sb.site_url}/ip").next_route()
        await control(sb, "gateway", exit_drop_rate=1.0)
        await wait_until(lambda: sum(spider.failures.values()) >= 2)
        await control(sb, "gateway", exit_drop_rate=0.0)
        # Some traffic on healthy exits again before the crawl ends.
        healthy_from = spider.responses
        await wait_until(lambda: spider.responses >= healthy_from + 5)

    bases = [sb.site_url, sb.site_https_url]
    settings = settings_for(sb, LOG_LEVEL="DEBUG", PROXARO_STICKY="domain")
    crawler, spider = await crawl_under(settings, script, bases)
    spider.check()
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    errors += spider.errors
    # The headers the targets saw, through Scrapy, redirects included.
    at_target = await scrapy_headers(sb, {"api_key": sb.api_key}, passwords)
    objects.update(crawler=crawler, spider=spider)
    secrets = {"api_key": sb.api_key}
    for i, p in enumerate(passwords):
        secrets[f"gateway_password_{i}"] = p
    haystacks: dict[str, str] = {
        "log": "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records),
        "log_text": caplog.text,
        "stats": json.dumps({str(k): str(v) for k, v in stats.items()}),
    }
    haystacks.update(objects_texts(objects))
    for i, exc in enumerate(errors):
        haystacks.update(exception_texts(f"error {i}", exc))
    found = leaks(haystacks, secrets)
    kinds = sorted({type(e).__name__ for e in errors})
    record_property(
        "secrets/scrapy",
        json.dumps({"log_records": len(caplog.records), "errors": kinds, "leaks": found}),
    )
    print(f"\n[secrets/scrapy] {len(caplog.records)} log records, errors {kinds}, leaks {found}")
    assert not found, found
    assert not at_target, at_target
    assert stats.get("proxaro/bans", 0) >= 1 and stats["proxaro/rotations"] >= 1
    assert "ProxaroGaveUp" in kinds
    assert ours(caplog) >= 10  # the middleware's and the manager's own lines, retries included
    assert any("Retrying" in r.getMessage() for r in caplog.records)


async def scrapy_headers(
    sb: Sandbox, secrets: dict[str, str], passwords: Iterable[str]
) -> list[str]:
    """Crawl every ``/headers`` URL (redirects followed by Scrapy) and check what arrived."""
    import scrapy

    seen: dict[str, dict[str, str]] = {}

    class Headers(scrapy.Spider):
        name = "headers"

        async def start(self) -> Any:
            for u in headers_urls(sb):
                yield scrapy.Request(u, callback=self.parse, dont_filter=True, meta={"u": u})

        def parse(self, response: Any) -> None:
            seen[response.meta["u"]] = json.loads(response.text)["headers"]

    from scrapy.crawler import CrawlerRunner

    runner = CrawlerRunner(settings_for(sb))
    await runner.crawl(Headers)
    all_secrets = {**secrets, **{f"password_{i}": p for i, p in enumerate(passwords)}}
    bad = [f"{u}: not fetched" for u in headers_urls(sb) if u not in seen]
    for u, headers in seen.items():
        bad += target_saw(headers, u, all_secrets)
    return bad
