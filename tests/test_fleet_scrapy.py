# ruff: noqa: F811 - the redis_server fixture is imported, then named as an argument
"""Three ``scrapy crawl`` workers on one scrapy-redis queue and one Proxaro state (slow tier).

The example project ``examples/fleet_scrapy_redis``: every request (retries included) goes
through Redis pickled, and the demo shop comes out with every product exactly once.
"""

from __future__ import annotations

import json
import os
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
    assert sum(1 for n in got.values()) == last - first + 1
    # More than one worker did the work: the queue was shared.
    assert sum(1 for feed in feeds if feed.exists() and feed.stat().st_size) >= 2
