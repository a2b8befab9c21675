"""Browser pages (scrapy-playwright): a context per route through the middleware, measured.

    python -m benchmarks.browser [--quick] [--json]

Two figures, each measured side by side in one run, against one sandbox (in this process, in
its own thread), with the system Chromium driven by scrapy-playwright in child processes:

- **pages/s ratio**: the same JavaScript-rendered shop pages (``/js/product/<id>``, each
  waited for until its script has built it), targets in three countries, crawled two ways at the
  same time, over the same wall-clock window (whatever else the machine does falls on both):

  - **fixed**: scrapy-playwright alone, with one browser context per country whose ``proxy``
    is the gateway with that country's username, fixed for the crawl (``PLAYWRIGHT_CONTEXTS``,
    ``meta["playwright_context"]``: what a user writes by hand, no Proxaro code);
  - **middleware**: the Proxaro add-on, ``meta["proxaro"] = {"country": ...}``: the middleware
    names a context per route (so one per country here too), observes every navigation and
    retries as every stack does.

  The figure is the median over the rounds of middleware pages/s ÷ fixed pages/s (goal
  >= 0.95).
- **browser memory**: a middleware crawl of ``/ip`` pages with 1,000 distinct session keys
  (a context each, ``PROXARO_PLAYWRIGHT_MAX_CONTEXTS`` = 8) measures the resident memory of the
  browser's processes (the crawler's descendants, from ``/proc``) once the cap is reached and
  again after the last key: a capped crawl's browser must not grow with the keys (the ratio,
  goal <= 1.5), and the most contexts alive at once is reported with it.

``--quick`` runs the same code with small counts (a smoke test that the figures are produced).
Needs scrapy-playwright and a Chromium (``apt-get install chromium``).  :func:`run` is the
entry point of the benchmark suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks import child_env

__all__ = ["run"]

_ME = "benchmarks.browser"
GOAL_PAGES_PER_S = 0.95
GOAL_MEMORY = 1.5
COUNTRIES = ("us", "de", "fr")
MAX_CONTEXTS = 8
#: Seconds from the launch of both crawlers to their window (imports, browser start-up), and
#: the window's length (quick, full).
_LEAD = 20.0
_WINDOW = (10.0, 30.0)
_HANDLER = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"


# ---------------------------------------------------------------------------- the child


def _rss_bytes(root: int) -> int:
    """Resident memory of ``root``'s descendants (the browser's processes), from ``/proc``:
    each process's proportional share (``Pss``: memory shared by Chromium's processes counted
    once in all), or its RSS where the kernel does not give ``smaps_rollup``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total = 0
    todo = list(children.get(root, ()))
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        total += _pss(pid, page)
    return total


def _pss(pid: int, page: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * page
    except OSError:
        return 0


def _child(config: dict[str, Any]) -> None:
    """One crawl in this process; prints one JSON line with its figures."""
    import scrapy
    from scrapy.crawler import AsyncCrawlerProcess

    site: str = config["site_url"]
    mode: str = config["mode"]
    window: list[float] | None = config.get("window")
    keys: int = config.get("keys") or 0
    figures: dict[str, Any] = {"pages": 0, "errors": 0, "rendered": 0}

    page_done = asyncio.Event()

    def done() -> None:
        page_done.set()
        figures["pages"] += 1
        n = figures["pages"]
        if keys:
            if n == 2 * MAX_CONTEXTS:
                figures["rss_at_cap"] = _rss_bytes(os.getpid())
            elif n == keys:
                figures["rss_at_end"] = _rss_bytes(os.getpid())
            return
        now = time.time()
        if window is not None and window[0] <= now <= window[1]:
            figures.setdefault("first", (time.perf_counter(), n))
            figures["last"] = (time.perf_counter(), n)

    class BrowserBench(scrapy.Spider):
        name = "browser_bench"

        async def start(self) -> Any:
            i = 0
            while True:
                if keys:
                    if i >= keys:
                        return
                    url = f"{site}/ip?k={i}"
                    meta: dict[str, Any] = {"playwright": True, "proxaro_session": f"k{i}"}
                else:
                    if window is not None and time.time() > window[1]:
                        return  # the window is over: finish what is in flight, and stop
                    # Keep the scheduler just ahead of the downloader, not a queue of the
                    # whole window's pages that would all be rendered after it.
                    while i - figures["pages"] >= 2 * config["concurrency"]:
                        page_done.clear()
                        await page_done.wait()
                    country = COUNTRIES[i % len(COUNTRIES)]
                    url = f"{site}/js/product/{i % config['products'] + 1}?i={i}"
                    meta = {
                        "playwright": True,
                        "playwright_page_methods": [
                            PageMethod("wait_for_selector", "#app[data-rendered]")
                        ],
                    }
                    if mode == "middleware":
                        meta["proxaro"] = {"country": country}
                    else:
                        meta["playwright_context"] = country
                i += 1
                yield scrapy.Request(url, meta=meta, callback=self.parse, errback=self.failed)

        def parse(self, response: Any) -> Any:
            if keys or response.css("#app::attr(data-rendered)").get() == "true":
                figures["rendered"] += 1
            done()

        def failed(self, failure: Any) -> None:
            figures["errors"] += 1
            done()

    from scrapy_playwright.page import PageMethod

    launch = {"executable_path": config["chromium"], "args": config["chromium_args"]}
    settings: dict[str, Any] = {
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "MEMUSAGE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "CONCURRENT_REQUESTS": config["concurrency"],
        "CONCURRENT_REQUESTS_PER_DOMAIN": config["concurrency"],
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
        "DOWNLOAD_HANDLERS": {"http": _HANDLER, "https": _HANDLER},
        "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        "PLAYWRIGHT_LAUNCH_OPTIONS": launch,
    }
    if mode == "middleware":
        settings["ADDONS"] = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}
        settings["PROXARO_API_KEY"] = config["api_key"]
        settings["PROXARO_BASE_URL"] = config["api_url"]
        settings["PROXARO_PLAYWRIGHT_MAX_CONTEXTS"] = MAX_CONTEXTS
    else:
        settings["PLAYWRIGHT_CONTEXTS"] = {
            country: {"proxy": proxy} for country, proxy in config["proxies"].items()
        }
    process = AsyncCrawlerProcess(settings)
    crawler = process.create_crawler(BrowserBench)
    process.crawl(crawler)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats is not None else {}
    first, last = figures.get("first"), figures.get("last")
    measured = last[1] - first[1] if first and last else 0
    print(
        json.dumps(
            {
                "mode": mode,
                "pages": figures["pages"],
                "rendered": figures["rendered"],
                "errors": figures["errors"],
                "measured_pages": measured,
                "seconds": last[0] - first[0] if first and last and measured else None,
                "rss_at_cap": figures.get("rss_at_cap"),
                "rss_at_end": figures.get("rss_at_end"),
                "contexts_max": stats.get("proxaro/playwright/contexts_max"),
                "contexts": stats.get("proxaro/playwright/contexts"),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------- the parent


def _launch(config: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(  # noqa: S603 - our own module, with our own arguments
        # The config holds the API key and proxy passwords: by stdin, not the command line.
        [sys.executable, "-m", _ME, "--child", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config))
    proc.stdin.close()
    proc.stdin = None
    return proc


def _result(proc: subprocess.Popen[str], mode: str, timeout: float = 900) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"the {mode} crawl did not finish within {timeout:g} s") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-8:])
        raise RuntimeError(f"the {mode} crawl failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def _chromium() -> tuple[str, list[str]]:
    from proxaro_scrape.integrations.playwright import CHROMIUM_ARGS, find_chromium

    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return find_chromium(os.environ.get("PROXARO_CHROMIUM") or None), args


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    keys: int | None = None,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Measure both figures (see the module docstring); returns them with everything behind
    them: ``{"pages_per_s_ratio", "memory_ratio", "rss_mb_at_end", "goals", "met", ...}``."""
    from proxaro_scrape import GatewayManager
    from proxaro_scrape.sandbox import Sandbox

    rounds = rounds or (1 if quick else 5)
    keys = keys or (120 if quick else 1000)
    window = _WINDOW[0 if quick else 1]
    chromium, chromium_args = _chromium()
    with Sandbox(seed=0) as sb:
        # A browser crawl of one site from few exits: no anti-bot budget in the way.
        sb.control("site", budget=1_000_000, ban_window=60, ban_seconds=1)
        with GatewayManager(sb.api_key, sb.api_url) as mgr:
            creds = mgr.credentials
            assert creds is not None
            proxies = {
                c: {
                    "server": creds.gateway_url,
                    "username": f"{creds.username}-country-{c}",
                    "password": creds.password.reveal(),
                }
                for c in COUNTRIES
            }
        base: dict[str, Any] = {
            "site_url": sb.site_url,
            "products": 60,
            "concurrency": concurrency,
            "api_key": sb.api_key,
            "api_url": sb.api_url,
            "chromium": chromium,
            "chromium_args": chromium_args,
        }
        per_round: list[dict[str, Any]] = []
        for n in range(rounds):
            start = time.time() + _LEAD
            span = [start, start + window]
            order = ("middleware", "fixed") if n % 2 == 0 else ("fixed", "middleware")
            procs = {
                mode: _launch({**base, "mode": mode, "window": span, "proxies": proxies})
                for mode in order
            }
            results = {mode: _result(proc, mode) for mode, proc in procs.items()}
            rates = {}
            for mode, r in results.items():
                if not r["seconds"] or not r["measured_pages"]:
                    raise RuntimeError(
                        f"the {mode} crawl answered no page inside its window ({r}): the "
                        f"browsers started too slowly for a lead of {_LEAD:g} s"
                    )
                rates[mode] = r["measured_pages"] / r["seconds"]
            per_round.append(
                {
                    "middleware_pages_per_s": round(rates["middleware"], 2),
                    "fixed_pages_per_s": round(rates["fixed"], 2),
                    "ratio": round(rates["middleware"] / rates["fixed"], 3),
                    "errors": {m: r["errors"] for m, r in results.items()},
                    "rendered": {m: r["rendered"] for m, r in results.items()},
                    "pages": {m: r["pages"] for m, r in results.items()},
                }
            )
        memory = _result(_launch({**base, "mode": "middleware", "keys": keys}), "memory")
    ratio = statistics.median(r["ratio"] for r in per_round)
    at_cap, at_end = memory.get("rss_at_cap"), memory.get("rss_at_end")
    if not at_cap or not at_end:
        raise RuntimeError("the memory crawl did not reach its measuring points")
    memory_ratio = at_end / at_cap
    return {
        "figure": "scrapy-playwright pages/s, middleware / one fixed-proxy context per country",
        "pages_per_s_ratio": round(ratio, 3),
        "middleware_pages_per_s": statistics.median(r["middleware_pages_per_s"] for r in per_round),
        "fixed_pages_per_s": statistics.median(r["fixed_pages_per_s"] for r in per_round),
        "rounds": per_round,
        "window_seconds": window,
        "session_keys": keys,
        "max_contexts": MAX_CONTEXTS,
        "contexts_max": memory.get("contexts_max"),
        "contexts_made": memory.get("contexts"),
        "memory_errors": memory.get("errors"),
        "rss_mb_at_cap": round(at_cap / 2**20, 1),
        "rss_mb_at_end": round(at_end / 2**20, 1),
        "memory_ratio": round(memory_ratio, 3),
        "goals": {"pages_per_s_ratio": GOAL_PAGES_PER_S, "memory_ratio": GOAL_MEMORY},
        "met": {
            "pages_per_s_ratio": ratio >= GOAL_PAGES_PER_S,
            "memory_ratio": memory_ratio <= GOAL_MEMORY,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.browser``: print the figures (``--json``: as JSON)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.browser", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--keys", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(json.loads(sys.stdin.read()))
        return 0
    result = run(args.quick, rounds=args.rounds, keys=args.keys)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"pages/s, middleware / fixed contexts: {result['pages_per_s_ratio']} "
        f"(goal >= {GOAL_PAGES_PER_S}; medians {result['middleware_pages_per_s']} vs "
        f"{result['fixed_pages_per_s']} pages/s over {len(result['rounds'])} round(s))"
    )
    print(
        f"browser memory (PSS) after {result['session_keys']} session keys: "
        f"{result['rss_mb_at_end']} MB, "
        f"{result['memory_ratio']}x the {result['rss_mb_at_cap']} MB at the cap "
        f"(goal <= {GOAL_MEMORY}; at most {result['contexts_max']} contexts alive of "
        f"{result['contexts_made']} made)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
