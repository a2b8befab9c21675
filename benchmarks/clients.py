"""Per client stack: the Proxaro integration versus the same client with a static proxy URL.

    python -m benchmarks.clients [--quick] [--json PATH]

For httpx (sync and async), requests and aiohttp, in one run and against one sandbox started as
a separate process (``proxaro-scrape sandbox --json``), so that this process's CPU time is the
client's alone:

- **requests/s at 64 in flight** (sync stacks: a pool of 64 threads; async: 64 tasks) and
  **client CPU per request** (``time.process_time``), for the integration and for the same
  client given static proxy URLs, in alternating order over a few rounds; each figure is the
  median of the per-round ratios (goals: requests/s >= 0.98, CPU <= 1.03).  Like with like:
  the integration targets every request (one of four countries, the stack's per-request
  argument), and the static side holds one targeted gateway URL per country (the usernames
  the integration sends, ``user-country-xx``) and picks one per request, as a user would by
  hand.  httpx: httpcore's pool (``max_connections`` 100) never binds at 64 in flight, so both
  sides are bounded by the 64 requests in flight alone, the same for both;
- **connections the gateway saw** (its ``gateway.connections`` counter) for N plain-HTTP
  requests through the integration with a new target each time (a new country/session pair per
  request, so a new gateway username), at 64 in flight (goal: no more than 64).  N is 10,000,
  or 300 in quick mode.

Every request is a plain-HTTP GET of the demo shop's ``/robots.txt`` (exempt from its
anti-bot budget).  :func:`run` prints one table and returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from proxaro_scrape.gateway import GatewayManager

__all__ = ["CONCURRENCY", "STACKS", "run"]

CONCURRENCY = 64
STACKS = ("httpx", "httpx_async", "requests", "aiohttp")
_COUNTRIES = ("us", "de", "fr", "gb", "jp", "ca", "nl", "br", "in", "au", "es", "it")
# The integration's default limits, for the static-proxy client too: the same pool either way.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=60.0)


@contextlib.contextmanager
def _sandbox() -> Iterator[dict[str, Any]]:
    """A sandbox in a process of its own; yields the JSON line it prints."""
    proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-c", "from proxaro_scrape.cli import main; main()", "sandbox", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the sandbox process did not start")
        yield json.loads(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _counters(info: dict[str, Any]) -> dict[str, int]:
    return dict(httpx.get(f"{info['api_url']}/_sandbox/counters", timeout=10).json())


def _reset(info: dict[str, Any]) -> None:
    httpx.post(f"{info['api_url']}/_sandbox/reset_counters", json={}, timeout=10)


#: The countries of the throughput rounds: one per request, in turn, on both sides.
_ROUND_COUNTRIES = ("us", "de", "gb", "fr")
#: Beside the httpx rows: what bounds both sides at 64 in flight.
HTTPX_NOTE = "httpcore's pool bounds both sides alike: 64 in flight, max_connections 100"


def _country(i: int) -> dict[str, str]:
    return {"country": _ROUND_COUNTRIES[i % len(_ROUND_COUNTRIES)]}


def _static_urls(mgr: GatewayManager, url: str) -> list[str]:
    """One targeted gateway URL per country of the rounds (the integration's usernames)."""
    return [mgr.request(url, _country(i)).next_route().proxy_url for i in range(4)]


def _new_target(i: int) -> dict[str, Any]:
    return {"country": _COUNTRIES[i % len(_COUNTRIES)], "session": f"b{i}"}


class _Round:
    """Wall and CPU time of one measured batch."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.failed = 0

    def __enter__(self) -> _Round:
        self._w = time.perf_counter()
        self._c = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


# ---------------------------------------------------------------------------- sync stacks


def _sync_stack(
    stack: str, mgr: GatewayManager, url: str, static: list[str]
) -> tuple[Callable[[int], Any], Callable[[int], Any], Callable[[int], Any], Callable[[], None]]:
    """(send static i, send proxaro i, send proxaro with a new target i, close)."""
    if stack == "httpx":
        from proxaro_scrape.integrations.httpx import ProxaroTransport

        # httpx fixes a client's proxy: one client per static URL, sharing nothing but limits.
        bases = [httpx.Client(proxy=u, limits=_LIMITS, timeout=30) for u in static]
        ours = httpx.Client(transport=ProxaroTransport(mgr, limits=_LIMITS), timeout=30)

        def b(i: int) -> Any:
            return bases[i % len(bases)].get(url).status_code

        def p(i: int) -> Any:
            return ours.get(url, extensions={"proxaro": _country(i)}).status_code

        def t(i: int) -> Any:
            return ours.get(url, extensions={"proxaro": _new_target(i)}).status_code

        def close() -> None:
            for base in bases:
                base.close()
            ours.close()

        return b, p, t, close
    import requests
    from requests.adapters import HTTPAdapter

    from proxaro_scrape.integrations.requests import ProxaroSession

    rbase = requests.Session()
    rbase.mount("http://", HTTPAdapter(pool_maxsize=CONCURRENCY))
    rours = ProxaroSession(mgr, pool_maxsize=CONCURRENCY)
    proxies = [{"http": u} for u in static]

    def rb(i: int) -> Any:
        return rbase.get(url, timeout=30, proxies=proxies[i % len(proxies)]).status_code

    def rp(i: int) -> Any:
        return rours.get(url, timeout=30, proxaro=_country(i)).status_code

    def rt(i: int) -> Any:
        return rours.get(url, timeout=30, proxaro=_new_target(i)).status_code

    def rclose() -> None:
        rbase.close()
        rours.close()

    return rb, rp, rt, rclose


def _bench_sync(
    stack: str, info: dict[str, Any], rounds: int, n: int, conn_n: int
) -> dict[str, Any]:
    url = f"{info['site_url']}/robots.txt"
    with GatewayManager(info["api_key"], info["api_url"]) as mgr:
        static = _static_urls(mgr, url)
        send_base, send_ours, send_target, close = _sync_stack(stack, mgr, url, static)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENCY)

        def batch(fn: Callable[[int], Any], count: int) -> _Round:
            with _Round() as r:
                codes = list(pool.map(lambda i: _status(fn, i), range(count)))
            r.failed = sum(c != 200 for c in codes)
            return r

        try:
            batch(send_base, CONCURRENCY * 2)  # warm both pools up to full concurrency
            batch(send_ours, CONCURRENCY * 2)
            pairs = []
            for i in range(rounds):
                if i % 2 == 0:
                    b, p = batch(send_base, n), batch(send_ours, n)
                else:
                    p, b = batch(send_ours, n), batch(send_base, n)
                pairs.append((b, p))
            # Connections: a fresh pool, so that only this part's connections are counted.
            close()
            send_base, send_ours, send_target, close = _sync_stack(stack, mgr, url, static)
            _reset(info)
            retries = mgr.stats().get("retries", 0)
            codes = list(pool.map(lambda i: _status(send_target, i), range(conn_n)))
            conn_failed = sum(c != 200 for c in codes)
            conns = _counters(info).get("gateway.connections", 0)
            retries = mgr.stats().get("retries", 0) - retries
        finally:
            close()
            pool.shutdown(wait=True)
    return _figures(pairs, n, conns, conn_n, conn_failed, retries)


def _status(fn: Callable[..., Any], *args: Any) -> Any:
    # A client's own transport error (httpcore under 64 threads has its races) is counted as a
    # failed request, not allowed to end the run: the figures say how many there were.
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


# ---------------------------------------------------------------------------- async stacks


async def _bench_async_main(
    stack: str, info: dict[str, Any], rounds: int, n: int, conn_n: int
) -> dict[str, Any]:
    url = f"{info['site_url']}/robots.txt"
    async with GatewayManager(info["api_key"], info["api_url"]) as mgr:
        static = _static_urls(mgr, url)
        stacks = _AsyncClients(stack, mgr, url, static)
        await stacks.open()

        async def batch(fn: Callable[[int], Any], count: int) -> _Round:
            sem = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> Any:
                async with sem:
                    try:
                        return await fn(i)
                    except Exception as exc:  # noqa: BLE001 - counted, see _status
                        return type(exc).__name__

            with _Round() as r:
                codes = await asyncio.gather(*(one(i) for i in range(count)))
            r.failed = sum(c != 200 for c in codes)
            return r

        try:
            await batch(stacks.base, CONCURRENCY * 2)
            await batch(stacks.ours, CONCURRENCY * 2)
            pairs = []
            for i in range(rounds):
                if i % 2 == 0:
                    b = await batch(stacks.base, n)
                    p = await batch(stacks.ours, n)
                else:
                    p = await batch(stacks.ours, n)
                    b = await batch(stacks.base, n)
                pairs.append((b, p))
            await stacks.close()
            stacks = _AsyncClients(stack, mgr, url, static)
            await stacks.open()
            await asyncio.to_thread(_reset, info)
            retries = mgr.stats().get("retries", 0)
            conn_failed = (await batch(stacks.targeted, conn_n)).failed
            conns = (await asyncio.to_thread(_counters, info)).get("gateway.connections", 0)
            retries = mgr.stats().get("retries", 0) - retries
        finally:
            await stacks.close()
    return _figures(pairs, n, conns, conn_n, conn_failed, retries)


class _AsyncClients:
    def __init__(self, stack: str, mgr: GatewayManager, url: str, static: list[str]) -> None:
        self.stack, self.mgr, self.url, self.static = stack, mgr, url, static
        self._closers: list[Any] = []

    async def open(self) -> None:
        url, static = self.url, self.static
        if self.stack == "httpx_async":
            from proxaro_scrape.integrations.httpx import AsyncProxaroTransport

            bases = [httpx.AsyncClient(proxy=u, limits=_LIMITS, timeout=30) for u in static]
            transport = AsyncProxaroTransport(self.mgr, limits=_LIMITS)
            ours = httpx.AsyncClient(transport=transport, timeout=30)
            self._closers = [*(base.aclose for base in bases), ours.aclose]

            async def b(i: int) -> int:
                return (await bases[i % len(bases)].get(url)).status_code

            async def p(i: int) -> int:
                r = await ours.get(url, extensions={"proxaro": _country(i)})
                return r.status_code

            async def t(i: int) -> int:
                r = await ours.get(url, extensions={"proxaro": _new_target(i)})
                return r.status_code

        else:
            import aiohttp

            from proxaro_scrape.integrations.aiohttp import ProxaroMiddleware

            abase = aiohttp.ClientSession()
            mw = ProxaroMiddleware(self.mgr)
            aours = aiohttp.ClientSession(middlewares=(mw,))
            self._closers = [abase.close, aours.close]
            # As the module's docstring shows: one view per target, made once, used per request.
            views = [(mw.using(_country(i)),) for i in range(len(_ROUND_COUNTRIES))]

            async def b(i: int) -> int:
                async with abase.get(url, proxy=static[i % len(static)]) as r:
                    await r.read()
                    return r.status

            async def p(i: int) -> int:
                async with aours.get(url, middlewares=views[i % len(views)]) as r:
                    await r.read()
                    return r.status

            async def t(i: int) -> int:
                async with aours.get(url, middlewares=(mw.using(_new_target(i)),)) as r:
                    await r.read()
                    return r.status

        self.base, self.ours, self.targeted = b, p, t

    async def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            await close()


# ---------------------------------------------------------------------------- figures


def _figures(
    pairs: list[tuple[_Round, _Round]],
    n: int,
    conns: int,
    conn_n: int,
    conn_failed: int,
    retries: int,
) -> dict[str, Any]:
    rps_b = [n / b.wall for b, _ in pairs]
    rps_p = [n / p.wall for _, p in pairs]
    cpu_b = [b.cpu / n * 1e6 for b, _ in pairs]
    cpu_p = [p.cpu / n * 1e6 for _, p in pairs]
    return {
        "rps_static": round(statistics.median(rps_b), 1),
        "rps_proxaro": round(statistics.median(rps_p), 1),
        "rps_ratio": round(statistics.median(p / b for b, p in zip(rps_b, rps_p)), 3),
        "cpu_us_static": round(statistics.median(cpu_b), 1),
        "cpu_us_proxaro": round(statistics.median(cpu_p), 1),
        "cpu_ratio": round(statistics.median(p / b for b, p in zip(cpu_b, cpu_p)), 3),
        "failed_static": sum(b.failed for b, _ in pairs),
        "failed_proxaro": sum(p.failed for _, p in pairs) + conn_failed,
        "connections": conns,
        # Retries (a timeout or a dropped exit closes its connection) explain connections
        # above the concurrency when the machine is too busy to answer in time.
        "connection_retries": retries,
        "connection_requests": conn_n,
        "connections_per_concurrency": round(conns / CONCURRENCY, 3),
    }


def run(quick: bool = False, stacks: tuple[str, ...] = STACKS) -> dict[str, Any]:
    """Measure every stack in ``stacks``; print a table; return the figures.

    ``quick``: fewer rounds and requests (a smoke test of the same code; the figures are
    produced, not meant to be compared with the goals).
    """
    rounds, n, conn_n = (2, 80, 300) if quick else (8, 1000, 10_000)
    out: dict[str, Any] = {
        "quick": quick,
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "requests_per_round": n,
        "goals": {
            "rps_ratio": ">= 0.98",
            "cpu_ratio": "<= 1.03",
            "connections": f"<= {CONCURRENCY}",
        },
        "stacks": {},
    }
    with _sandbox() as info:
        for stack in stacks:
            if stack in ("httpx", "requests"):
                figures = _bench_sync(stack, info, rounds, n, conn_n)
            else:
                figures = _run_coroutine(_bench_async_main(stack, info, rounds, n, conn_n))
            if stack.startswith("httpx"):
                figures["note"] = HTTPX_NOTE
            out["stacks"][stack] = figures
    _print_table(out)
    return out


def _run_coroutine(coro: Any) -> Any:
    """``asyncio.run(coro)``, on a thread of its own when this thread already runs a loop
    (under pytest-twisted, say)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _print_table(out: dict[str, Any]) -> None:
    head = (
        f"{'stack':<12} {'req/s static':>12} {'req/s proxaro':>13} {'ratio':>6}   "
        f"{'CPU µs static':>13} {'proxaro':>8} {'ratio':>6}   {'connections':>16}  "
        f"{'failed s/p':>10}"
    )
    print(head)
    print("-" * len(head))
    for stack, f in out["stacks"].items():
        conns = f"{f['connections']}/{f['connection_requests']} req"
        print(
            f"{stack:<12} {f['rps_static']:>12} {f['rps_proxaro']:>13} {f['rps_ratio']:>6}   "
            f"{f['cpu_us_static']:>13} {f['cpu_us_proxaro']:>8} {f['cpu_ratio']:>6}   {conns:>16}  "
            f"{str(f['failed_static']) + '/' + str(f['failed_proxaro']):>10}"
        )
    print(f"httpx rows: {HTTPX_NOTE}")
    print(
        f"goals: req/s ratio >= 0.98, CPU ratio <= 1.03, connections <= {out['concurrency']} "
        f"(the concurrency); {out['rounds']} rounds of {out['requests_per_round']} requests"
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.clients [--quick] [--json PATH] [--stack NAME ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--stack", action="append", choices=STACKS, help="only these stacks")
    args = parser.parse_args(argv)
    out = run(args.quick, tuple(args.stack or STACKS))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
