"""``proxaro-scrape demo``: the whole product on a local Proxaro, with no account and no network.

It starts the sandbox (API, gateway, demo shop), then runs the demo spider that ships with the
package (:mod:`._demo_spider`, a small copy of the example project's ``products`` spider)
in-process (``CrawlerProcess``, asyncio reactor) through the Proxaro middleware, so the demo runs
from an installed wheel in any directory.  Product pages exit in three countries at once (the
spider's Germany plus France and the US per request), sessions are sticky per site, and the shop
bans an exit after a small budget of requests.  Midway the script marks Germany down (the
middleware fails over to a neighbour) and later rotates the gateway password with a one-second
grace (the middleware meets 407s and refreshes once).  A live progress bar runs meanwhile; at the
end a table, a JSON report, and the exit code: non-zero if any page was lost or any secret
appeared in the crawl's log (the log is captured whole, at DEBUG, and scanned for the API key and
every gateway password, old and new).

The core never imports Scrapy: this module imports the demo spider (and through it Scrapy) only
when the command runs, and says which extra to install when Scrapy or the sandbox is missing.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proxaro_scrape._cli._common import CommandError, bar, console, err_console, table

__all__ = ["COMMANDS", "DemoPlan", "scan_for_secrets"]

DEFAULT_REPORT = "proxaro-demo-report.json"


@dataclass(frozen=True)
class DemoPlan:
    """How hard the demo pushes: the shop's anti-bot budget, its slowness, the crawl's width,
    and when (as a fraction of the pages) the region goes down and the password rotates."""

    site_budget: int
    slow_ms: int
    concurrency: int
    down_at: float = 0.3
    rotate_at: float = 0.6
    down_country: str = "de"
    grace_seconds: float = 1.0

    @classmethod
    def for_mode(cls, quick: bool) -> DemoPlan:
        """About half a minute by default; a few seconds with ``--quick``."""
        if quick:
            return cls(site_budget=30, slow_ms=0, concurrency=16)
        return cls(site_budget=30, slow_ms=300, concurrency=4)


def scan_for_secrets(lines: list[str], secrets: list[str]) -> list[int]:
    """Indexes of ``lines`` that contain any of ``secrets`` (empty secrets are ignored)."""
    wanted = [s for s in secrets if s]
    return [i for i, line in enumerate(lines) if any(s in line for s in wanted)]


class _Capture(logging.Handler):
    """Every log record of the crawl, formatted, kept in memory to scan (and maybe save)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self._mutex = threading.Lock()
        self.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a bad record must not stop the crawl
            text = f"[{record.name}] {record.levelname}: (unformattable record)"
        with self._mutex:
            self.lines.extend(text.splitlines() or [""])


@dataclass
class _Scenario:
    """The faults, fired once each as the crawl passes their share of the pages.

    ``on_page`` runs on the reactor's thread for every parsed page; the controls are HTTP calls
    to the sandbox, so they run in a thread of their own and never stall the crawl.
    """

    sandbox: Any
    plan: DemoPlan
    expected: int
    started: float
    progress: Progress
    task: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _fired: set[str] = field(default_factory=set)
    _queue: queue.Queue[Any] = field(default_factory=queue.Queue)
    _worker: threading.Thread | None = None
    _last_stats: float = 0.0

    def on_page(self, spider: Any, response: Any) -> None:
        pages = spider.pages
        self.progress.update(self.task, completed=pages)
        now = time.monotonic()
        if now - self._last_stats > 0.25:
            self._last_stats = now
            self.progress.update(self.task, stats=_live_stats(spider))
        if pages >= self.plan.down_at * self.expected:
            self._fire("region_down", pages, self._region_down)
        if pages >= self.plan.rotate_at * self.expected:
            self._fire("credentials_rotated", pages, self._rotate)
        if pages >= (self.plan.rotate_at + 0.1) * self.expected:
            # A quick crawl may finish inside the grace: end it, so that the old password is
            # refused from here on and the 407 → refresh path surely runs.
            self._fire("grace_over", pages, self._grace_over)

    def _fire(self, name: str, pages: int, action: Callable[[], dict[str, Any]]) -> None:
        if name in self._fired:
            return
        self._fired.add(name)
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="proxaro-demo", daemon=True)
            self._worker.start()
        self._queue.put((name, pages, action))

    def _work(self) -> None:
        # One thread, in order: the grace never ends before the rotation it belongs to.
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, pages, action = item
            try:
                detail = action()
            except Exception as exc:  # noqa: BLE001 - reported, and the demo fails
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            at = round(time.monotonic() - self.started, 1)
            self.events.append({"event": name, "at_page": pages, "at_seconds": at, **detail})
            self.progress.console.print(
                f"  [yellow]▸[/] {_event_text(name, detail)} at page {pages}"
            )

    def _region_down(self) -> dict[str, Any]:
        self.sandbox.control("country", code=self.plan.down_country, pool_health="down")
        return {"country": self.plan.down_country}

    def _rotate(self) -> dict[str, Any]:
        answer = self.sandbox.control("rotate")
        # The new password joins the secrets the log is scanned for.
        self.passwords.append(str(answer.get("password") or ""))
        return {"grace_seconds": self.plan.grace_seconds}

    def _grace_over(self) -> dict[str, Any]:
        self.sandbox.control("grace", seconds=0)
        return {}

    def join(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)


def _event_text(name: str, detail: dict[str, Any]) -> str:
    if name == "region_down":
        return f"region {detail.get('country')} marked down"
    if name == "grace_over":
        return "the old password's grace is over"
    return f"gateway password rotated ({detail.get('grace_seconds'):g} s grace)"


def _live_stats(spider: Any) -> str:
    from proxaro_scrape.integrations.scrapy import ProxaroDownloaderMiddleware

    mw = ProxaroDownloaderMiddleware.of(spider.crawler)
    if mw is None:
        return ""
    s = mw.manager.stats()
    return (
        f"exits {s.get('exits_used', 0)} · bans {s.get('bans', 0)} · "
        f"failovers {s.get('failovers', 0)} · "
        f"refreshes {max(s.get('credential_refreshes', 0) - 1, 0)}"
    )


def _import_crawl() -> Callable[..., Any]:
    """The demo spider's ``crawl`` (which imports Scrapy); a missing extra is one error line."""
    try:
        from proxaro_scrape._cli._demo_spider import crawl
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in ("scrapy", "twisted"):
            raise CommandError(
                'the demo needs Scrapy: pip install "proxaro-scrape[scrapy]"'
            ) from None
        raise
    return crawl


def _sandbox_class() -> Any:
    """:class:`~proxaro_scrape.sandbox.Sandbox`; a missing extra is one error line."""
    try:
        from proxaro_scrape.sandbox import Sandbox
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in ("aiohttp", "trustme"):
            raise CommandError(
                'the demo needs the sandbox: pip install "proxaro-scrape[sandbox]"'
            ) from None
        raise
    return Sandbox


@click.command("demo")
@click.option("--quick", is_flag=True, help="A short run (a few seconds) instead of ~30 s.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True),
    default=DEFAULT_REPORT,
    show_default=True,
    help="Where to write the JSON report.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also save the crawl's full log (DEBUG) here.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sandbox world.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead.")
@click.option(
    "--fleet",
    type=click.IntRange(0, 32),
    default=0,
    help="Run N worker processes sharing one local Redis instead (needs redis-server).",
)
def demo(
    quick: bool,
    report: str,
    log_file: str | None,
    seed: int,
    as_json: bool,
    fleet: int = 0,
) -> None:
    """Crawl a demo shop through a local Proxaro: three countries, a sticky session, bans, a
    region down and a credential rotation midway; nothing lost, no secret in the log."""
    if fleet:
        from proxaro_scrape._cli._fleet_demo import run_fleet_demo

        run_fleet_demo(fleet, seed=seed, report=report, as_json=as_json)
        return
    Sandbox = _sandbox_class()  # noqa: N806 - a class
    crawl = _import_crawl()
    plan = DemoPlan.for_mode(quick)
    notes = err_console()
    capture = _Capture()
    with Sandbox(seed=seed) as sb:
        secrets = [sb.api_key, sb.world.credentials.password]
        sb.control(
            "site",
            budget=plan.site_budget,
            ban_window=60,
            ban_seconds=60,
            slow_ms=plan.slow_ms,
            slow_paths=["/product"],
        )
        sb.control("grace", seconds=plan.grace_seconds)
        catalog = httpx.get(f"{sb.site_url}/catalog.json", timeout=30, trust_env=False).json()
        expected = int(catalog["products"]) + int(catalog["pages"])
        notes.print(
            f"[bold]Proxaro demo[/]: a local Proxaro on loopback (API {sb.api_url}), "
            f"crawling {catalog['products']} products on {catalog['pages']} listing pages "
            f"of the demo shop through the gateway"
        )
        progress = Progress(
            TextColumn("[bold]crawling"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pages"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=notes,
        )
        task = progress.add_task("crawl", total=expected, stats="")
        started = time.monotonic()
        scenario = _Scenario(sb, plan, expected, started, progress, task)
        root = logging.getLogger()
        root.addHandler(capture)
        try:
            with progress:
                result = crawl(
                    sb.site_url,
                    spider_kwargs={"on_page": scenario.on_page},
                    PROXARO_API_KEY=sb.api_key,
                    PROXARO_BASE_URL=sb.api_url,
                    # The log goes to the capture only: the terminal shows the progress bar.
                    LOG_ENABLED=False,
                    LOG_LEVEL="DEBUG",
                    CONCURRENT_REQUESTS=plan.concurrency,
                    CONCURRENT_REQUESTS_PER_DOMAIN=plan.concurrency,
                    PROXARO_STATS_INTERVAL=0.5,
                )
                progress.update(
                    task, completed=result.spider.pages, stats=_live_stats_final(result)
                )
        finally:
            root.removeHandler(capture)
            scenario.join()
        elapsed = time.monotonic() - started
        secrets += scenario.passwords + [sb.world.credentials.password]
    leaks = scan_for_secrets(capture.lines, secrets)
    data = _report(catalog, expected, result, scenario, plan, quick, elapsed, leaks, capture)
    Path(report).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if log_file is not None:
        Path(log_file).write_text("\n".join(capture.lines) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(data))
    else:
        _show(data, report)
    if not data["ok"]:
        problems = "; ".join(data["problems"])
        raise CommandError(f"the demo failed: {problems} (report: {report})")


def _live_stats_final(result: Any) -> str:
    s = result.stats
    return (
        f"exits {s.get('proxaro/exits_used', 0)} · bans {s.get('proxaro/bans', 0)} · "
        f"failovers {s.get('proxaro/failovers', 0)} · "
        f"refreshes {max(s.get('proxaro/credential_refreshes', 0) - 1, 0)}"
    )


def _report(
    catalog: dict[str, Any],
    expected: int,
    result: Any,
    scenario: _Scenario,
    plan: DemoPlan,
    quick: bool,
    elapsed: float,
    leaks: list[int],
    capture: _Capture,
) -> dict[str, Any]:
    summary = result.summary
    stats = {k: v for k, v in result.stats.items() if k.startswith("proxaro/")}
    spider = result.spider
    products_expected = int(catalog["products"])
    missing = sorted(set(range(1, products_expected + 1)) - set(spider.product_ids))
    pages = int(summary["listing_pages"]) + int(summary["product_pages"])
    # A page counts as lost if the crawl parsed fewer pages than the shop has, or if a product
    # never arrived (whatever else was parsed in its place).
    lost = max(expected - pages, len(missing), 0)
    bans = int(stats.get("proxaro/bans", 0))
    fetches = int(stats.get("proxaro/credential_refreshes", 0))
    gave_up = int(stats.get("proxaro/gave_up", 0))
    problems: list[str] = []
    if lost:
        problems.append(f"{lost} page(s) lost")
    if summary["failed"]:
        problems.append(f"{summary['failed']} request(s) failed")
    if leaks:
        problems.append(f"a secret appeared in {len(leaks)} log line(s)")
    if result.reason != "finished":
        problems.append(f"the crawl ended with {result.reason!r}")
    problems += scenario.errors
    return {
        "ok": not problems,
        "problems": problems,
        "mode": "quick" if quick else "full",
        "duration_seconds": round(elapsed, 1),
        "finish_reason": result.reason,
        "expected": {
            "pages": expected,
            "products": products_expected,
            "listing_pages": int(catalog["pages"]),
        },
        "pages": pages,
        "products": int(summary["products"]),
        "listing_pages": int(summary["listing_pages"]),
        "lost": lost,
        "failed": int(summary["failed"]),
        "pages_by_country": dict(
            sorted(summary["pages_by_country"].items(), key=lambda kv: (-kv[1], kv[0]))
        ),
        "exits_used": int(summary["exits_used"]),
        "sticky_sessions": int(stats.get("proxaro/sessions_opened", 0)),
        "sessions_rotated": int(stats.get("proxaro/sessions_rotated", 0)),
        "bans": bans,
        "bans_recovered": max(bans - gave_up, 0) if not summary["failed"] else 0,
        "failovers": int(stats.get("proxaro/failovers", 0)),
        # The manager counts every successful credentials fetch, the one at start included.
        "credential_fetches": fetches,
        "credential_refreshes": max(fetches - 1, 0),
        "rotations": int(stats.get("proxaro/rotations", 0)),
        "retries": int(stats.get("proxaro/retries", 0)),
        "events": sorted(scenario.events, key=lambda e: e["at_page"]),
        "scenario": {
            "site_budget": plan.site_budget,
            "slow_ms": plan.slow_ms,
            "concurrency": plan.concurrency,
            "down_country": plan.down_country,
            "grace_seconds": plan.grace_seconds,
        },
        "log": {"lines": len(capture.lines), "secret_lines": len(leaks)},
        "stats": dict(sorted(stats.items())),
    }


def _show(data: dict[str, Any], report: str) -> None:
    out = console()
    verdict = "[green]OK[/]" if data["ok"] else "[red]FAILED[/]"
    out.print(
        f"\n[bold]Proxaro demo[/]: {data['pages']} of {data['expected']['pages']} pages in "
        f"{data['duration_seconds']:g} s — {verdict}"
    )
    by_country = table("Pages per exit country", "country", "pages:right", "share:right")
    by_country.add_column("", no_wrap=True)
    most = max(data["pages_by_country"].values(), default=0)
    for code, n in data["pages_by_country"].items():
        share = n / data["pages"] if data["pages"] else 0.0
        by_country.add_row(code, str(n), f"{share:.0%}", bar(n / most if most else 0.0, 24))
    events = {e["event"]: e for e in data["events"]}
    down = events.get("region_down")
    rotated = events.get("credentials_rotated")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(
        "pages",
        f"{data['pages']} of {data['expected']['pages']} "
        f"({data['products']} products, {data['listing_pages']} listing pages)",
    )
    grid.add_row("exits used", str(data["exits_used"]))
    grid.add_row(
        "sticky sessions",
        f"{data['sticky_sessions']} opened, {data['sessions_rotated']} moved to a new exit",
    )
    grid.add_row("bans recovered", f"{data['bans_recovered']} of {data['bans']}")
    grid.add_row(
        "failovers",
        f"{data['failovers']}"
        + (f" ({down['country']} marked down at page {down['at_page']})" if down else ""),
    )
    grid.add_row(
        "credential refreshes",
        f"{data['credential_refreshes']} ({data['rotations']} new password taken up"
        + (f"; rotated at page {rotated['at_page']})" if rotated else ")"),
    )
    failed = data["failed"] + data["lost"]
    grid.add_row("failed", f"[{'green' if failed == 0 else 'red'}]{failed}[/]")
    grid.add_row(
        "secrets in log",
        f"{data['log']['secret_lines']} of {data['log']['lines']} lines",
    )
    grid.add_row("report", report)
    out.print(by_country)
    out.print(grid)


COMMANDS = (demo,)
