"""The gateway core benchmark produces its figures (a smoke run; figures, not assertions)."""

from __future__ import annotations

import pytest

from proxaro_scrape.bench import core


@pytest.mark.timeout(170)
def test_quick_benchmark_produces_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    result = core.run(quick=True)
    for shape in ("rotating", "sticky_domain", "dict_target", "with_observe"):
        assert result[f"decision_{shape}_median_us"] > 0
    assert result["routed_requests"] == 1_000 and result["routed_failed"] == 0
    assert result["api_calls_per_10k_requests"] >= 0
    assert result["sessions_held"] == result["session_lru_size"]
    out = capsys.readouterr().out
    assert "per-request decision" in out and "API calls per 10,000" in out and "memory" in out
