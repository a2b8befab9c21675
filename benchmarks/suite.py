"""Every benchmark figure of the project in one run: ``python -m benchmarks``.

    python -m benchmarks [--quick] [--json PATH] [--only core,faults]

Each benchmark module (``gateway``, ``core``, ``clients``, ``scrapy``, ``faults``, ``webhook``;
each has ``run(quick) -> dict``) runs in a child process of this one, one after the other, so
that no two measurements share the CPU and one module's threads, loops, reactor or heap never
leak into the next one's figures; the modules start their own sandboxes (in a process of
their own where the client's CPU time is measured).  A module that fails or hangs past its
time limit leaves its figures "not produced" with the reason, and the others still run.

Every figure is a ratio or a count measured side by side in the same run (the integration
against a static proxy URL through the same gateway, the sandbox gateway against proxy.py, a
heap against the same heap at the LRU bound...), never an absolute time compared with a
constant, because the machines this runs on are shared and noisy.  The two exceptions are the
issue's own goals: the per-request decision (a median of microseconds) and the webhook-to-use
latency (a second).

Output: one table (figure, compared with, measured, goal, met?) on stdout, and the same
figures with everything behind them as JSON (``--json``, default ``bench-results.json``).
Exit status: 0 when every figure was produced, 1 when one could not be (a goal missed is
reported in the table, not an error).  ``--quick`` runs the same code with small counts, as a
smoke test that every figure is produced.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import inspect
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks import child_env

__all__ = ["FIGURES", "GROUPS", "Figure", "Group", "main", "run_suite"]

#: Requests in flight for the per-stack throughput figures (the issue's figure).
IN_FLIGHT = 64
#: The heap after every sticky key may be at most this many times the heap at the LRU bound.
MEMORY_BOUND = 1.5


@dataclass(frozen=True)
class Group:
    """One benchmark module, run in a child process: ``module.run(quick, **kwargs)``."""

    name: str
    module: str
    timeout_quick: float
    timeout_full: float
    #: Extra keyword arguments, passed only when the module's ``run`` accepts them.
    quick_kwargs: Mapping[str, Any] = field(default_factory=dict)
    full_kwargs: Mapping[str, Any] = field(default_factory=dict)


GROUPS: tuple[Group, ...] = (
    Group(
        "gateway",
        "benchmarks.gateway",
        90,
        600,
        # The gateway carries every stack's 64 in flight: measured there too.
        quick_kwargs={"concurrency": IN_FLIGHT},
        full_kwargs={"concurrency": IN_FLIGHT},
    ),
    Group("core", "benchmarks.core", 120, 1200),
    Group("clients", "benchmarks.clients", 150, 1800),
    Group(
        "scrapy",
        "benchmarks.scrapy",
        150,
        1800,
        # The issue measures every stack at 64 in flight; quick: the smallest crawl that
        # still gives both sides a ratio.
        quick_kwargs={"concurrency": IN_FLIGHT, "pages": 200, "rounds": 1},
        full_kwargs={"concurrency": IN_FLIGHT},
    ),
    Group("faults", "benchmarks.faults", 120, 900),
    Group("webhook", "benchmarks.webhook", 60, 300),
)

Value = float | int


@dataclass(frozen=True)
class Figure:
    """One row of the table: how to read it from its module's result and judge it."""

    id: str
    group: str
    figure: str
    compared_with: str
    goal: str
    unit: str
    #: The measured number, from the module's result (KeyError/TypeError: not produced).
    value: Callable[[dict[str, Any]], Value]
    #: Does the number meet the goal?  ``None``: a figure to report, with no goal.
    check: Callable[[Value, dict[str, Any]], bool] | None
    #: A few words of context shown beside the number (the two sides, the counts).
    context: Callable[[dict[str, Any]], str] | None = None


def _at_least(goal: float) -> Callable[[Value, dict[str, Any]], bool]:
    return lambda v, _: v >= goal


def _at_most(goal: float) -> Callable[[Value, dict[str, Any]], bool]:
    return lambda v, _: v <= goal


def _stack_value(stack: str, key: str) -> Callable[[dict[str, Any]], Value]:
    def value(r: dict[str, Any]) -> Value:
        return r["stacks"][stack][key]  # type: ignore[no-any-return]

    return value


def _stack_context(
    stack: str, ours: str, static: str, unit: str
) -> Callable[[dict[str, Any]], str]:
    def context(r: dict[str, Any]) -> str:
        f = r["stacks"][stack]
        note = f"; {f['note']}" if f.get("note") else ""
        return f"medians {f[ours]} vs {f[static]} {unit}{note}"

    return context


def _stack_figures() -> list[Figure]:
    out: list[Figure] = []
    scrapy_vs = "the same crawl with a fixed meta['proxy'], same gateway"
    out.append(
        Figure(
            "scrapy.requests_per_s_ratio",
            "scrapy",
            f"requests/s, Scrapy, {IN_FLIGHT} in flight",
            scrapy_vs,
            ">= 0.98",
            "×",
            lambda r: r["pages_per_s_ratio"],
            _at_least(0.98),
            lambda r: (
                f"whole crawls, start-up included: medians {r['middleware_process_pages_per_s']} "
                f"vs {r['static_process_pages_per_s']} pages/s; scrapy-rotating-proxies "
                f"{r['rotating_process_pages_per_s_ratio']}×"
            ),
        )
    )
    labels = {
        "httpx": "httpx (sync)",
        "httpx_async": "httpx (async)",
        "requests": "requests",
        "aiohttp": "aiohttp",
    }
    for stack, label in labels.items():
        out.append(
            Figure(
                f"clients.{stack}.requests_per_s_ratio",
                "clients",
                f"requests/s, {label}, {IN_FLIGHT} in flight",
                "the same client with static targeted proxy URLs (4 countries), same gateway",
                ">= 0.98",
                "×",
                _stack_value(stack, "rps_ratio"),
                _at_least(0.98),
                _stack_context(stack, "rps_proxaro", "rps_static", "req/s"),
            )
        )
    out.append(
        Figure(
            "scrapy.cpu_per_request_ratio",
            "scrapy",
            "client CPU per request, Scrapy",
            scrapy_vs,
            "<= 1.03",
            "×",
            lambda r: r["cpu_per_page_ratio"],
            _at_most(1.03),
            lambda r: (
                f"whole processes: medians {r['middleware_process_cpu_ms_per_page']} vs "
                f"{r['static_process_cpu_ms_per_page']} ms/page (steady window "
                f"{r['steady_cpu_per_page_ratio']}×, fixed cost "
                f"+{r['middleware_fixed_cpu_extra_s']} s); scrapy-rotating-proxies "
                f"{r['rotating_process_cpu_ms_per_page_ratio']}× "
                f"({r['rotating_process_cpu_ms_per_page']} ms/page)"
            ),
        )
    )
    for stack, label in labels.items():
        out.append(
            Figure(
                f"clients.{stack}.cpu_per_request_ratio",
                "clients",
                f"client CPU per request, {label}",
                "the same client with static targeted proxy URLs (4 countries), same gateway",
                "<= 1.03",
                "×",
                _stack_value(stack, "cpu_ratio"),
                _at_most(1.03),
                _stack_context(stack, "cpu_us_proxaro", "cpu_us_static", "µs"),
            )
        )
    return out


def _decision(r: dict[str, Any]) -> Value:
    # The slowest of the decision shapes (rotating, sticky per domain, a dict target), so
    # that no usage pattern hides behind a cheaper one.
    return max(r[f"decision_{s}_median_us"] for s in ("rotating", "sticky_domain", "dict_target"))


def _decision_context(r: dict[str, Any]) -> str:
    parts = [
        f"{s} {r[f'decision_{s}_median_us']}" for s in ("rotating", "sticky_domain", "dict_target")
    ]
    return "slowest shape; " + ", ".join(parts)


def _memory_ratio(r: dict[str, Any]) -> Value:
    return round(r["heap_kib_after_all_keys"] / r["heap_kib_at_lru_size"], 3)


def _memory_bounded(v: Value, r: dict[str, Any]) -> bool:
    return v <= MEMORY_BOUND and r["sessions_held"] <= r["session_lru_size"]


def _per_stack(r: dict[str, Any], scenario: str, key: str) -> str:
    return ", ".join(f"{s} {x[key]}" for s, x in r[scenario].items())


def _worst_connections(r: dict[str, Any]) -> Value:
    return max(s["connections_per_concurrency"] for s in r["stacks"].values())


FIGURES: tuple[Figure, ...] = (
    *_stack_figures(),
    Figure(
        "core.decision_median_us",
        "core",
        "per-request decision in the core (median)",
        "—",
        "<= 10 µs",
        "µs",
        _decision,
        _at_most(10.0),
        _decision_context,
    ),
    Figure(
        "core.api_calls_per_10k",
        "core",
        "API calls per 10,000 routed requests",
        "— (counted by the sandbox)",
        "<= 3",
        "calls",
        lambda r: r["api_calls_per_10k_requests"],
        _at_most(3),
        lambda r: f"{r['api_calls']} calls, {r['routed_requests']} requests",
    ),
    Figure(
        "clients.connections_per_concurrency",
        "clients",
        "gateway connections, plain HTTP, a new target per request",
        f"the concurrency ({IN_FLIGHT})",
        "<= 1.0×",
        "×",
        _worst_connections,
        _at_most(1.0),
        lambda r: (
            "worst stack; "
            + ", ".join(
                f"{s} {x['connections']}/{x['connection_requests']} req"
                for s, x in r["stacks"].items()
            )
        ),
    ),
    Figure(
        "faults.rotation_failed",
        "faults",
        "failed requests across a rotation at full speed",
        f"— (407 path: no webhook; {IN_FLIGHT} in flight)",
        "0",
        "requests",
        lambda r: r["rotation_failed"],
        lambda v, _: v == 0,
        lambda r: (
            f"of {sum(x['requests'] for x in r['rotation'].values())}; "
            f"{r['rotation_auth_failed_407s']} 407s; " + _per_stack(r, "rotation", "failed")
        ),
    ),
    Figure(
        "webhook.receipt_to_use_s",
        "webhook",
        "credentials.rotated delivery → new password in use",
        "— (sandbox in-process: the receiver's cert needs its CA)",
        "<= 1 s",
        "s",
        lambda r: r["receipt_to_route_max_s"],
        _at_most(1.0),
        lambda r: (
            f"slowest of {r['rotations']}; first 2xx {r['receipt_to_2xx_max_s']} s; "
            f"{r['gateway_auth_failed_407s']} 407s"
        ),
    ),
    Figure(
        "faults.region_lost",
        "faults",
        "requests lost when a region dies mid-run",
        "—",
        "0",
        "requests",
        lambda r: r["region_lost"],
        lambda v, _: v == 0,
        lambda r: (
            f"of {sum(x['requests'] for x in r['region'].values())}; "
            + _per_stack(r, "region", "failed")
        ),
    ),
    Figure(
        "faults.region_extra_attempts_per_request",
        "faults",
        "extra attempts per request when a region dies",
        "— (over the whole run)",
        "report it",
        "attempts",
        lambda r: r["region_extra_attempts_per_request"],
        None,
        lambda r: (
            "worst stack; "
            + ", ".join(
                f"{s} {x['extra_attempts']} for {x['requests']} requests"
                for s, x in r["region"].items()
            )
        ),
    ),
    Figure(
        "core.memory_growth",
        "core",
        "heap after every sticky key",
        "the heap at the LRU bound",
        f"bounded (<= {MEMORY_BOUND}×)",
        "×",
        _memory_ratio,
        _memory_bounded,
        lambda r: (
            f"{r['sticky_keys']:,} keys, {r['sessions_held']:,} sessions held "
            f"(LRU {r['session_lru_size']:,}); {r['heap_kib_after_all_keys']} vs "
            f"{r['heap_kib_at_lru_size']} KiB"
        ),
    ),
    Figure(
        "core.rss_growth_mb",
        "core",
        "manager's RSS growth after every sticky key",
        "— (the OS's count, beside the heap ratio)",
        "report it",
        "MB",
        lambda r: r["rss_mb_after_all_keys"],
        None,
        lambda r: (
            f"{r['sticky_keys']:,} keys; +{r['rss_mb_at_lru_size']} MB at the LRU bound "
            f"({r['session_lru_size']:,} keys)"
        ),
    ),
    Figure(
        "gateway.requests_per_s_ratio",
        "gateway",
        "sandbox gateway requests/s",
        "proxy.py, same client and target",
        ">= 1.0",
        "×",
        lambda r: r["ratio"],
        _at_least(1.0),
        lambda r: f"medians {r['gateway_rps']} vs {r['proxy_py_rps']} req/s",
    ),
)


# ---------------------------------------------------------------------------- running


def _run_group(group: Group, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one module's ``run()`` in a child process; its result, or why there is none."""
    timeout = group.timeout_quick if quick else group.timeout_full
    with tempfile.TemporaryDirectory(prefix="proxaro-bench-") as tmp:
        out_path = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "output.log")
        cmd = [sys.executable, "-m", "benchmarks.suite", "--child", group.name]
        cmd += ["--child-out", out_path] + (["--quick"] if quick else [])
        t0 = time.monotonic()
        with open(log_path, "w+", encoding="utf-8", errors="replace") as output:
            # A session of its own, so that a hung module's whole tree (its sandbox, its
            # crawlers) can be stopped together.
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                cmd,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=child_env(),
            )
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
                _stop_tree(proc)
            except BaseException:
                _stop_tree(proc)  # Ctrl+C: leave nothing running behind us
                raise
            else:
                # A module that died (or forgot a crawler) may leave processes in its group,
                # which would load the machine under the next module's measurements.
                _stop_stragglers(proc.pid)
            output.seek(0)
            text = output.read()
        seconds = round(time.monotonic() - t0, 1)
        if code == 0 and os.path.exists(out_path):
            with open(out_path, encoding="utf-8") as fh:
                return {"ok": True, "seconds": seconds, "result": json.load(fh)}
    if code is None:
        error = f"did not finish within {timeout:.0f} s"
    else:
        error = _last_error(text) or f"exited with status {code}"
    log(f"  {group.name}: {error}")
    return {"ok": False, "seconds": seconds, "error": error, "output_tail": text[-3000:]}


def _stop_stragglers(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stop_tree(proc: subprocess.Popen[Any]) -> None:
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            # The leader is gone; its group may not be: finish the stragglers.
            _stop_stragglers(proc.pid)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_error(text: str) -> str | None:
    """The exception line of a traceback at the end of ``text``, if any."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Exit", "Interrupt")) or head == "AssertionError":
            return line[:300]
    return lines[-1][:300] if lines else None


def _child(name: str, quick: bool, out_path: str) -> None:
    """In the child process: run one module and write its result as JSON."""
    group = next(g for g in GROUPS if g.name == name)
    module = importlib.import_module(group.module)
    run = module.run
    wanted = group.quick_kwargs if quick else group.full_kwargs
    accepted = inspect.signature(run).parameters
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    result = run(quick, **kwargs)
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, default=str)


def _evaluate(fig: Figure, module: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": fig.id,
        "figure": fig.figure,
        "compared_with": fig.compared_with,
        "goal": fig.goal,
        "unit": fig.unit,
        "measured": None,
        "met": None,
        "context": None,
        "error": None,
    }
    if module is None:
        row["error"] = "not run"
        return row
    if not module["ok"]:
        row["error"] = f"{fig.group}: {module['error']}"
        return row
    result = module["result"]
    try:
        value = fig.value(result)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        row["error"] = f"{fig.group} gave no {fig.id}: {type(exc).__name__}: {exc}"[:300]
        return row
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        row["error"] = f"{fig.group} gave {value!r} for {fig.id}"
        return row
    row["measured"] = value
    if fig.check is not None:
        row["met"] = bool(fig.check(value, result))
    if fig.context is not None:
        try:
            row["context"] = fig.context(result)
        except (KeyError, TypeError, ValueError):
            row["context"] = None
    return row


def run_suite(
    quick: bool = False,
    only: set[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every group (or those in ``only``); the whole report as a dict."""
    say = log or (lambda _msg: None)
    groups = [g for g in GROUPS if only is None or g.name in only]
    started = _dt.datetime.now(_dt.timezone.utc)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.monotonic()
    modules: dict[str, dict[str, Any]] = {}
    for i, group in enumerate(groups, 1):
        say(f"[{i}/{len(groups)}] {group.name} ({group.module}){' quick' if quick else ''}")
        modules[group.name] = _run_group(group, quick, say)
        say(f"  {group.name}: {modules[group.name]['seconds']} s")
    figures = [_evaluate(f, modules.get(f.group)) for f in FIGURES if f.group in modules]
    return {
        "command": "python -m benchmarks" + (" --quick" if quick else ""),
        "quick": quick,
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load] if load else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "ratios and counts measured side by side in one run, on a shared machine",
        },
        "figures": figures,
        "modules": modules,
    }


# ---------------------------------------------------------------------------- output


def _measured_text(row: dict[str, Any]) -> str:
    value = row["measured"]
    unit = row["unit"]
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and unit != "×"):
        text = f"{int(value):,}" if unit in ("requests", "calls") else f"{value:g}"
    elif unit == "×":
        text = f"{value:.3f}"
    else:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    text = f"{text}{unit}" if unit == "×" else f"{text} {unit}"
    return f"{text} ({row['context']})" if row["context"] else text


def render_table(report: dict[str, Any]) -> Any:
    """The report's figures as one ``rich`` table."""
    from rich.table import Table

    quick = " (quick: a smoke run, not for comparison with the goals)" if report["quick"] else ""
    table = Table(
        title=f"proxaro-scrape benchmarks{quick}",
        caption=(
            f"{report['machine']['cpus']} CPUs, shared; ratios and counts measured side by "
            f"side in one run of {report['seconds']} s"
        ),
        show_lines=False,
    )
    table.add_column("figure", overflow="fold")
    table.add_column("compared with", overflow="fold")
    table.add_column("measured", overflow="fold")
    table.add_column("goal", no_wrap=True)
    table.add_column("met?", no_wrap=True)
    for row in report["figures"]:
        if row["error"]:
            measured, met = f"[red]not produced: {row['error']}[/red]", "[red]error[/red]"
        else:
            measured = _measured_text(row)
            met = {True: "[green]yes[/green]", False: "[bold red]no[/bold red]", None: "—"}[
                row["met"]
            ]
        table.add_row(row["figure"], row["compared_with"], measured, row["goal"], met)
    return table


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks``: run, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run every proxaro-scrape benchmark against the sandbox: one table, one "
        "JSON file.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--json",
        metavar="PATH",
        default="bench-results.json",
        help="where to write the figures (default: bench-results.json)",
    )
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        help="comma-separated modules to run: " + ",".join(g.name for g in GROUPS),
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.quick, args.child_out)
        return 0
    only = None
    if args.only:
        only = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = only - {g.name for g in GROUPS}
        if unknown:
            parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")

    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    report = run_suite(args.quick, only, log=lambda msg: err.print(msg, markup=False))
    # Piped or redirected (CI logs, a README), rich would fold the table into 80 columns
    # unless COLUMNS says otherwise.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    Console(highlight=False, width=width).print(render_table(report))
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, default=str)
        fh.write("\n")
    missing = [row["id"] for row in report["figures"] if row["measured"] is None]
    missed = [row["id"] for row in report["figures"] if row["met"] is False]
    err.print(
        f"{len(report['figures'])} figures: {len(missing)} not produced, {len(missed)} goals "
        f"missed; JSON in {args.json}",
        markup=False,
    )
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
