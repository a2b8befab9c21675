# ruff: noqa: F811 - the redis_server fixture is imported, then named as an argument
"""A fleet of httpx worker PROCESSES on one sandbox and one real Redis (slow tier).

Each worker is ``python -m tests._fleet_worker`` (a GatewayManager with ``redis_url``, httpx
through ProxaroTransport).  Figures come from the sandbox's own counters (the API calls it
answered), never from the workers' word alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxaro_scrape.sandbox import Sandbox
from tests._redis import RedisServer, redis_server  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def api_calls(sb: Sandbox) -> Counter[str]:
    """The sandbox's API request counters."""
    raw = httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10).json()
    return Counter({k: v for k, v in raw.items() if k.startswith("api.requests")})


class Worker:
    """One worker process (see tests/_fleet_worker.py)."""

    def __init__(self, sb: Sandbox, redis_url: str, *extra: str) -> None:
        cmd = [
            sys.executable, "-m", "tests._fleet_worker",
            "--api-url", sb.api_url, "--api-key", sb.api_key,
            "--redis", redis_url, "--site", sb.site_url, *extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXARO_")}
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> None:
        """Wait for its READY line (it started its manager)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            raise AssertionError(f"worker did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def go(self) -> None:
        """Release a ``--hold`` worker."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def report(self) -> dict[str, Any]:
        """Wait for it to end; its JSON report."""
        out, err = self.proc.communicate(timeout=240)
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def product_ids(sb: Sandbox) -> list[int]:
    first, last = httpx.get(f"{sb.site_url}/catalog.json", timeout=10).json()["product_ids"]
    return list(range(first, last + 1))


START_CALLS = ("GET /v1/credentials", "GET /v1/countries", "GET /v1/usage")


def start_calls(delta: Counter[str]) -> int:
    return sum(delta[f"api.requests:{c}"] for c in START_CALLS)


def test_four_workers_start_once_survive_a_rotation_and_crawl_every_product_once(
    sandbox: Sandbox,
    redis_server: RedisServer,
) -> None:
    # One worker alone, without Redis: the baseline start-up cost.
    before = api_calls(sandbox)
    alone = Worker(sandbox, "", "--mode", "idle")
    alone.ready()
    alone.report()
    one = start_calls(api_calls(sandbox) - before)
    assert one >= 3

    ids = product_ids(sandbox)
    before = api_calls(sandbox)
    workers = [
        Worker(sandbox, redis_server.url, "--mode", "crawl", "--hold", "--ids",
               ",".join(map(str, ids)), "--share", str(i), "--shares", "4")
        for i in range(4)
    ]  # fmt: skip
    for w in workers:
        w.ready()
    at_start = api_calls(sandbox) - before
    assert start_calls(at_start) <= 1.2 * one, at_start

    # The password rotates with no grace before anyone sends: a 407 storm on four workers.
    sandbox.control("grace", seconds=0)
    sandbox.control("rotate")
    before_rotation = api_calls(sandbox)
    for w in workers:
        w.go()
    reports = [w.report() for w in workers]
    after = api_calls(sandbox) - before_rotation
    assert after["api.requests:GET /v1/credentials"] <= 2, after

    failed = [f for r in reports for f in r["failed"]]
    assert failed == []
    got = Counter(pid for r in reports for pid in r["ok"])
    assert sorted(got) == sorted(ids)
    assert set(got.values()) == {1}  # every product exactly once
    assert all(r["stats"]["credentials_version"] == 2 for r in reports)


def test_one_session_key_leaves_through_one_exit_and_a_dead_region_reaches_every_worker(
    sandbox: Sandbox,
    redis_server: RedisServer,
) -> None:
    a = Worker(sandbox, redis_server.url, "--mode", "ip", "--session", "cart42", "--hold")
    b = Worker(sandbox, redis_server.url, "--mode", "ip", "--session", "cart42", "--hold")
    a.ready()
    b.ready()
    a.go()
    b.go()  # both route the key at once: neither knows the other's choice
    assert a.report()["ip"] == b.report()["ip"]

    # A region goes down; one worker meets the gateway's no_exit, another hears of it.
    watcher = Worker(sandbox, redis_server.url, "--mode", "watch", "--country", "de")
    watcher.ready()
    sandbox.control("country", code="de", pool_health="down")
    opener = Worker(sandbox, redis_server.url, "--mode", "ip", "--target", "de")
    opener.ready()
    opener.report()  # its request met no_exit, opened the breaker and failed over
    seen = watcher.report()
    assert "c:de" in seen["breakers"]
    assert seen["went_to"] != "de"
    assert seen["stats"].get("requests/country/de", 0) == 0  # never sent there


def test_redis_restarted_mid_crawl_fails_nothing_and_the_fleet_resyncs(
    sandbox: Sandbox,
    redis_server: RedisServer,
) -> None:
    import redis

    ids = product_ids(sandbox)
    workers = [
        Worker(sandbox, redis_server.url, "--mode", "crawl", "--hold", "--ids",
               ",".join(map(str, ids)), "--share", str(i), "--shares", "2")
        for i in range(2)
    ]  # fmt: skip
    for w in workers:
        w.ready()
    for w in workers:
        w.go()
    redis_server.restart()  # mid-run: every key is lost
    reports = [w.report() for w in workers]
    assert [f for r in reports for f in r["failed"]] == []
    got = Counter(pid for r in reports for pid in r["ok"])
    assert sorted(got) == sorted(ids) and set(got.values()) == {1}
    # Resynced: the fleet's counters in the new Redis hold both workers' whole runs.
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    totals: dict[str, int] = {}
    for key in client.scan_iter("proxaro:*:counters"):
        totals = {str(k): int(v) for k, v in client.hgetall(key).items()}
    assert totals.get("successes", 0) >= len(ids)
