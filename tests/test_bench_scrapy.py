"""The Scrapy benchmark's arithmetic: per-round ratios against static, medians and spreads, the
whole process apart from the steady window, and the fixed cost (no crawl is run here)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.scrapy import SIDES, _figures


def _crawl(pages: int, measured: int, seconds: float, cpu: float, process_cpu: float) -> Any:
    steady = cpu / measured
    return {
        "pages": pages,
        "measured_pages": measured,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "process_cpu_seconds": process_cpu,
        "process_seconds": 20.0,
        "first_page_s": 3.0,
        "fixed_cpu_seconds": process_cpu - steady * pages,
        "errors": 0,
    }


def _runs() -> dict[str, list[dict[str, Any]]]:
    # static: 1 ms a page steady, 0.5 s fixed; middleware 3 % more a page and 0.1 s more fixed;
    # rotating 1 % more a page.  Three rounds, the middle one a noisy outlier.
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in SIDES}
    for noise in (1.0, 1.5, 1.0):
        for mode, per_page, fixed in (
            ("static", 0.001, 0.5),
            ("middleware", 0.00103, 0.6),
            ("rotating", 0.00101, 0.5),
        ):
            pages = 1000
            cpu = per_page * 900 * (noise if mode == "middleware" else 1.0)
            out[mode].append(_crawl(pages, 900, 9.0, cpu, per_page * pages + fixed))
    return out


def test_ratios_are_medians_of_the_rounds_with_their_spread() -> None:
    r = _figures(_runs(), "paired", 3, 64, None, quick=False)
    # The outlier round moves the spread, not the median.
    assert r["steady_cpu_per_page_ratio"] == pytest.approx(1.03, abs=1e-3)
    assert r["middleware_cpu_ms_per_page_spread"] == pytest.approx([1.03, 1.545], abs=1e-3)
    assert r["rotating_cpu_ms_per_page_ratio"] == pytest.approx(1.01, abs=1e-3)
    assert r["middleware_pages_per_s_ratio"] == pytest.approx(1.0)


def test_the_whole_process_and_the_fixed_cost_are_reported_apart() -> None:
    r = _figures(_runs(), "paired", 3, 64, None, quick=False)
    # Whole process: (1.03 + 0.6) ms a page for the middleware vs (1 + 0.5) for static.
    assert r["cpu_per_page_ratio"] == pytest.approx(1.63 / 1.5, abs=1e-3)
    assert r["static_fixed_cpu_s"] == pytest.approx(0.5, abs=1e-3)
    assert r["middleware_fixed_cpu_extra_s"] == pytest.approx(0.1, abs=1e-3)
    assert r["pages_per_s_ratio"] == pytest.approx(1.0)
    # The goals: CPU above 1.03 over the whole process, and above the peer's.
    assert r["met"] is False
    assert len(r["per_round"]) == 3
    assert set(r["per_round"][0]) == set(SIDES)
