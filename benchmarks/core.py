"""The gateway manager's own figures: decision cost, API calls in steady state, memory bound.

    python -m benchmarks.core [--quick] [--json]

Three figures, printed (figures, not timed assertions):

1. **Per-request decision** (goal: median ≤ 10 µs): ``mgr.request(url)`` + ``rr.next_route()``
   + ``route.proxy_url``, i.e. target → URL with the current credentials, the sticky-session
   lookup and the breaker check, on a manager started against the sandbox (its background
   thread running).  Measured call by call; the median and the 99th percentile, for a rotating
   default target, sticky per domain, and a dict target given per request.  The full cycle with
   ``rr.observe(...)`` of a success is shown too.
2. **API calls per 10,000 routed requests in steady state** (goal: ≤ 3), counted by the
   sandbox (``api.requests``): after start (and the background ASN prefetch) is over, real
   requests are routed through the sandbox gateway to the demo site with default poll
   intervals, a mix of targets and sticky keys, and every answer observed.
3. **Memory after 1,000,000 distinct sticky keys** (goal: bounded by the LRU size): Python
   heap growth (``tracemalloc``) once the session table is full (``session_lru_size`` keys) and
   after a million distinct keys; the two are close when the bound holds.  Beside it, what the
   OS sees: the process's resident set growth in MB over the same million keys (a pass of its
   own, without tracemalloc, whose tables would count; the memory part runs in a fresh process,
   so that nothing freed by the sandbox before it is reused and hides the growth).

``--quick`` shrinks the counts (1,000 routed requests, 30,000 sticky keys) for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import logging
import os
import ssl
import statistics
import time
import tracemalloc
from typing import Any

import httpx

__all__ = ["run"]

_LRU = 10_000


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _decisions(mgr: Any, url: str, samples: int) -> dict[str, float]:
    """Median and p99 of one decision, in µs, for a few realistic shapes."""
    from proxaro_scrape.gateway import Target

    perf = time.perf_counter_ns
    hosts = [f"http://shop{i}.example/item/{i}" for i in range(50)]
    targets = [{"country": c} for c in ("us", "de", "gb", "fr", "jp")]
    de = Target(country="de")
    out: dict[str, float] = {}

    def measure(name: str, fn: Any) -> None:
        for i in range(min(2000, samples)):  # warm every cache first
            fn(i)
        times = []
        for i in range(samples):
            t0 = perf()
            fn(i)
            times.append((perf() - t0) / 1000.0)
        out[f"decision_{name}_median_us"] = round(statistics.median(times), 2)
        out[f"decision_{name}_p99_us"] = round(_percentile(times, 99), 2)

    request = mgr.request

    def rotating(i: int) -> None:
        request(url).next_route().proxy_url  # noqa: B018 - building the URL is the point

    def sticky_domain(i: int) -> None:
        request(hosts[i % 50], de, session_key=None).next_route().proxy_url  # noqa: B018

    def dict_target(i: int) -> None:
        request(url, targets[i % 5]).next_route().proxy_url  # noqa: B018

    def full_cycle(i: int) -> None:
        rr = request(url)
        rr.next_route().proxy_url  # noqa: B018
        rr.observe(status=200, headers=None)

    measure("rotating", rotating)
    sticky_mgr = mgr.core.sticky
    mgr.core.sticky = "domain"  # same manager, sticky per domain for this shape
    try:
        measure("sticky_domain", sticky_domain)
    finally:
        mgr.core.sticky = sticky_mgr
    measure("dict_target", dict_target)
    measure("with_observe", full_cycle)
    return out


async def _steady_state(sb: Any, n_requests: int, concurrency: int) -> dict[str, Any]:
    """Route real requests through the sandbox; count what the API saw meanwhile."""
    from proxaro_scrape.gateway import GatewayManager

    url = f"{sb.site_url}/ip"
    targets: list[Any] = [None, {"country": "us"}, {"country": "de"}, {"continent": "Europe"}]
    mgr = GatewayManager(sb.api_key, sb.api_url, sticky="key")
    await mgr.astart()
    clients: dict[str, httpx.AsyncClient] = {}
    # One TLS context for every client: httpx builds (and loads the CA bundle into) a new one
    # per client otherwise, ~20 ms each, which made this harness, not the routing, the
    # bottleneck (a new client for every sticky session's username).
    tls = ssl.create_default_context()
    try:
        # Steady state: the background ASN prefetch after start is over.
        for _ in range(300):
            if len(mgr.pool.asns) >= len(mgr.pool.countries):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as plain:
            before = (await plain.get(f"{sb.api_url}/_sandbox/counters")).json()
        failed = 0
        counter = iter(range(n_requests))

        async def worker() -> None:
            nonlocal failed
            for i in counter:
                rr = mgr.request(
                    url, targets[i % 4], session_key=f"user{i % 200}" if i % 2 else None
                )
                while True:
                    route = rr.next_route()
                    client = clients.get(route.proxy_url)
                    if client is None:
                        client = clients[route.proxy_url] = httpx.AsyncClient(
                            proxy=route.proxy_url, timeout=10, verify=tls
                        )
                    try:
                        resp = await client.get(url)
                    except httpx.HTTPError as exc:
                        outcome = rr.observe(exception=exc)
                    else:
                        outcome = rr.observe(status=resp.status_code, headers=resp.headers)
                    if outcome.ok:
                        break
                    if not outcome.retry:
                        failed += 1
                        break
                    if outcome.refresh:
                        await mgr.arefresh_credentials(route.credentials_version)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        async with httpx.AsyncClient() as plain:
            after = (await plain.get(f"{sb.api_url}/_sandbox/counters")).json()
    finally:
        for client in clients.values():
            await client.aclose()
        await mgr.aclose()
    calls = {
        k.split(":", 1)[1]: after.get(k, 0) - before.get(k, 0)
        for k in after
        if k.startswith("api.requests:") and after.get(k, 0) != before.get(k, 0)
    }
    api_calls = after.get("api.requests", 0) - before.get("api.requests", 0)
    return {
        "routed_requests": n_requests,
        "routed_failed": failed,
        "routed_seconds": round(elapsed, 2),
        "routed_per_second": round(n_requests / elapsed, 1),
        "api_calls": api_calls,
        "api_calls_by_route": calls,
        "api_calls_per_10k_requests": round(api_calls * 10_000 / n_requests, 2),
    }


def _rss_bytes() -> int:
    """This process's resident set now (Linux: /proc; elsewhere the peak, from rusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory(n_keys: int) -> dict[str, Any]:
    """Heap growth with ``_LRU`` keys, then with ``n_keys`` distinct sticky keys; and the RSS
    growth over ``n_keys`` keys, measured apart (tracemalloc's own tables would count)."""
    url = "http://shop.example/"
    core = _memory_core()
    gc.collect()
    rss_base = _rss_bytes()
    rss_at_full = 0
    for i in range(n_keys):
        core.request(url, None, f"user-{i}").next_route()
        if i + 1 == _LRU:
            gc.collect()
            rss_at_full = _rss_bytes() - rss_base
    gc.collect()
    rss_after = _rss_bytes() - rss_base
    del core
    heap = _heap(_memory_core(), url, n_keys)
    heap["rss_mb_at_lru_size"] = round(rss_at_full / 2**20, 1)
    heap["rss_mb_after_all_keys"] = round(rss_after / 2**20, 1)
    return heap


def _memory_apart(n_keys: int) -> dict[str, Any]:
    """:func:`_memory` in a fresh process: the RSS growth of a manager alone, not memory this
    process freed after the sandbox and reuses."""
    import subprocess
    import sys

    from benchmarks import child_env

    code = "import json, sys; from benchmarks.core import _memory; print(json.dumps(_memory(%d)))"
    proc = subprocess.run(  # noqa: S603 - our own module, a fixed argument
        [sys.executable, "-c", code % n_keys],
        capture_output=True,
        text=True,
        timeout=1800,
        env=child_env(),
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _memory_core() -> Any:
    from proxaro_scrape.gateway._core import RoutingCore
    from proxaro_scrape.gateway._pool import PoolView, country_from_model

    core = RoutingCore(sticky="key", session_lru_size=_LRU)
    core.install_credentials(
        {"gateway": "127.0.0.1", "port": 7777, "username": "nb_bench", "password": "pw-bench"}
    )
    core.install_pool(
        PoolView().with_countries(
            [
                country_from_model(
                    {"code": "us", "continent": "North America", "estimated_pool_size": 1}
                )
            ]
        )
    )
    return core


def _heap(core: Any, url: str, n_keys: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    at_full = 0
    for i in range(n_keys):
        core.request(url, None, f"user-{i}").next_route()
        if i + 1 == _LRU:
            gc.collect()
            at_full = tracemalloc.get_traced_memory()[0] - base
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "sticky_keys": n_keys,
        "session_lru_size": _LRU,
        "sessions_held": core.store.session_count(),
        "heap_kib_at_lru_size": round(at_full / 1024, 1),
        "heap_kib_after_all_keys": round(after / 1024, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print the three figures; return them as a dict."""
    from proxaro_scrape.gateway import GatewayManager
    from proxaro_scrape.sandbox import Sandbox

    logging.getLogger("proxaro_scrape").setLevel(logging.ERROR)
    result: dict[str, Any] = {"quick": quick}
    with Sandbox(seed=0) as sb:
        with GatewayManager(sb.api_key, sb.api_url) as mgr:
            result.update(_decisions(mgr, f"{sb.site_url}/ip", 5_000 if quick else 100_000))
        n, concurrency = (1_000, 8) if quick else (10_000, 16)
        # A loop of its own in a thread of its own: the caller's thread may already run one
        # (Twisted's asyncio reactor under pytest, say).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            result.update(pool.submit(asyncio.run, _steady_state(sb, n, concurrency)).result())
    result.update(_memory_apart(30_000 if quick else 1_000_000))
    _print(result)
    return result


def _print(r: dict[str, Any]) -> None:
    print("gateway manager core benchmark" + (" (quick)" if r["quick"] else ""))
    print("  per-request decision (request + next_route + proxy_url), µs [goal: median <= 10]")
    for shape in ("rotating", "sticky_domain", "dict_target", "with_observe"):
        print(
            f"    {shape:<14} median {r[f'decision_{shape}_median_us']:>6}"
            f"   p99 {r[f'decision_{shape}_p99_us']:>6}"
        )
    print(
        f"  API calls per 10,000 routed requests: {r['api_calls_per_10k_requests']} "
        f"[goal: <= 3] ({r['api_calls']} calls for {r['routed_requests']} requests in "
        f"{r['routed_seconds']} s, {r['routed_per_second']}/s, {r['routed_failed']} failed; "
        f"{r['api_calls_by_route'] or 'none'})"
    )
    print(
        f"  memory: {r['sticky_keys']:,} distinct sticky keys → {r['sessions_held']:,} sessions "
        f"held; heap +{r['heap_kib_at_lru_size']} KiB at {r['session_lru_size']:,} keys, "
        f"+{r['heap_kib_after_all_keys']} KiB after all [goal: bounded by the LRU size]; "
        f"RSS +{r['rss_mb_at_lru_size']} MB at {r['session_lru_size']:,} keys, "
        f"+{r['rss_mb_after_all_keys']} MB after all"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.core [--quick] [--json]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
