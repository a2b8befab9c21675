"""Smoke test of the Scrapy benchmark: the figures are produced (whatever their values)."""

from __future__ import annotations

import pytest

from proxaro_scrape.bench import scrapy as bench


@pytest.mark.timeout(170)
def test_the_scrapy_benchmark_produces_its_figures() -> None:
    result = bench.run(quick=True, rounds=1, seconds=1.5)
    assert result["errors"] == {"static": 0, "middleware": 0}
    for key in (
        "pages_per_s_ratio",
        "cpu_per_page_ratio",
        "static_pages_per_s",
        "middleware_pages_per_s",
        "static_cpu_ms_per_page",
        "middleware_cpu_ms_per_page",
    ):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert isinstance(result["met"], bool)
    assert len(result["per_round"]) == 1
    assert result["schedule"] == "paired"


@pytest.mark.timeout(170)
def test_the_alternating_schedule_too() -> None:
    result = bench.run(quick=True, schedule="alternating", rounds=1, pages=60)
    assert result["errors"] == {"static": 0, "middleware": 0}
    assert result["pages_per_s_ratio"] > 0 and result["cpu_per_page_ratio"] > 0
