"""One fleet worker process for the fleet tests and benchmark: ``python -m tests._fleet_worker``.

It starts a :class:`~proxaro_scrape.GatewayManager` on the given sandbox API and Redis, prints
``READY`` once started, then does its ``--mode``:

- ``crawl``: fetches ``/product/<id>`` for its share of ``--ids`` (``i % shares == share``)
  through httpx; waits for a line on stdin first when ``--hold`` is given;
- ``ip``: fetches ``/ip`` with the sticky session key ``--session`` (to ``--target``, a
  country, when given);
- ``watch``: waits until its own breakers show ``c:<--country>`` (another worker opened it),
  then routes one request to that country and reports where it went;
- ``idle``: starts and stops.

The last line it prints is one JSON object: what it fetched, its failures, its stats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from proxaro_scrape import GatewayManager, ProxaroError
from proxaro_scrape.integrations.httpx import ProxaroTransport


def main() -> None:
    """Parse the arguments, run the worker, print its JSON report."""
    p = argparse.ArgumentParser()
    p.add_argument("--api-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--site", default="")
    p.add_argument("--mode", default="idle")
    p.add_argument("--ids", default="")
    p.add_argument("--share", type=int, default=0)
    p.add_argument("--shares", type=int, default=1)
    p.add_argument("--session", default="cart42")
    p.add_argument("--country", default="de")
    p.add_argument("--target", default="")
    p.add_argument("--hold", action="store_true")
    args = p.parse_args()
    report: dict[str, Any] = {"ok": [], "failed": [], "mode": args.mode}
    mgr = GatewayManager(args.api_key, args.api_url, redis_url=args.redis or None, max_attempts=8)
    mgr.start()
    print("READY", flush=True)
    try:
        with httpx.Client(transport=ProxaroTransport(mgr), timeout=20) as client:
            if args.hold:
                sys.stdin.readline()
            if args.mode == "crawl":
                ids = [int(x) for x in args.ids.split(",") if x]
                for i, pid in enumerate(ids):
                    if i % args.shares != args.share:
                        continue
                    try:
                        r = client.get(f"{args.site}/product/{pid}")
                        if r.status_code == 200 and "class='name'" in r.text:
                            report["ok"].append(pid)
                        else:
                            report["failed"].append(f"{pid}: {r.status_code}")
                    except (ProxaroError, httpx.HTTPError) as exc:
                        report["failed"].append(f"{pid}: {type(exc).__name__}: {exc}")
            elif args.mode == "ip":
                ext: dict[str, Any] = {"proxaro_session": args.session}
                if args.target:
                    ext["proxaro"] = {"country": args.target}
                report["ip"] = client.get(f"{args.site}/ip", extensions=ext).json()["ip"]
            elif args.mode == "watch":
                key = f"c:{args.country}"
                start = time.monotonic()
                while key not in mgr.breakers() and time.monotonic() - start < 30:
                    time.sleep(0.005)
                report["seen_after"] = time.monotonic() - start
                report["breakers"] = mgr.breakers()
                r = client.get(f"{args.site}/ip", extensions={"proxaro": {"country": args.country}})
                report["went_to"] = r.json().get("country")
        report["stats"] = mgr.stats()
    finally:
        mgr.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
