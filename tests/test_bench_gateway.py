"""Smoke test of the gateway benchmark: the figure is produced (its value is not checked here)."""

from __future__ import annotations

import pytest

from benchmarks.gateway import run


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_gateway_benchmark_produces_the_figure() -> None:
    result = run(quick=True)
    assert result["gateway_rps"] > 0
    assert result["proxy_py_rps"] > 0
    assert isinstance(result["ratio"], float) and result["ratio"] > 0
    assert result["errors"] == {"gateway": 0, "proxy_py": 0}
    assert {"gateway_cpu_us_per_request", "proxy_py_cpu_us_per_request"} <= set(result)
