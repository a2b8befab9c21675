"""Scripted faults under a sustained Scrapy crawl: a rotation twice inside the grace, a region
down and back, an API storm.  Every request ends exactly once, in its callback or its errback.

The crawl runs in-process on the asyncio reactor (pytest-twisted) against the sandbox, which
runs in its own thread; the fault script runs beside the crawl (sandbox controls in a worker
thread, so the reactor never blocks).  A :class:`Sustained` spider keeps ``CONCURRENCY``
requests going until the script stops it: each request that ends (either way) sends the next.
Each request is a ``POST /echo`` whose body names it, so an answer handed to the wrong request
is caught, as in ``tests/test_faults.py``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import pytest_twisted

from proxaro_scrape.sandbox import Sandbox
from tests._scrapy_traffic import (
    Sustained,
    control,
    crawl_under,
    manager_of,
    settings_for,
    sleep,
    stats_of,
    wait_until,
)
from tests._traffic import report

pytestmark = pytest.mark.timeout(90)


def bases_of(sb: Sandbox) -> list[str]:
    # HTTPS is CONNECTed through the gateway; Scrapy's default context does not verify the
    # target's certificate (the sandbox CA is not in its trust store): the tunnel is tested,
    # not Scrapy's TLS settings.
    return [sb.site_url, sb.site_url, sb.site_https_url]


@pytest_twisted.ensureDeferred
async def test_scrapy_rotation_then_second_rotation_inside_the_grace(
    sandbox: Sandbox, record_property: Any
) -> None:
    sb = sandbox
    sb.control("grace", seconds=0.6)

    async def script(spider: Sustained) -> None:
        await sleep(0.4)
        spider.phase = "first_grace"
        await control(sb, "rotate")
        await sleep(0.2)
        spider.phase = "second_grace"
        await control(sb, "rotate")
        await sleep(0.6)
        spider.phase = "after"
        await sleep(0.5)

    crawler, spider = await crawl_under(settings_for(sb), script, bases_of(sb))
    stats = stats_of(crawler)
    report(record_property, "rotate_twice/scrapy", traffic=spider.figures(), stats=stats)
    spider.check()
    assert sum(spider.failures.values()) == 0, spider.samples
    assert stats["proxaro/rotations"] >= 1
    assert stats.get("proxaro/outcomes/stale_credentials", 0) >= 1  # the 407s were met


@pytest_twisted.ensureDeferred
async def test_scrapy_region_down_and_back_up(sandbox: Sandbox, record_property: Any) -> None:
    sb = sandbox
    notes: dict[str, Any] = {}

    async def script(spider: Sustained) -> None:
        await sleep(0.4)
        spider.phase = "down"
        await control(sb, "country", code="de", pool_health="down")
        await sleep(0.8)
        spider.phase = "healing"
        await control(sb, "country", code="de", pool_health="healthy")
        # The breaker closes when the pool view says healthy (at most one refresh a second)
        # or a half-open probe succeeds.
        assert spider.crawler is not None
        mgr = manager_of(spider.crawler)
        notes["breaker_closed"] = await wait_until(lambda: "c:de" not in mgr.breakers())
        spider.phase = "up"
        await sleep(0.6)

    # Short breaker backoffs, as the other stacks' run: the breaker the region's no_exit answers
    # opened closes by its half-open probe soon after the pool view turns healthy again.
    settings = settings_for(
        sb,
        PROXARO_TARGET={"country": "de"},
        PROXARO_POOL_TTL=0.3,
        PROXARO_BREAKER_BASE_BACKOFF=0.2,
        PROXARO_BREAKER_MAX_BACKOFF=0.4,
    )
    crawler, spider = await crawl_under(settings, script, [sb.site_url])
    stats = stats_of(crawler)
    report(record_property, "region_down/scrapy", traffic=spider.figures(), stats=stats, **notes)
    spider.check()
    assert notes["breaker_closed"]
    assert sum(spider.failures.values()) == 0, spider.samples
    down = spider.exit_countries.get("down", Counter())
    assert sum(n for c, n in down.items() if c != "de") > down["de"]  # failed over
    assert spider.exit_countries.get("up", Counter())["de"] >= 1  # and came back
    assert stats["proxaro/failovers"] >= 1


@pytest_twisted.ensureDeferred
async def test_scrapy_api_storm_while_credentials_and_pool_refresh(
    sandbox: Sandbox, record_property: Any
) -> None:
    sb = sandbox
    notes: dict[str, Any] = {}

    async def script(spider: Sustained) -> None:
        await sleep(0.3)
        spider.phase = "storm"
        await control(sb, "faults", statuses=[503, 500, 429, 503])
        await control(sb, "rotate")  # the default 60 s grace: the old password keeps serving

        async def drained() -> bool:
            return not (await control(sb, "faults"))["statuses"]

        notes["storm_drained"] = await wait_until(drained)
        spider.phase = "after"
        # The next successful poll (at most one a second after a success) picks the rotation
        # up: wait for it (a loaded machine may take longer than a fixed sleep), then a little
        # traffic on the new credentials.
        assert spider.crawler is not None
        mgr = manager_of(spider.crawler)
        notes["rotation_seen"] = await wait_until(lambda: mgr.stats().get("rotations", 0) >= 1)
        await sleep(0.3)

    settings = settings_for(
        sb,
        PROXARO_CREDENTIALS_POLL_INTERVAL=0.2,
        PROXARO_POOL_TTL=0.2,
        PROXARO_USAGE_POLL_INTERVAL=0.2,
        PROXARO_STATS_INTERVAL=0.2,
    )
    crawler, spider = await crawl_under(settings, script, bases_of(sb))
    stats = stats_of(crawler)
    report(record_property, "api_storm/scrapy", traffic=spider.figures(), stats=stats, **notes)
    spider.check()
    # Every fault was met by the background refreshes (the queue drained), none by requests.
    assert notes["storm_drained"] and notes["rotation_seen"]
    assert sum(spider.failures.values()) == 0, spider.samples
    assert stats["proxaro/rotations"] == 1  # picked up once the storm was over
