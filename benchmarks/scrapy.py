"""Scrapy through the gateway: a fixed ``meta["proxy"]`` versus the Proxaro middleware.

    python -m benchmarks.scrapy [--quick] [--json] [--schedule paired|alternating]
    python -m benchmarks.scrapy --instructions      # valgrind: slow, load-proof

The same crawl (product pages of the sandbox demo shop, parsed with CSS selectors, one item
each) is run two ways against one sandbox, each in a fresh subprocess (a clean reactor, nothing
cached from the other side):

- **static**: every request carries ``meta["proxy"]`` = the gateway URL with the credentials,
  fixed for the whole crawl, no Proxaro code in the crawler (what a user writes by hand);
- **middleware**: the add-on with its default settings (rotating exits, like the static URL's
  untargeted username), so the middleware routes every request, classifies every answer and
  runs its manager (credential polls, stats copies) beside the crawl.

Per crawl: pages/s, and CPU seconds of the crawling process (``resource.getrusage``) per page,
both over a measuring window that leaves out the start (imports, connections, the manager's
first API calls and ASN prefetch: one-time costs, not per page).  Two schedules:

- ``paired`` (the default): each round starts both crawls *at the same time* and measures
  both over the same wall-clock window, then stops them.  Whatever else runs on the machine
  falls on both sides at once, so their ratio holds on a busy shared machine, where two crawls
  minutes apart can differ by a factor of two.
- ``alternating``: one crawl after the other, order alternating per round, ``pages`` pages
  each (the window starts after the first tenth); good on a quiet machine.

The figures are the medians of the per-round ratios: **pages/s ratio** (middleware / static,
goal >= 0.98) and **CPU per page ratio** (middleware / static, goal <= 1.03), with each side's
median pages/s and CPU ms per page and the machine's load average beside them.  The sandbox
(gateway and shop) runs in this process, in its own thread; the crawlers never share a process
with it.  :func:`run` is what the benchmark suite calls.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks import child_env

__all__ = ["run", "run_instructions"]

_ME = "benchmarks.scrapy"
GOAL_PAGES_PER_S = 0.98
GOAL_CPU_PER_PAGE = 1.03
#: Paired rounds: seconds from the launch of both crawlers to the start of the window (their
#: imports and first connections happen before it), and the window's length.
_PAIRED_LEAD = 6.0
_PAIRED_WINDOW = (3.0, 10.0)  # quick, full


# ---------------------------------------------------------------------------- the child


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(config: dict[str, Any]) -> None:
    """One crawl in this process; prints one JSON line with its figures.

    With ``window`` ``[start, end]`` (epoch seconds) the crawl requests pages until the window
    is over and measures the pages answered inside it; otherwise it crawls ``pages`` pages and
    measures from the first tenth to the last.
    """
    import scrapy
    from scrapy.crawler import AsyncCrawlerProcess

    products: int = config["products"]
    site: str = config["site_url"]
    proxy: str | None = config.get("proxy_url")
    window: list[float] | None = config.get("window")
    pages: int = config.get("pages") or 10**7
    warmup = max(1, pages // 10)
    figures: dict[str, Any] = {"pages": 0, "errors": 0}

    def done() -> None:
        figures["pages"] += 1
        if figures["pages"] == 1:
            figures["first_page_at"] = time.time()
        if window is None:
            if figures["pages"] == warmup:
                figures["first"] = (time.perf_counter(), _cpu(), figures["pages"])
            elif figures["pages"] == pages:
                figures["last"] = (time.perf_counter(), _cpu(), figures["pages"])
            return
        now = time.time()
        if now < window[0]:
            return
        if now <= window[1]:
            mark = (time.perf_counter(), _cpu(), figures["pages"])
            figures.setdefault("first", mark)
            figures["last"] = mark

    class BenchSpider(scrapy.Spider):
        name = "bench"

        async def start(self) -> Any:
            for i in range(pages):
                if window is not None and time.time() > window[1]:
                    return  # the window is over: finish what is in flight, and stop
                meta = {"proxy": proxy} if proxy else {}
                yield scrapy.Request(
                    f"{site}/product/{i % products + 1}?i={i}",
                    meta=meta,
                    callback=self.parse,
                    errback=self.failed,
                )

        def parse(self, response: Any) -> Any:
            yield {
                "name": response.css("h1.name::text").get(),
                "price": response.css("span.price::text").get(),
                "exit": response.headers.get("X-Proxaro-Exit-IP"),
            }
            done()

        def failed(self, failure: Any) -> None:
            figures["errors"] += 1
            done()

    settings: dict[str, Any] = {
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "MEMUSAGE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "CONCURRENT_REQUESTS": config["concurrency"],
        "CONCURRENT_REQUESTS_PER_DOMAIN": config["concurrency"],
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
    }
    if config["mode"] == "middleware":
        settings["ADDONS"] = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}
        settings["PROXARO_API_KEY"] = config["api_key"]
        settings["PROXARO_BASE_URL"] = config["api_url"]
    settings.update(config.get("settings") or {})
    process = AsyncCrawlerProcess(settings)
    process.crawl(BenchSpider)
    profiler: Any = None
    if config.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled")
        profiler.start()
    process.start()
    if profiler is not None:
        profiler.stop()
        with open(config["profile"], "w", encoding="utf-8") as fh:
            fh.write(profiler.output_html())
    first: tuple[float, float, int] | None = figures.get("first")
    last: tuple[float, float, int] | None = figures.get("last")
    measured = (last[2] - first[2]) if first is not None and last is not None else 0
    print(
        json.dumps(
            {
                "mode": config["mode"],
                "pages": figures["pages"],
                "measured_pages": measured,
                "errors": figures["errors"],
                "seconds": (last[0] - first[0]) if first and last and measured else None,
                "cpu_seconds": (last[1] - first[1]) if first and last and measured else None,
                "first_page_at": figures.get("first_page_at"),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------- the parent


def _launch(config: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(  # noqa: S603 - our own module, with our own arguments
        # The config (the API key, a proxy URL with the password) goes in by stdin, not on the
        # command line, where any user of the machine could read it.
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
    proc.stdin = None  # communicate() must not touch it again
    return proc


def _result(proc: subprocess.Popen[str], mode: str, timeout: float = 600) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {mode} crawl failed (exit {proc.returncode}): {err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if not result["measured_pages"]:
        raise RuntimeError(f"the {mode} crawl answered no page inside its window: {err[-2000:]}")
    return result


def _crawl(config: dict[str, Any]) -> dict[str, Any]:
    return _result(_launch(config), config["mode"])


def run(
    quick: bool = False,
    *,
    schedule: str = "paired",
    rounds: int | None = None,
    pages: int | None = None,
    seconds: float | None = None,
    concurrency: int = 16,
    profile: str | None = None,
) -> dict[str, Any]:
    """Crawl the sandbox shop with a fixed ``meta["proxy"]`` and with the middleware; compare.

    ``schedule`` is ``"paired"`` (both crawls at once, ``seconds`` measured each round) or
    ``"alternating"`` (one after the other, ``pages`` pages each).  ``quick`` keeps it to a
    few seconds (the figures are produced, whatever their value); the full run takes about a
    minute and a half.  ``profile`` writes a pyinstrument HTML profile of one extra middleware
    crawl to that path.

    Returns ``{"figure", "pages_per_s_ratio", "cpu_per_page_ratio", "goals", "met", ...}``
    with each side's median pages/s and CPU milliseconds per page, and every round.
    """
    from proxaro_scrape.sandbox import Sandbox

    if schedule not in ("paired", "alternating"):
        raise ValueError("schedule is 'paired' or 'alternating'")
    load_before = _load()
    rounds = rounds or (2 if quick else 6)
    pages = pages or (300 if quick else 1500)
    seconds = seconds or _PAIRED_WINDOW[0 if quick else 1]
    with Sandbox(seed=0) as sb:
        base: dict[str, Any] = {
            "products": len(_catalogue_ids(sb.site_url)),
            "site_url": sb.site_url,
            "concurrency": concurrency,
            "api_key": sb.api_key,
            "api_url": sb.api_url,
        }
        static: dict[str, Any] = {**base, "mode": "static", "proxy_url": sb.proxy_url()}
        middleware: dict[str, Any] = {**base, "mode": "middleware"}
        # Warm the sandbox (its upstream keep-alive pool, the shop's pages) before measuring,
        # and learn how long a crawler takes to answer its first page on this machine now.
        launched = time.time()
        warm = _crawl({**middleware, "pages": 60 if quick else 200})
        lead = max(_PAIRED_LEAD, 2.0 * (warm["first_page_at"] - launched) + 2.0)
        runs: dict[str, list[dict[str, Any]]] = {"static": [], "middleware": []}
        for r in range(rounds):
            order = (static, middleware) if r % 2 == 0 else (middleware, static)
            if schedule == "paired":
                for attempt in range(2):
                    start = time.time() + lead * (attempt + 1)
                    window = [start, start + seconds]
                    procs = [(c["mode"], _launch({**c, "window": window})) for c in order]
                    try:
                        pair = {mode: _result(proc, mode) for mode, proc in procs}
                    except RuntimeError:
                        if attempt:
                            raise
                        continue  # a crawler started too late for the window: once more
                    for mode, figures in pair.items():
                        runs[mode].append(figures)
                    break
            else:
                for config in order:
                    runs[config["mode"]].append(_crawl({**config, "pages": pages}))
        if profile:
            _crawl({**middleware, "pages": pages, "profile": profile})
    pps = {m: [x["measured_pages"] / x["seconds"] for x in rs] for m, rs in runs.items()}
    cpp = {m: [x["cpu_seconds"] / x["measured_pages"] for x in rs] for m, rs in runs.items()}
    pps_ratios = [mw / st for mw, st in zip(pps["middleware"], pps["static"])]
    cpu_ratios = [mw / st for mw, st in zip(cpp["middleware"], cpp["static"])]
    pps_ratio = statistics.median(pps_ratios)
    cpu_ratio = statistics.median(cpu_ratios)
    return {
        "figure": "Scrapy through the gateway: Proxaro middleware vs a fixed meta['proxy']",
        "schedule": schedule,
        "rounds": rounds,
        "pages": sum(x["measured_pages"] for rs in runs.values() for x in rs),
        "concurrency": concurrency,
        "static_pages_per_s": round(statistics.median(pps["static"]), 1),
        "middleware_pages_per_s": round(statistics.median(pps["middleware"]), 1),
        "pages_per_s_ratio": round(pps_ratio, 3),
        "static_cpu_ms_per_page": round(statistics.median(cpp["static"]) * 1000, 3),
        "middleware_cpu_ms_per_page": round(statistics.median(cpp["middleware"]) * 1000, 3),
        "cpu_per_page_ratio": round(cpu_ratio, 3),
        "goals": {
            "pages_per_s_ratio": f">= {GOAL_PAGES_PER_S}",
            "cpu_per_page_ratio": f"<= {GOAL_CPU_PER_PAGE}",
        },
        "met": pps_ratio >= GOAL_PAGES_PER_S and cpu_ratio <= GOAL_CPU_PER_PAGE,
        "errors": {m: sum(x["errors"] for x in rs) for m, rs in runs.items()},
        "per_round": [
            {
                "static_pages_per_s": round(st, 1),
                "middleware_pages_per_s": round(mw, 1),
                "static_cpu_ms_per_page": round(cst * 1000, 3),
                "middleware_cpu_ms_per_page": round(cmw * 1000, 3),
            }
            for st, mw, cst, cmw in zip(
                pps["static"], pps["middleware"], cpp["static"], cpp["middleware"]
            )
        ],
        # How busy the machine was: the figures mean less the further above the core count.
        "load_average": {"before": load_before, "after": _load(), "cpus": os.cpu_count()},
        "quick": quick,
    }


#: Settings that turn off the work a crawl does per second rather than per page (polls, stats
#: copies, LogStats): under valgrind a crawl lasts minutes, and that work would read as per page.
_NO_TIMED_WORK: dict[str, Any] = {
    "PROXARO_CREDENTIALS_POLL_INTERVAL": 86400,
    "PROXARO_USAGE_POLL_INTERVAL": None,
    "PROXARO_POOL_TTL": None,
    "PROXARO_STATS_INTERVAL": None,
    "LOGSTATS_INTERVAL": 0,
}


def run_instructions(pages: tuple[int, int] = (50, 300), concurrency: int = 16) -> dict[str, Any]:
    """Instructions per page under valgrind (callgrind): a figure the machine's load cannot move.

    Each side crawls ``pages[0]`` and then ``pages[1]`` pages under ``valgrind
    --tool=callgrind``; the difference of the instruction counts over the difference of the
    pages is the cost of a page, start-up left out.  Work done per second (credential polls,
    stats copies) is turned off on both sides: valgrind stretches a crawl to minutes.  Slow
    (about ten minutes): an option of the command line, not part of the suite.
    """
    import shutil
    import tempfile

    from proxaro_scrape.sandbox import Sandbox

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed")
    counts: dict[str, list[int]] = {"static": [], "middleware": []}
    with Sandbox(seed=0) as sb, tempfile.TemporaryDirectory(prefix="proxaro-callgrind-") as tmp:
        base: dict[str, Any] = {
            "products": len(_catalogue_ids(sb.site_url)),
            "site_url": sb.site_url,
            "concurrency": concurrency,
            "api_key": sb.api_key,
            "api_url": sb.api_url,
            "settings": _NO_TIMED_WORK,
        }
        sides = {"static": {**base, "proxy_url": sb.proxy_url()}, "middleware": base}
        for mode, config in sides.items():
            for n in pages:
                out = os.path.join(tmp, f"{mode}.{n}")
                proc = subprocess.run(  # noqa: S603 - our own module, with our own arguments
                    [
                        valgrind,
                        "--tool=callgrind",
                        f"--callgrind-out-file={out}",
                        sys.executable,
                        "-m",
                        _ME,
                        "--child",
                        "-",
                    ],
                    input=json.dumps({**config, "mode": mode, "pages": n}),
                    capture_output=True,
                    text=True,
                    timeout=3600,
                    env=child_env(),
                )
                refs = [ln for ln in proc.stderr.splitlines() if "Collected :" in ln]
                if proc.returncode != 0 or not refs:
                    raise RuntimeError(
                        f"the {mode} crawl under valgrind failed: {proc.stderr[-2000:]}"
                    )
                counts[mode].append(int(refs[-1].rsplit(":", 1)[1].strip()))
    per_page = {m: (c[1] - c[0]) / (pages[1] - pages[0]) for m, c in counts.items()}
    ratio = per_page["middleware"] / per_page["static"]
    return {
        "figure": "Scrapy: instructions per page, Proxaro middleware vs a fixed meta['proxy']",
        "static_instructions_per_page": round(per_page["static"]),
        "middleware_instructions_per_page": round(per_page["middleware"]),
        "instructions_per_page_ratio": round(ratio, 4),
        "startup_extra_instructions": counts["middleware"][0] - counts["static"][0],
        "goal": f"<= {GOAL_CPU_PER_PAGE}",
        "met": ratio <= GOAL_CPU_PER_PAGE,
        "pages": list(pages),
        "counts": counts,
    }


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        return None


def _catalogue_ids(site_url: str) -> range:
    import httpx

    info = httpx.get(f"{site_url}/catalog.json", timeout=10).json()
    return range(1, int(info["products"]) + 1)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.scrapy``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds (CI smoke)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--schedule", choices=("paired", "alternating"), default="paired")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--pages", type=int, default=None, help="per crawl (alternating)")
    parser.add_argument("--seconds", type=float, default=None, help="per window (paired)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", help="write a pyinstrument profile of a middleware crawl")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per page under valgrind instead (slow, immune to machine load)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(sys.stdin.read() if args.child == "-" else args.child))
        return
    if args.instructions:
        figures = run_instructions(concurrency=args.concurrency)
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(figures["figure"])
            print(
                f"  static {figures['static_instructions_per_page']:,}   middleware "
                f"{figures['middleware_instructions_per_page']:,}   ratio "
                f"{figures['instructions_per_page_ratio']:.4f} (goal {figures['goal']}); "
                f"start-up: {figures['startup_extra_instructions']:,} more, once"
            )
        return
    result = run(
        args.quick,
        schedule=args.schedule,
        rounds=args.rounds,
        pages=args.pages,
        seconds=args.seconds,
        concurrency=args.concurrency,
        profile=args.profile,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['figure']} ({result['schedule']} rounds)")
    print(
        f"  pages/s      static {result['static_pages_per_s']:>8}   "
        f"middleware {result['middleware_pages_per_s']:>8}   "
        f"ratio {result['pages_per_s_ratio']:.3f} (goal {result['goals']['pages_per_s_ratio']})"
    )
    print(
        f"  CPU ms/page  static {result['static_cpu_ms_per_page']:>8}   "
        f"middleware {result['middleware_cpu_ms_per_page']:>8}   "
        f"ratio {result['cpu_per_page_ratio']:.3f} (goal {result['goals']['cpu_per_page_ratio']})"
    )
    load = result["load_average"]
    print(
        f"  {result['rounds']} rounds, {result['pages']} pages measured, medians of the round "
        f"ratios; errors {result['errors']}; load average {load['before']} → {load['after']} "
        f"on {load['cpus']} CPUs"
    )


if __name__ == "__main__":
    main()
