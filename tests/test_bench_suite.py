"""The benchmark suite: every figure is produced in quick mode, and a broken module is reported.

The smoke test (slow tier) runs ``python -m benchmarks --quick`` as a user would, from the root
of the clone, in a subprocess, and checks that every figure of the table is present and numeric,
not that it meets its goal (quick counts are too small to compare with the goals, and the
machine is shared).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import ROOT, suite


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_suite_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,  # the benchmarks are run from a clone, not installed
        env={**os.environ, "COLUMNS": "400"},  # no cell folded over two lines
    )
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["quick"] is True
    rows = {row["id"]: row for row in report["figures"]}
    assert set(rows) == {f.id for f in suite.FIGURES}
    for fig in suite.FIGURES:
        row = rows[fig.id]
        assert row["error"] is None, (fig.id, row["error"])
        value = row["measured"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (fig.id, value)
        assert math.isfinite(value), (fig.id, value)
        if fig.check is not None:
            assert isinstance(row["met"], bool), fig.id
        assert fig.figure in proc.stdout  # one table, every figure in it
    for group in suite.GROUPS:
        assert report["modules"][group.name]["ok"], group.name
    # A leaked API key of the sandbox would carry its prefix.
    assert "proxaro_test_" not in proc.stdout + proc.stderr + out.read_text()


def test_a_module_that_fails_leaves_its_figures_unproduced_with_the_reason() -> None:
    said: list[str] = []
    broken = suite.Group("no-such-group", "benchmarks.nothing", 60, 60)
    module = suite._run_group(broken, True, said.append)
    assert module["ok"] is False and "StopIteration" in module["error"]
    assert said and "no-such-group" in said[0]
    fig = next(f for f in suite.FIGURES if f.group == "core")
    row = suite._evaluate(fig, module)
    assert row["measured"] is None and row["met"] is None
    assert row["error"].startswith("core: ")


@pytest.mark.timeout(60)  # the module runs for minutes unless it is stopped
def test_a_module_past_its_time_limit_is_stopped_with_its_whole_tree() -> None:
    webhook = next(g for g in suite.GROUPS if g.name == "webhook")
    module = suite._run_group(dataclasses.replace(webhook, timeout_quick=1.0), True, print)
    assert module["ok"] is False and module["error"] == "did not finish within 1 s"


def test_figures_are_judged_from_the_module_results() -> None:
    by_id = {f.id: f for f in suite.FIGURES}

    def judge(fig_id: str, result: dict[str, Any]) -> dict[str, Any]:
        return suite._evaluate(by_id[fig_id], {"ok": True, "result": result})

    row = judge("gateway.requests_per_s_ratio", {"ratio": 1.2, "gateway_rps": 6, "proxy_py_rps": 5})
    assert (row["measured"], row["met"]) == (1.2, True) and "medians 6 vs 5" in row["context"]
    assert judge("gateway.requests_per_s_ratio", {"ratio": 0.9})["met"] is False
    # A missing key or a non-number is "not produced", never a crash or a pass.
    assert "gave no" in judge("gateway.requests_per_s_ratio", {})["error"]
    assert judge("gateway.requests_per_s_ratio", {"ratio": None})["error"]
    assert judge("gateway.requests_per_s_ratio", {"ratio": float("nan")})["error"]
    memory = {
        "heap_kib_at_lru_size": 100.0,
        "heap_kib_after_all_keys": 120.0,
        "sessions_held": 10,
        "session_lru_size": 10,
        "sticky_keys": 1000,
    }
    assert judge("core.memory_growth", memory)["met"] is True
    assert (
        judge("core.memory_growth", {**memory, "heap_kib_after_all_keys": 1000.0})["met"] is False
    )
    assert judge("core.memory_growth", {**memory, "sessions_held": 11})["met"] is False
    extra = judge(
        "faults.region_extra_attempts_per_request", {"region_extra_attempts_per_request": 0.1}
    )
    assert extra["measured"] == 0.1 and extra["met"] is None  # reported, no goal


def test_exit_status_is_non_zero_only_when_a_figure_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def report(missing: bool) -> dict[str, Any]:
        rows = [suite._evaluate(f, None) for f in suite.FIGURES[:2]]
        for row in rows:
            row.update(error=None, measured=0.5, met=False)  # goals missed: not an error
        if missing:
            rows[1].update(error="core: boom", measured=None, met=None)
        return {
            "quick": True,
            "seconds": 1.0,
            "machine": {"cpus": 2},
            "figures": rows,
            "modules": {},
        }

    out = tmp_path / "r.json"
    monkeypatch.setenv("COLUMNS", "200")  # rich shortens cells to the width it sees
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: report(False))
    assert suite.main(["--quick", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["figures"][0]["met"] is False
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: report(True))
    assert suite.main(["--quick", "--json", str(out)]) == 1
    assert "not produced: core: boom" in capsys.readouterr().out
