"""A fleet of workers on one key and one Redis: what the sharing costs and saves.

    python -m benchmarks.fleet [--quick] [--json]

Figures (counts from the sandbox's own counters; times are figures, not assertions):

1. **API calls at start** for 1, 2, 4 and 8 workers starting together on an empty Redis
   (goal: 4 workers at most 1.2 times one worker), and for 1 worker without Redis.
2. **API calls in steady state** for 1, 2, 4 and 8 workers with every poll at 1 s (credentials,
   pool view, usage) over the same stretch of time: the fleet polls once, not once per worker.
3. **Credentials calls per rotation**: the password rotates with no grace and every worker
   refreshes at once, twice over, as a 407 storm does (goal: at most 2).
4. **Decision time** (``mgr.request(url)`` + ``rr.next_route()`` + ``route.proxy_url``, median
   and 99th percentile, in µs) with and without Redis (goal: the same, within 10 µs).
5. **A ban's way to the others**: one worker opens a breaker, the time until another worker's
   own state shows it (median and worst of N, goal: under a second).

Workers are managers in one process here (each with its own Redis link, thread and store: as
far as Redis and the API can tell, separate workers); ``tests/test_fleet_workers.py`` runs
them as processes.  Needs ``redis-server`` on the PATH.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

__all__ = ["run"]


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(  # noqa: S603 - redis-server from PATH, fixed arguments
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _calls(sb: Any, what: str = "") -> int:
    raw = httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10).json()
    if what:
        return int(raw.get(f"api.requests:GET /v1/{what}", 0))
    return sum(
        int(raw.get(f"api.requests:GET /v1/{w}", 0)) for w in ("credentials", "countries", "usage")
    )


def _start_together(
    sb: Any, n: int, redis_url: str | None, prefix: str, **options: Any
) -> tuple[int, list[Any]]:
    from proxaro_scrape import GatewayManager

    managers = [
        GatewayManager(sb.api_key, sb.api_url, redis_url=redis_url, redis_prefix=prefix, **options)
        for _ in range(n)
    ]
    before = _calls(sb)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda m: m.start(), managers))
    return _calls(sb) - before, managers


def _decisions(mgr: Any, samples: int) -> dict[str, float]:
    times = []
    url = "https://shop.example/product/1"
    for i in range(samples):
        t0 = time.perf_counter_ns()
        route = mgr.request(url).next_route()
        route.proxy_url  # noqa: B018 - part of the decision
        times.append((time.perf_counter_ns() - t0) / 1000.0)
        if i % 1000 == 0:
            time.sleep(0)
    times.sort()
    return {"median_us": statistics.median(times), "p99_us": times[int(len(times) * 0.99)]}


def run(quick: bool = False) -> dict[str, Any]:
    """Every figure, as a dict."""
    from proxaro_scrape.sandbox import Sandbox

    out: dict[str, Any] = {}
    samples = 5_000 if quick else 100_000
    with Sandbox(seed=0) as sb, redis_server() as url:
        calls, alone = _start_together(sb, 1, None, "none")
        out["start_calls_without_redis"] = calls
        starts = {}
        for n in (1, 2, 4, 8):
            calls, managers = _start_together(sb, n, url, f"start{n}")
            starts[n] = calls
            for m in managers:
                m.close()
        out["start_calls"] = starts

        steady = {}
        seconds = 2.0 if quick else 6.0
        polls = {"credentials_poll_interval": 1.0, "pool_ttl": 1.0, "usage_poll_interval": 1.0}
        for n in (1, 2, 4, 8):
            _, managers = _start_together(sb, n, url, f"steady{n}", **polls)
            before = _calls(sb)
            time.sleep(seconds)  # the background polls run meanwhile
            steady[n] = _calls(sb) - before
            for m in managers:
                m.close()
        out[f"steady_calls_in_{seconds:g}s_polling_every_1s"] = steady

        _, fleet = _start_together(sb, 8 if not quick else 4, url, "fleet")
        sb.control("grace", seconds=0)
        sb.control("rotate")
        before = _calls(sb, "credentials")
        with concurrent.futures.ThreadPoolExecutor(2 * len(fleet)) as pool:
            list(pool.map(lambda m: m.refresh_credentials(m.credentials_version), fleet * 2))
        out["credentials_calls_per_rotation"] = _calls(sb, "credentials") - before
        out["workers_in_rotation"] = len(fleet)

        out["decision_without_redis"] = _decisions(alone[0], samples)
        out["decision_with_redis"] = _decisions(fleet[0], samples)

        a, b = fleet[0], fleet[1]
        delays = []
        for i in range(10 if quick else 50):
            code = f"zz{i}"
            key = f"c:{code}"
            with a.core.lock:
                a.core.breakers.failure(key, a.core.clock())
            t0 = time.monotonic()
            while key not in b.breakers() and time.monotonic() - t0 < 5:
                time.sleep(0.0005)
            delays.append(time.monotonic() - t0)
        out["ban_to_others_ms"] = {
            "median": statistics.median(delays) * 1000,
            "max": max(delays) * 1000,
        }
        for m in [*fleet, *alone]:
            m.close()
    return out


def main() -> None:
    """``python -m benchmarks.fleet [--quick] [--json]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    figures = run(args.quick)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        print(f"{name:32} {value}")


if __name__ == "__main__":
    main()
