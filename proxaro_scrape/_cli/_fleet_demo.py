"""``proxaro-scrape demo --fleet N``: N worker processes on one local Proxaro and one local Redis.

It starts ``redis-server`` (no persistence, a temporary directory, a free loopback port) and the
sandbox, then N workers (``python -m proxaro_scrape._cli._fleet_demo``: a GatewayManager with
``redis_url``, httpx through ProxaroTransport), each crawling its share of the demo shop's
products, sticky per site.  The shop bans an exit after a small budget, so the fleet's one
session per site is banned and moved for every worker; a third of the way in, the gateway
password rotates with no grace.  The report shows what the fleet cost the API (start-up and
whole run, credentials calls), the bans and rotations the workers shared, and every product
fetched exactly once.  The API key reaches the workers through their environment, never their
command line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
from rich.table import Table

from proxaro_scrape._cli._common import CommandError, console, err_console

__all__ = ["run_fleet_demo"]

#: Requests an exit may send the shop per minute before it is banned.
SITE_BUDGET = 60


@contextmanager
def _redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise CommandError(
            "--fleet needs redis-server (Debian/Ubuntu: apt-get install redis-server)"
        )
    try:
        import redis  # noqa: F401 - only to say which extra is missing
    except ImportError:
        raise CommandError(
            "--fleet needs the redis extra: pip install 'proxaro-scrape[redis]'"
        ) from None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="proxaro-fleet-demo-") as tmp:
        proc = subprocess.Popen(  # noqa: S603 - redis-server from PATH, fixed arguments
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise CommandError("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _api_calls(sb: Any) -> Counter[str]:
    raw = httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10, trust_env=False).json()
    return Counter(
        {k[len("api.requests:") :]: v for k, v in raw.items() if k.startswith("api.requests:")}
    )


def run_fleet_demo(n: int, *, seed: int, report: str, as_json: bool) -> None:
    """Run the fleet demo with ``n`` workers; raise :class:`CommandError` if anything was lost."""
    from proxaro_scrape.sandbox import Sandbox

    notes = err_console()
    started = time.monotonic()
    with _redis() as redis_url, Sandbox(seed=seed) as sb:
        sb.control("site", budget=SITE_BUDGET, ban_window=60, ban_seconds=600)
        sb.control("grace", seconds=0)
        first, last = httpx.get(f"{sb.site_url}/catalog.json", timeout=30, trust_env=False).json()[
            "product_ids"
        ]
        notes.print(
            f"[bold]Proxaro fleet demo[/]: {n} workers, one Redis ({redis_url}), "
            f"{last - first + 1} products"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXARO_")}
        env.update(
            PROXARO_API_KEY=sb.api_key, PROXARO_BASE_URL=sb.api_url, PROXARO_REDIS_URL=redis_url
        )
        before = _api_calls(sb)
        workers = [
            subprocess.Popen(  # noqa: S603 - this interpreter, this module
                [sys.executable, "-m", "proxaro_scrape._cli._fleet_demo", sb.site_url,
                 str(first), str(last), str(i), str(n)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for i in range(n)
        ]  # fmt: skip
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "READY":
                raise CommandError("a worker could not start (see its error above)")
        at_start = _api_calls(sb) - before
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        # A third of the way in (by the shop's count of product pages): rotate, no grace.
        total = last - first + 1
        while _site_requests(sb) < total // 3 and any(w.poll() is None for w in workers):
            time.sleep(0.05)
        sb.control("rotate")
        reports = [
            json.loads(w.communicate(timeout=600)[0].strip().splitlines()[-1]) for w in workers
        ]
        whole = _api_calls(sb) - before
        fleet = _fleet_counters(redis_url)
    got = Counter(pid for r in reports for pid in r["ok"])
    failed = [f for r in reports for f in r["failed"]]
    data: dict[str, Any] = {
        "workers": n,
        "products": {
            "expected": total,
            "fetched": len(got),
            "duplicates": sum(v - 1 for v in got.values()),
        },
        "failed": failed,
        "api_calls": {
            "at_start": sum(at_start.values()),
            "whole_run": sum(whole.values()),
            "by_endpoint": dict(whole),
        },
        "credentials_calls": whole.get("GET /v1/credentials", 0),
        "fleet": {
            k: fleet.get(k, 0)
            for k in ("bans", "sessions_rotated", "rotations", "breakers_opened", "exits_used")
        },
        "per_worker": [len(r["ok"]) for r in reports],
        "duration_seconds": round(time.monotonic() - started, 1),
    }
    data["ok"] = not failed and len(got) == total and data["products"]["duplicates"] == 0
    Path(report).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(data))
    else:
        _show(data)
    if not data["ok"]:
        raise CommandError(f"the fleet demo lost or repeated products (report: {report})")


def _fleet_counters(url: str) -> dict[str, int]:
    """Every worker's counters added up, as the fleet keeps them in Redis."""
    import redis

    client = redis.Redis.from_url(url)
    out: dict[str, int] = {}
    for key in client.scan_iter("proxaro:*:counters"):
        out = {_text(k): int(v) for k, v in client.hgetall(key).items()}
        out["exits_used"] = int(client.pfcount(_text(key).rsplit(":", 1)[0] + ":exits"))
    out["workers"] = out.get("workers", 0)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _site_requests(sb: Any) -> int:
    raw = httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10, trust_env=False).json()
    return int(raw.get("site.requests", 0))


def _show(data: dict[str, Any]) -> None:
    verdict = "[green]OK[/]" if data["ok"] else "[red]FAILED[/]"
    p, api, fleet = data["products"], data["api_calls"], data["fleet"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(
        "products",
        f"{p['fetched']} of {p['expected']}, {p['duplicates']} twice, {len(data['failed'])} failed",
    )
    grid.add_row("per worker", ", ".join(map(str, data["per_worker"])))
    grid.add_row(
        "API calls",
        f"{api['at_start']} at start for {data['workers']} workers, {api['whole_run']} in all",
    )
    grid.add_row(
        "credentials calls", f"{data['credentials_calls']} (start and one no-grace rotation)"
    )
    grid.add_row(
        "bans shared",
        f"{fleet['bans']} bans, {fleet['sessions_rotated']} session moves, fleet-wide",
    )
    grid.add_row("exits used", str(fleet["exits_used"]))
    console().print(
        f"\n[bold]Proxaro fleet demo[/]: {data['workers']} workers in "
        f"{data['duration_seconds']:g} s — {verdict}"
    )
    console().print(grid)


def _worker() -> None:
    """One worker: crawl ``ids[share::shares]`` after a line on stdin; print a JSON report."""
    from proxaro_scrape import GatewayManager, ProxaroError
    from proxaro_scrape.integrations.httpx import ProxaroTransport

    site, first, last, share, shares = sys.argv[1], *map(int, sys.argv[2:6])
    report: dict[str, Any] = {"ok": [], "failed": []}
    with GatewayManager(sticky="domain", max_attempts=8) as mgr:
        print("READY", flush=True)
        sys.stdin.readline()
        with httpx.Client(transport=ProxaroTransport(mgr), timeout=30) as client:
            for pid in range(first + share, last + 1, shares):
                try:
                    r = client.get(f"{site}/product/{pid}")
                    (report["ok"] if r.status_code == 200 else report["failed"]).append(pid)
                except (ProxaroError, httpx.HTTPError) as exc:
                    report["failed"].append(f"{pid}: {type(exc).__name__}")
        report["stats"] = mgr.stats()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    _worker()
