"""Smoke test of the client-stack benchmark: quick mode produces every figure for every stack
(whether they meet their goals is for the full run to say, on a quiet machine)."""

from __future__ import annotations

import pytest

from proxaro_scrape.bench import clients


@pytest.mark.timeout(170)
def test_quick_run_produces_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    out = clients.run(quick=True)
    assert out["quick"] is True and out["concurrency"] == clients.CONCURRENCY
    assert set(out["stacks"]) == set(clients.STACKS)
    for stack, figures in out["stacks"].items():
        for key in ("rps_static", "rps_proxaro", "cpu_us_static", "cpu_us_proxaro"):
            assert figures[key] > 0, (stack, key)
        assert figures["rps_ratio"] > 0 and figures["cpu_ratio"] > 0
        assert figures["connection_requests"] == 500
        assert figures["connections"] > 0, stack  # <= 64 is asserted by the e2e suite
    printed = capsys.readouterr().out
    assert all(stack in printed for stack in clients.STACKS) and "goals:" in printed
