"""From a ``credentials.rotated`` delivery to the new password in use.

    python -m benchmarks.webhook [--quick] [--json]

A :class:`~proxaro_scrape.webhooks.WebhookReceiver` serves HTTPS (a certificate from the
sandbox CA, which the sandbox's webhook deliverer trusts), is attached to an async
:class:`~proxaro_scrape.GatewayManager` (``receiver.attach(mgr)``) and registered through the
API (``POST /v1/webhooks``, ``["credentials.rotated"]``).  Light traffic runs through the
manager meanwhile (``workers`` loops of request → route → GET through the gateway → observe).
Then the password is rotated through the API, ``rotations`` times, a little apart.  For each:

- **receipt**: the receiver has verified and accepted the delivery (its ``accept``);
- **in use**: the first route built with the new credentials version (``rr.next_route()``);
- **2xx**: the first 200 through the gateway sent with it.

The figure is the slowest receipt → in use over the rotations (goal: <= 1 s); receipt → 2xx and
rotate call → receipt (the sandbox's delivery) are reported beside it.  The credentials poll is
an hour away and the grace a full minute, so only the webhook can explain a switch this fast;
the gateway's 407 count (``gateway.errors:auth_failed``) is reported and should stay 0.

The sandbox runs in this process (in its own thread, on its own loop), not in a subprocess:
the receiver needs a server certificate from the sandbox's CA, whose key stays in the process
that made it.  Time here is a latency, not a throughput, so sharing the CPU only makes the
figure more pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import ssl
import statistics
import time
from typing import Any

__all__ = ["run"]


def _receiver_class() -> Any:
    from proxaro_scrape.webhooks import WebhookReceiver

    class TimedReceiver(WebhookReceiver):
        """Stamps every accepted, first-seen delivery the moment it is accepted."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.accepted_at: list[float] = []

        def accept(self, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
            status, payload = super().accept(body, signature)
            if status == 200 and not payload.get("duplicate"):
                self.accepted_at.append(time.monotonic())
            return status, payload

    return TimedReceiver


async def _measure(sb: Any, rotations: int, workers: int, spacing: float) -> dict[str, Any]:
    import httpx

    from proxaro_scrape import AsyncProxaro, GatewayManager

    url = f"{sb.site_url}/ip"
    mgr = GatewayManager(
        sb.api_key,
        sb.api_url,
        # An hour between polls: only the webhook can make the switch within a second.
        credentials_poll_interval=3600.0,
        pool_ttl=3600.0,
        usage_poll_interval=None,
    )
    receiver = _receiver_class()("whsec_placeholder_until_registered")
    receiver.attach(mgr)
    # (monotonic time, credentials version) of every route built, and of every 200 answer.
    routes: list[tuple[float, int]] = []
    answers: list[tuple[float, int]] = []
    failures: list[str] = []
    clients: dict[str, httpx.AsyncClient] = {}
    stop = asyncio.Event()
    # Set by the first 200 sent with credentials newer than watch[0].
    switched = asyncio.Event()
    watch = [0]
    # One TLS context for every client: building one per client costs milliseconds, which
    # would be counted in the receipt → 2xx time.
    tls = ssl.create_default_context()

    async def worker() -> None:
        while not stop.is_set():
            rr = mgr.request(url)
            while True:
                route = rr.next_route()
                routes.append((time.monotonic(), route.credentials_version))
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
                    if resp.status_code == 200:
                        answers.append((time.monotonic(), route.credentials_version))
                        if route.credentials_version > watch[0]:
                            switched.set()
                if outcome.ok:
                    break
                if not outcome.retry:
                    failures.append(outcome.kind)
                    break
                if outcome.refresh:
                    await mgr.arefresh_credentials(route.credentials_version)
            await asyncio.sleep(0)  # light traffic: let the receiver and the driver run

    samples: list[dict[str, float | None]] = []
    await mgr.astart()
    try:
        await receiver.start("127.0.0.1", 0, ssl_context=sb.server_ssl_context())
        async with AsyncProxaro(api_key=sb.api_key, base_url=sb.api_url) as api:
            assert receiver.url is not None
            hook = await api.webhooks.create(receiver.url, ["credentials.rotated"])
            assert hook.secret is not None
            receiver.set_secrets(hook.secret)
            before = await _counters(sb)
            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            await asyncio.sleep(spacing)
            for _ in range(rotations):
                version = watch[0] = mgr.credentials_version
                switched.clear()
                received = len(receiver.accepted_at)
                t_call = time.monotonic()
                await api.credentials.rotate()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(switched.wait(), 10)
                await asyncio.sleep(spacing)
                t_recv = (
                    receiver.accepted_at[received] if len(receiver.accepted_at) > received else None
                )
                t_route = next((t for t, v in routes if v > version), None)
                t_2xx = next((t for t, v in answers if v > version), None)
                samples.append(
                    {
                        "delivery_s": _delta(t_call, t_recv),
                        "receipt_to_route_s": _delta(t_recv, t_route),
                        "receipt_to_2xx_s": _delta(t_recv, t_2xx),
                        "call_to_route_s": _delta(t_call, t_route),
                    }
                )
            stop.set()
            await asyncio.gather(*tasks)
            after = await _counters(sb)
    finally:
        stop.set()
        await receiver.close()
        for client in clients.values():
            await client.aclose()
        await mgr.aclose()
    counters = {k: v - before.get(k, 0) for k, v in after.items()}
    return {
        "rotations": rotations,
        # A rotation that never switched leaves None: the figure is then not produced.
        "receipt_to_route_max_s": _summary(max, samples, "receipt_to_route_s"),
        "receipt_to_route_median_s": _summary(statistics.median, samples, "receipt_to_route_s"),
        "receipt_to_2xx_max_s": _summary(max, samples, "receipt_to_2xx_s"),
        "delivery_median_s": _summary(statistics.median, samples, "delivery_s"),
        "samples": samples,
        "failed": len(failures),
        "requests_routed": len(routes),
        "gateway_auth_failed_407s": counters.get("gateway.errors:auth_failed", 0),
        "credentials_api_calls": counters.get("api.requests:GET /v1/credentials", 0),
        "receiver": receiver.stats(),
        "manager": {k: v for k, v in mgr.stats().items() if k in ("rotations", "rotation_events")},
    }


def _summary(fn: Any, samples: list[dict[str, float | None]], key: str) -> float | None:
    values = [s[key] for s in samples]
    if not values or any(v is None for v in values):
        return None
    return round(float(fn(values)), 4)


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 4)


async def _counters(sb: Any) -> dict[str, int]:
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        return dict((await client.get(f"{sb.api_url}/_sandbox/counters")).json())


def run(quick: bool = False, *, rotations: int | None = None, workers: int = 4) -> dict[str, Any]:
    """Rotate ``rotations`` times (quick: 2, full: 8) under light traffic; the latencies."""
    from proxaro_scrape.sandbox import Sandbox

    rotations = rotations or (2 if quick else 8)
    spacing = 0.3 if quick else 0.5
    package_logger = logging.getLogger("proxaro_scrape")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)  # and the caller's level back afterwards
    try:
        with Sandbox(seed=0) as sb:
            # A loop of our own on a thread of our own: the caller may already run one.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                result = pool.submit(
                    asyncio.run, _measure(sb, rotations, workers, spacing)
                ).result()
    finally:
        package_logger.setLevel(level)
    return {
        "figure": "credentials.rotated delivery → the new password in use (webhook, no poll)",
        "goal": "<= 1 s",
        "quick": quick,
        "sandbox": "in-process (the receiver's certificate comes from the sandbox CA)",
        **result,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.webhook``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds (CI smoke)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--rotations", type=int, default=None)
    args = parser.parse_args(argv)
    result = run(args.quick, rotations=args.rotations)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"receipt → new password in use: max {result['receipt_to_route_max_s']} s, median "
        f"{result['receipt_to_route_median_s']} s (goal <= 1 s); receipt → first 2xx with it: "
        f"max {result['receipt_to_2xx_max_s']} s; delivery median {result['delivery_median_s']} "
        f"s; {result['rotations']} rotations, {result['failed']} failed, "
        f"{result['gateway_auth_failed_407s']} 407s"
    )


if __name__ == "__main__":
    main()
