"""Scrapy through the gateway: a fixed ``meta["proxy"]``, the Proxaro middleware, and
scrapy-rotating-proxies 0.6.2.

    python -m benchmarks.scrapy [--quick] [--json] [--schedule paired|alternating]
    python -m benchmarks.scrapy --instructions      # valgrind: slow, load-proof

The same crawl (product pages of the sandbox demo shop, parsed with CSS selectors, one item
each, 64 in flight) is run three ways against one sandbox, each crawl a process of its own
(a clean reactor, nothing cached from another side), all three through the same gateway with
usernames of the same shape (``user-country-xx``, over four countries):

- **static**: every request carries ``meta["proxy"]`` = one of four targeted gateway URLs
  (one per country), chosen per request, no routing code in the crawler (what a user writes by
  hand);
- **middleware**: the add-on with its default settings, every request targeted per request
  (``meta["proxaro"] = {"country": ...}``, the same four countries): the middleware routes
  every request, classifies every answer and runs its manager beside the crawl;
- **rotating**: scrapy-rotating-proxies 0.6.2 with the four gateway URLs as its proxy list
  (the peer a user would pick instead).

Per crawl and side: pages/s and CPU per page over a **steady window** (the crawler's own
rusage; imports, connections and the manager's first API calls fall before it), and the
**whole process** as the OS counts it (the parent's rusage of the reaped child, start-up and
shutdown included): CPU per page, the **fixed cost** (CPU beyond the pages at the steady rate)
and the time to the first page.  Two schedules:

- ``paired`` (the default): each round launches the three crawls *at the same time*, measures
  them over the same wall-clock window, then stops them: whatever else runs on the machine falls
  on all sides at once, so their ratios hold on a busy shared machine, and the whole-process
  pages/s compare crawls of the same wall time, start-up included.
- ``alternating``: one crawl after the other, order rotating per round, ``pages`` pages each
  (the window starts after the first tenth); good on a quiet machine.

The figures are medians of the per-round ratios (middleware / static, rotating / static) with
their spread ``[min, max]``: **pages/s** (goal >= 0.98) and **CPU per page** (goal <= 1.03, and
never more than scrapy-rotating-proxies).  The sandbox (gateway and shop) runs in this process,
in its own thread; the crawlers never share a process with it.  ``--instructions`` counts
instructions per page under callgrind instead, the figure a loaded machine cannot move.
:func:`run` is what the benchmark suite calls.
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

from benchmarks import child_env, child_python, compile_package

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
    mode: str = config["mode"]
    countries: list[str] = config["countries"]
    # static: one targeted gateway URL per country, the same username shape the middleware
    # sends (``user-country-xx``), chosen per request as a user would write it by hand.
    proxies: list[str] = config.get("proxy_urls") or []
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
                if mode == "static":
                    meta: dict[str, Any] = {"proxy": proxies[i % len(proxies)]}
                elif mode == "middleware":
                    # A per-request target, as a spider writes it.
                    meta = {"proxaro": {"country": countries[i % len(countries)]}}
                else:  # rotating: scrapy-rotating-proxies picks one of its URLs
                    meta = {}
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
    if mode == "middleware":
        settings["ADDONS"] = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}
        settings["PROXARO_API_KEY"] = config["api_key"]
        settings["PROXARO_BASE_URL"] = config["api_url"]
    elif mode == "rotating":
        # scrapy-rotating-proxies 0.6.2 as its README installs it, with the same 4 URLs.
        settings["ROTATING_PROXY_LIST"] = proxies
        settings["DOWNLOADER_MIDDLEWARES"] = {
            "rotating_proxies.middlewares.RotatingProxyMiddleware": 610,
            "rotating_proxies.middlewares.BanDetectionMiddleware": 620,
        }
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
            path: str = config["profile"]
            fh.write(profiler.output_text() if path.endswith(".txt") else profiler.output_html())
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
                "finished_at": time.time(),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------- the parent


def _launch(config: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(  # noqa: S603 - our own module, with our own arguments
        # The config (the API key, a proxy URL with the password) goes in by stdin, not on the
        # command line, where any user of the machine could read it.
        [child_python(), "-m", _ME, "--child", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    proc._launched_at = time.time()  # type: ignore[attr-defined]
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config))
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    return proc


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _result(proc: subprocess.Popen[str], mode: str, timeout: float = 600) -> dict[str, Any]:
    # The whole process's CPU, start-up and exit included, as the OS counts it: the children's
    # rusage grows by exactly this child's when it is reaped (the crawlers are this process's
    # only children, and they are reaped one at a time, here).
    before = _children_cpu()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    process_cpu = _children_cpu() - before
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {mode} crawl failed (exit {proc.returncode}): {err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if not result["measured_pages"]:
        raise RuntimeError(f"the {mode} crawl answered no page inside its window: {err[-2000:]}")
    launched: float = proc._launched_at  # type: ignore[attr-defined]
    result["process_cpu_seconds"] = process_cpu
    result["process_seconds"] = result["finished_at"] - launched
    result["first_page_s"] = (result["first_page_at"] or launched) - launched
    # The fixed cost: what the whole process spent beyond its pages at the steady rate
    # (interpreter, imports, reactor, the manager's first API calls, the shutdown).
    steady = result["cpu_seconds"] / result["measured_pages"]
    result["fixed_cpu_seconds"] = process_cpu - steady * result["pages"]
    return result


def _crawl(config: dict[str, Any]) -> dict[str, Any]:
    return _result(_launch(config), config["mode"])


#: The sides, in the order of the tables: the middleware and the peer, each against static.
SIDES = ("static", "middleware", "rotating")
#: Four countries: the middleware targets one per request, the other sides hold one gateway
#: URL per country with the same username shape.
COUNTRIES = ("us", "de", "gb", "fr")


def _sides(sb: Any, concurrency: int, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "products": len(_catalogue_ids(sb.site_url)),
        "site_url": sb.site_url,
        "concurrency": concurrency,
        "api_key": sb.api_key,
        "api_url": sb.api_url,
        "countries": list(COUNTRIES),
        "settings": settings or {},
    }
    user = sb.world.credentials.username
    urls = [sb.proxy_url(f"{user}-country-{c}") for c in COUNTRIES]
    return {
        "static": {**base, "mode": "static", "proxy_urls": urls},
        "middleware": {**base, "mode": "middleware"},
        "rotating": {**base, "mode": "rotating", "proxy_urls": urls},
    }


def _spread(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(max(values), 3)]


def run(
    quick: bool = False,
    *,
    schedule: str | None = None,
    rounds: int | None = None,
    pages: int | None = None,
    seconds: float | None = None,
    concurrency: int = 64,
    profile: str | None = None,
) -> dict[str, Any]:
    """Crawl the sandbox shop three ways (static ``meta["proxy"]``, the middleware,
    scrapy-rotating-proxies) and compare the last two with the first.

    Each crawl is a process of its own.  ``schedule`` is ``"paired"`` (the three crawls
    launched together and measured over the same ``seconds`` window each round) or
    ``"alternating"`` (one after the other, ``pages`` pages each).  ``quick`` keeps it to a
    few seconds (the figures are produced, whatever their value) and defaults to alternating:
    a smoke run is often on a machine busy with other work, where three crawlers cannot be
    promised to start in time for a shared window; a full run defaults to paired.
    ``profile`` writes a pyinstrument HTML profile of one extra middleware crawl to that path.

    Per side and round: pages/s and CPU per page in the steady window (the crawler's own
    rusage), and the whole process (the OS's rusage of the child, start-up included): CPU per
    page, the fixed cost (CPU beyond the pages at the steady rate) and the first page's time.
    The ratios are medians of the per-round ratios, with their spread ``[min, max]``.
    """
    from proxaro_scrape.sandbox import Sandbox

    schedule = schedule or ("alternating" if quick else "paired")
    if schedule not in ("paired", "alternating"):
        raise ValueError("schedule is 'paired' or 'alternating'")
    load_before = _load()
    rounds = rounds or (2 if quick else 7)
    pages = pages or (300 if quick else 2000)
    seconds = seconds or _PAIRED_WINDOW[0 if quick else 1]
    compile_package(child_python())
    with Sandbox(seed=0) as sb:
        sides = _sides(sb, concurrency)
        # Warm the sandbox (its upstream keep-alive pool, the shop's pages) before measuring,
        # and learn how long a crawler takes to answer its first page on this machine now.
        launched = time.time()
        warm = _crawl({**sides["middleware"], "pages": 60 if quick else 200})
        lead = max(_PAIRED_LEAD, 2.0 * (warm["first_page_at"] - launched) + 2.0)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in SIDES}
        for r in range(rounds):
            order = [sides[m] for m in (SIDES[r % 3 :] + SIDES[: r % 3])]
            if schedule == "paired":
                for attempt in range(2):
                    start = time.time() + lead * (attempt + 1)
                    window = [start, start + seconds]
                    procs = [(c["mode"], _launch({**c, "window": window})) for c in order]
                    try:
                        group = {mode: _result(proc, mode) for mode, proc in procs}
                    except RuntimeError:
                        if attempt:
                            raise
                        continue  # a crawler started too late for the window: once more
                    for mode, figures in group.items():
                        runs[mode].append(figures)
                    break
            else:
                for config in order:
                    runs[config["mode"]].append(_crawl({**config, "pages": pages}))
        if profile:
            _crawl({**sides["middleware"], "pages": pages, "profile": profile})
    return _figures(runs, schedule, rounds, concurrency, load_before, quick)


def _figures(
    runs: dict[str, list[dict[str, Any]]],
    schedule: str,
    rounds: int,
    concurrency: int,
    load_before: float | None,
    quick: bool,
) -> dict[str, Any]:
    def per(m: str, f: Any) -> list[float]:
        return [f(x) for x in runs[m]]

    series: dict[str, dict[str, list[float]]] = {
        m: {
            "pages_per_s": per(m, lambda x: x["measured_pages"] / x["seconds"]),
            "cpu_ms_per_page": per(m, lambda x: 1000 * x["cpu_seconds"] / x["measured_pages"]),
            # Paired: every side runs over the same wall time, start-up included.
            "process_pages_per_s": per(m, lambda x: x["pages"] / x["process_seconds"]),
            "process_cpu_ms_per_page": per(
                m, lambda x: 1000 * x["process_cpu_seconds"] / x["pages"]
            ),
            "fixed_cpu_s": per(m, lambda x: x["fixed_cpu_seconds"]),
            "first_page_s": per(m, lambda x: x["first_page_s"]),
        }
        for m in SIDES
    }
    out: dict[str, Any] = {
        "figure": "Scrapy through the gateway: Proxaro middleware and scrapy-rotating-proxies "
        "vs a fixed meta['proxy']",
        "schedule": schedule,
        "rounds": rounds,
        "pages": sum(x["measured_pages"] for rs in runs.values() for x in rs),
        "concurrency": concurrency,
        "countries": list(COUNTRIES),
    }
    for m in SIDES:
        for key, values in series[m].items():
            out[f"{m}_{key}"] = round(statistics.median(values), 3)
    ratios: dict[str, Any] = {}
    for m in ("middleware", "rotating"):
        for key in (
            "pages_per_s",
            "cpu_ms_per_page",
            "process_pages_per_s",
            "process_cpu_ms_per_page",
        ):
            rs = [a / b for a, b in zip(series[m][key], series["static"][key])]
            ratios[f"{m}_{key}_ratio"] = round(statistics.median(rs), 3)
            ratios[f"{m}_{key}_spread"] = _spread(rs)
        out[f"{m}_fixed_cpu_extra_s"] = round(
            statistics.median(
                a - b for a, b in zip(series[m]["fixed_cpu_s"], series["static"]["fixed_cpu_s"])
            ),
            3,
        )
    out.update(ratios)
    # The headline figures (the suite's rows): the whole crawl, start-up included.
    out["pages_per_s_ratio"] = ratios["middleware_process_pages_per_s_ratio"]
    out["cpu_per_page_ratio"] = ratios["middleware_process_cpu_ms_per_page_ratio"]
    out["steady_cpu_per_page_ratio"] = ratios["middleware_cpu_ms_per_page_ratio"]
    out["goals"] = {
        "pages_per_s_ratio": f">= {GOAL_PAGES_PER_S}",
        "cpu_per_page_ratio": f"<= {GOAL_CPU_PER_PAGE}",
        "cpu_vs_rotating": "middleware CPU per page <= scrapy-rotating-proxies'",
    }
    out["met"] = (
        out["pages_per_s_ratio"] >= GOAL_PAGES_PER_S
        and out["cpu_per_page_ratio"] <= GOAL_CPU_PER_PAGE
        # Each side against the static crawl of its own round, as every other figure here:
        # medians of the absolute values compare crawls of different rounds, which drift.
        and ratios["middleware_process_cpu_ms_per_page_ratio"]
        <= ratios["rotating_process_cpu_ms_per_page_ratio"]
    )
    out["errors"] = {m: sum(x["errors"] for x in rs) for m, rs in runs.items()}
    out["per_round"] = [
        {m: {k: round(v[i], 3) for k, v in series[m].items()} for m in SIDES}
        for i in range(min(len(series[m]["pages_per_s"]) for m in SIDES))
    ]
    # How busy the machine was: the figures mean less the further above the core count.
    out["load_average"] = {"before": load_before, "after": _load(), "cpus": os.cpu_count()}
    out["quick"] = quick
    # Which interpreter the crawlers ran on (PROXARO_BENCH_PYTHON: a lean venv, or this one).
    out["python"] = child_python()
    return out


#: Settings that turn off the work a crawl does per second rather than per page (polls, stats
#: copies, LogStats): under valgrind a crawl lasts minutes, and that work would read as per page.
_NO_TIMED_WORK: dict[str, Any] = {
    "PROXARO_CREDENTIALS_POLL_INTERVAL": 86400,
    "PROXARO_USAGE_POLL_INTERVAL": None,
    "PROXARO_POOL_TTL": None,
    "PROXARO_STATS_INTERVAL": None,
    "LOGSTATS_INTERVAL": 0,
}


def run_instructions(
    pages: tuple[int, int] = (50, 300), concurrency: int = 16, sides: tuple[str, ...] = SIDES
) -> dict[str, Any]:
    """Instructions per page under valgrind (callgrind): a figure the machine's load cannot move.

    Each side (static, middleware, scrapy-rotating-proxies) crawls ``pages[0]`` and then
    ``pages[1]`` pages under ``valgrind --tool=callgrind``; the difference of the instruction
    counts over the difference of the pages is the cost of a page, start-up left out.  Work done
    per second (credential polls, stats copies) is turned off: valgrind stretches a crawl to
    minutes.  Slow (ten minutes and more): an option of the command line, not the suite's.
    ``sides`` picks some of the three (the ratios need ``static``).
    """
    import shutil
    import tempfile

    from proxaro_scrape.sandbox import Sandbox

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed")
    counts: dict[str, list[int]] = {m: [] for m in sides}
    compile_package(child_python())
    with Sandbox(seed=0) as sb, tempfile.TemporaryDirectory(prefix="proxaro-callgrind-") as tmp:
        configs = _sides(sb, concurrency, _NO_TIMED_WORK)
        jobs = []
        for mode in sides:
            for n in pages:
                out = os.path.join(tmp, f"{mode}.{n}")
                proc = subprocess.Popen(  # noqa: S603 - our own module, our own arguments
                    [
                        valgrind,
                        "--tool=callgrind",
                        f"--callgrind-out-file={out}",
                        child_python(),
                        "-m",
                        _ME,
                        "--child",
                        "-",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=child_env(),
                )
                # Every crawl gets its config now, so all run at once: the counts do not depend
                # on what else runs, and the wait is the longest crawl's, not the sum of six.
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({**configs[mode], "pages": n}))
                proc.stdin.close()
                proc.stdin = None
                jobs.append((mode, proc))
        for mode, proc in jobs:
            _, err = proc.communicate(timeout=7200)
            refs = [ln for ln in err.splitlines() if "Collected :" in ln]
            if proc.returncode != 0 or not refs:
                raise RuntimeError(f"the {mode} crawl under valgrind failed: {err[-2000:]}")
            counts[mode].append(int(refs[-1].rsplit(":", 1)[1].strip()))
    per_page = {m: (c[1] - c[0]) / (pages[1] - pages[0]) for m, c in counts.items()}
    if set(sides) != set(SIDES):
        return {
            "instructions_per_page": {m: round(v) for m, v in per_page.items()},
            "counts": counts,
        }
    ratio = per_page["middleware"] / per_page["static"]
    return {
        "figure": "Scrapy: instructions per page, Proxaro middleware and scrapy-rotating-proxies "
        "vs a fixed meta['proxy']",
        **{f"{m}_instructions_per_page": round(per_page[m]) for m in SIDES},
        "instructions_per_page_ratio": round(ratio, 4),
        "rotating_instructions_per_page_ratio": round(per_page["rotating"] / per_page["static"], 4),
        "startup_extra_instructions": counts["middleware"][0] - counts["static"][0],
        "goal": f"<= {GOAL_CPU_PER_PAGE}, and <= scrapy-rotating-proxies",
        "met": ratio <= GOAL_CPU_PER_PAGE and per_page["middleware"] <= per_page["rotating"],
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
    parser.add_argument(
        "--schedule",
        choices=("paired", "alternating"),
        default=None,
        help="default: paired (alternating with --quick)",
    )
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--pages", type=int, default=None, help="per crawl (alternating)")
    parser.add_argument("--seconds", type=float, default=None, help="per window (paired)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", help="write a pyinstrument profile of a middleware crawl")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per page under valgrind instead (slow, immune to machine load)",
    )
    parser.add_argument(
        "--sides", nargs="+", choices=SIDES, default=list(SIDES), help="with --instructions"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(sys.stdin.read() if args.child == "-" else args.child))
        return
    if args.instructions:
        figures = run_instructions(concurrency=args.concurrency, sides=tuple(args.sides))
        if args.json or "figure" not in figures:
            print(json.dumps(figures, indent=2))
        else:
            print(figures["figure"])
            print(
                f"  static {figures['static_instructions_per_page']:,}   middleware "
                f"{figures['middleware_instructions_per_page']:,}   rotating-proxies "
                f"{figures['rotating_instructions_per_page']:,}   ratio "
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
    rows = (
        ("pages/s, whole process", "process_pages_per_s"),
        ("CPU ms/page, whole process", "process_cpu_ms_per_page"),
        ("pages/s, steady window", "pages_per_s"),
        ("CPU ms/page, steady window", "cpu_ms_per_page"),
    )
    print(f"  {'':28}{'static':>9}{'middleware':>12}{'ratio':>7}{'rotating':>10}{'ratio':>7}")
    for label, key in rows:
        print(
            f"  {label:28}{result['static_' + key]:>9}{result['middleware_' + key]:>12}"
            f"{result['middleware_' + key + '_ratio']:>7}{result['rotating_' + key]:>10}"
            f"{result['rotating_' + key + '_ratio']:>7}"
        )
    for label, key in (("fixed CPU s", "fixed_cpu_s"), ("first page s", "first_page_s")):
        print(
            f"  {label:28}{result['static_' + key]:>9}{result['middleware_' + key]:>12}"
            f"{'':>7}{result['rotating_' + key]:>10}"
        )
    print(f"  goals {result['goals']}: met {result['met']}")
    load = result["load_average"]
    print(
        f"  {result['rounds']} rounds, {result['pages']} pages measured, medians of the round "
        f"ratios; errors {result['errors']}; load average {load['before']} → {load['after']} "
        f"on {load['cpus']} CPUs"
    )


if __name__ == "__main__":
    main()
