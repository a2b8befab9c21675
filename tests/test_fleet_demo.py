"""``proxaro-scrape demo --fleet N`` as a user runs it (slow tier): N worker processes, one
local Redis, every product once, the API paid for once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("proxaro-scrape"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fleet_demo_crawls_every_product_once_and_pays_the_api_once(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXARO_", "SCRAPY_"))}
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [EXE, "demo", "--fleet", "3", "--json", "--report", str(report)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data == json.loads(report.read_text())
    assert data["ok"] and data["failed"] == []
    assert data["products"]["fetched"] == data["products"]["expected"]
    assert data["products"]["duplicates"] == 0
    assert data["api_calls"]["at_start"] <= 3  # three workers start for the price of one
    assert data["credentials_calls"] <= 3  # the start, and at most two for the rotation
    assert data["fleet"]["bans"] > 0 and data["fleet"]["sessions_rotated"] > 0
    assert all(n > 0 for n in data["per_worker"])
