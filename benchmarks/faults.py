"""Faults at full speed: a credentials rotation, and a region that dies, in the middle of a run.

    python -m benchmarks.faults [--quick] [--json]

Both scenarios drive the async client stacks whose users run at full speed, the httpx
``AsyncProxaroTransport`` and the aiohttp ``ProxaroMiddleware``, with ``concurrency`` requests
in flight (64), each worker sending its next request as soon as the last one is answered, to
the demo site's ``/ip`` (one in three over HTTPS, through a tunnel; the rest plain HTTP).  The
sandbox runs in a process of its own (``proxaro-scrape sandbox --json``), so it never competes
with the client for its interpreter.

1. **Failed requests across a rotation** (goal: 0).  In the middle of the run the grace is cut
   to 0.3 s and the password is rotated through the API, with *no* webhook and a credentials
   poll far away (600 s): the manager only learns of the rotation from the gateway's 407s.  A
   failed request is one the client saw fail: an exception, or an answer other than 200.  The
   407s the gateway gave (``gateway.errors:auth_failed``) and the credentials calls the API
   served are reported, to show that the 407 path was taken and stayed single-flight.
2. **Requests lost when a region dies** (goal: 0), and **extra attempts per request** (a
   figure to report): all traffic targets ``{"country": "de"}``; in the middle of the run
   ``/_sandbox/country`` marks Germany down.  Lost = failed as above.  Attempts are the
   manager's (``stats()["requests"]``); extra attempts per request = (attempts - requests) /
   requests, over the whole run.

:func:`run` is what the benchmark suite (``python -m benchmarks``) calls.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._sandbox import SandboxProcess, sandbox_process

__all__ = ["run"]

STACKS = ("httpx_async", "aiohttp")
#: World seconds of grace left to the old password after the rotation.
ROTATION_GRACE = 0.3


class _Client:
    """One stack's client routed through the integration: ``await get(url) -> status``."""

    def __init__(self, stack: str, mgr: Any, sb: SandboxProcess, concurrency: int) -> None:
        self.stack = stack
        ctx = ssl.create_default_context(cafile=sb.ca_cert)
        if stack == "httpx_async":
            import httpx

            from proxaro_scrape.integrations.httpx import AsyncProxaroTransport

            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            self._httpx = httpx.AsyncClient(
                transport=AsyncProxaroTransport(mgr, verify=ctx, limits=limits), timeout=20
            )
        elif stack == "aiohttp":
            import aiohttp

            from proxaro_scrape.integrations.aiohttp import ProxaroMiddleware

            self._aiohttp = aiohttp.ClientSession(
                middlewares=(ProxaroMiddleware(mgr),),
                connector=aiohttp.TCPConnector(ssl=ctx, limit=concurrency),
                timeout=aiohttp.ClientTimeout(total=20),
            )
        else:
            raise ValueError(f"unknown stack {stack!r}")

    async def get(self, url: str) -> int:
        if self.stack == "httpx_async":
            r = await self._httpx.get(url)
            return r.status_code
        async with self._aiohttp.get(url) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        if self.stack == "httpx_async":
            await self._httpx.aclose()
        else:
            await self._aiohttp.close()


async def _drive(
    stack: str,
    sb: SandboxProcess,
    *,
    manager_kw: dict[str, Any],
    seconds: float,
    event_at: float,
    event: Callable[[], Awaitable[dict[str, Any]]],
    concurrency: int,
) -> dict[str, Any]:
    """Run ``concurrency`` workers; call ``event()`` at ``event_at`` seconds, then keep going
    for ``seconds - event_at`` seconds after it has finished (a busy loop may delay it)."""
    from proxaro_scrape import GatewayManager

    mgr = GatewayManager(sb.api_key, sb.api_url, usage_poll_interval=None, **manager_kw)
    await mgr.astart()
    client = _Client(stack, mgr, sb, concurrency)
    secrets: set[str] = set()
    urls = [f"{sb.site_https_url}/ip" if i % 3 == 0 else f"{sb.site_url}/ip" for i in range(3)]
    sent = [0]
    after_event = [0]
    event_done = [False]
    failures: Counter[str] = Counter()
    stop_at = [float("inf")]

    async def worker(i: int) -> None:
        n = i
        while time.monotonic() < stop_at[0]:
            n += 1
            sent[0] += 1
            after_event[0] += event_done[0]
            try:
                status = await client.get(urls[n % 3])
            except Exception as exc:  # a request the caller saw fail
                failures[_describe(exc, secrets)] += 1
            else:
                if status != 200:
                    failures[f"status {status}"] += 1

    try:
        for i in range(concurrency):  # warm: connections and tunnels open before the clock
            await client.get(urls[i % 3])
        creds = mgr.credentials
        if creds is not None:
            secrets.add(creds.password.reveal())
        before = await sb.acounters()
        stats0 = mgr.stats()
        sent[0] = 0
        t0 = time.monotonic()
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(event_at)
        detail = await event()
        event_done[0] = True
        done_at = time.monotonic()
        stop_at[0] = done_at + seconds - event_at
        detail["event_done_at_s"] = round(done_at - t0, 3)
        if "password" in detail:
            secrets.add(detail.pop("password"))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        after = await sb.acounters()
        stats1 = mgr.stats()
    finally:
        await client.close()
        await mgr.aclose()
    stats = {k: stats1.get(k, 0) - stats0.get(k, 0) for k in stats1}
    counters = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    attempts = stats.get("requests", 0)
    return {
        "stack": stack,
        "requests": sent[0],
        "requests_after_event": after_event[0],
        "requests_per_second": round(sent[0] / elapsed, 1),
        "failed": sum(failures.values()),
        "failures": dict(failures.most_common(5)),
        "attempts": attempts,
        "extra_attempts": attempts - sent[0],
        "extra_attempts_per_request": round((attempts - sent[0]) / sent[0], 4) if sent[0] else None,
        "event": detail,
        "manager": {
            k: v
            for k, v in sorted(stats.items())
            if v
            and (
                k.startswith(("outcomes/", "requests/country/"))
                or k
                in (
                    "retries",
                    "failovers",
                    "region_dead",
                    "breakers_opened",
                    "credential_refreshes",
                    "rotations",
                )
            )
        },
        "sandbox": {
            k: v
            for k, v in sorted(counters.items())
            if v
            and (
                k.startswith("gateway.errors:")
                or k in ("gateway.connections", "gateway.tunnels", "api.requests")
                or k == "api.requests:GET /v1/credentials"
            )
        },
    }


def _describe(exc: BaseException, secrets: set[str]) -> str:
    text = f"{type(exc).__name__}: {exc}"[:200]
    for secret in secrets:  # belt and braces: the integrations never put one there
        text = text.replace(secret, "***")
    return text


async def _scenarios(quick: bool, concurrency: int) -> dict[str, Any]:
    seconds, event_at = (1.6, 0.5) if quick else (8.0, 3.0)
    out: dict[str, Any] = {"rotation": {}, "region": {}}
    with sandbox_process() as sb:
        for stack in STACKS:

            async def rotate() -> dict[str, Any]:
                from proxaro_scrape import AsyncProxaro

                await sb.acontrol("grace", seconds=ROTATION_GRACE)
                async with AsyncProxaro(api_key=sb.api_key, base_url=sb.api_url) as api:
                    rotated = await api.credentials.rotate()
                return {
                    "grace_s": ROTATION_GRACE,
                    "password": rotated.password.reveal(),
                }

            out["rotation"][stack] = await _drive(
                stack,
                sb,
                # No webhook and no poll within the run: only the 407s can tell the manager.
                manager_kw={"credentials_poll_interval": 600.0},
                seconds=seconds,
                event_at=event_at,
                event=rotate,
                concurrency=concurrency,
            )
            await sb.acontrol("grace", seconds=60)

            async def region_down() -> dict[str, Any]:
                await sb.acontrol("country", code="de", pool_health="down")
                return {"country_down": "de"}

            try:
                out["region"][stack] = await _drive(
                    stack,
                    sb,
                    manager_kw={"target": {"country": "de"}},
                    seconds=seconds,
                    event_at=event_at,
                    event=region_down,
                    concurrency=concurrency,
                )
            finally:
                await sb.acontrol("country", code="de", pool_health="healthy")
    return out


def run(quick: bool = False, *, concurrency: int = 64) -> dict[str, Any]:
    """Both scenarios on both async stacks; a dict of the figures and what is behind them.

    Top-level figures: ``rotation_failed`` (sum over the stacks), ``region_lost`` (sum),
    ``region_extra_attempts_per_request`` (the worst stack); per stack under ``rotation`` and
    ``region``.
    """
    # The failovers and 407s are the point here, not news: keep their warnings out of the
    # output, and give the caller its level back.
    package_logger = logging.getLogger("proxaro_scrape")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)
    try:
        # A loop of our own on a thread of our own: the caller may already run one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            out = pool.submit(asyncio.run, _scenarios(quick, concurrency)).result()
    finally:
        package_logger.setLevel(level)
    rotation, region = out["rotation"], out["region"]
    extra = [r["extra_attempts_per_request"] for r in region.values()]
    return {
        "figure": "faults at full speed: a rotation (407 path) and a region dying, mid-run",
        "quick": quick,
        "concurrency": concurrency,
        "stacks": list(STACKS),
        "rotation_failed": sum(r["failed"] for r in rotation.values()),
        "rotation_auth_failed_407s": sum(
            r["sandbox"].get("gateway.errors:auth_failed", 0) for r in rotation.values()
        ),
        "region_lost": sum(r["failed"] for r in region.values()),
        "region_extra_attempts_per_request": max(x for x in extra if x is not None)
        if any(x is not None for x in extra)
        else None,
        "rotation": rotation,
        "region": region,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.faults``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds (CI smoke)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    result = run(args.quick, concurrency=args.concurrency)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name in ("rotation", "region"):
        for stack, r in result[name].items():
            print(
                f"{name:<8} {stack:<12} {r['requests']:>6} requests "
                f"({r['requests_per_second']}/s), failed {r['failed']}, extra attempts "
                f"{r['extra_attempts']} ({r['extra_attempts_per_request']}/request); "
                f"gateway {r['sandbox']}; manager {r['manager']}"
            )
            if r["failures"]:
                print(f"         failures: {r['failures']}")


if __name__ == "__main__":
    main()
