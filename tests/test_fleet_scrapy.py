# ruff: noqa: F811 - the redis_server fixture is imported, then named as an argument
"""Three ``scrapy crawl`` workers on one scrapy-redis queue and one Proxaro state (slow tier).

The example project ``examples/fleet_scrapy_redis``: every request (retries included) goes
through Redis pickled, and the demo shop comes out with every product exactly once.  The shop
bans an exit after 40 requests, so the fleet's one sticky session per site is banned and
rotated several times: the retries of banned requests cross the shared queue too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from proxaro_scrape.sandbox import Sandbox
from tests._redis import RedisServer, redis_server  # noqa: F401 - the fixture

PROJECT = Path(__file__).resolve().parents[1] / "examples" / "fleet_scrapy_redis"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_three_scrapy_workers_on_scrapy_redis_crawl_every_product_once(
    sandbox: Sandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    pytest.importorskip("scrapy_redis")
    import redis

    from proxaro_scrape import Proxaro

    sandbox.control("site", budget=40, ban_window=60, ban_seconds=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXARO_")}
    env.update(
        PROXARO_API_KEY=sandbox.api_key,
        PROXARO_BASE_URL=sandbox.api_url,
        PROXARO_REDIS_URL=redis_server.url,
        SHOP_URL=sandbox.site_url,
    )
    feeds = [tmp_path / f"items-{i}.jsonl" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "scrapy", "crawl", "shop", "-O", str(feed)],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for feed in feeds
    ]
    logs = [p.communicate(timeout=360)[1] for p in procs]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    items = [json.loads(line) for feed in feeds if feed.exists() for line in feed.open()]
    got = Counter(item["id"] for item in items)
    first, last = httpx.get(f"{sandbox.site_url}/catalog.json", timeout=10).json()["product_ids"]
    assert sorted(got) == list(range(first, last + 1))
    assert set(got.values()) == {1}
    joined = "\n".join(logs)
    assert "scheduler/unserializable" not in joined
    retries = sum(int(n) for n in re.findall(r"'proxaro/retry/count': (\d+)", joined))
    assert retries > 0  # bans happened, and their retries went through the shared queue
    # More than one worker did the work: the queue was shared.
    assert sum(1 for feed in feeds if feed.exists() and feed.stat().st_size) >= 2
    # Nothing in Redis (the queue, the fingerprints, Proxaro's state) holds a secret.
    with Proxaro(sandbox.api_key, sandbox.api_url) as api:
        password = api.credentials.get().password.reveal()
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter("*"):
        blob = key + (client.dump(key) or b"")
        assert password.encode() not in blob and sandbox.api_key.encode() not in blob
