"""Issue 16 C: a wrong PROXARO_* setting under ``scrapy crawl``, as a new user meets it.

The example project, copied with an invalid ``PROXARO_TARGET`` in its ``settings.py``: one error
line naming the setting, the spider closed with ``proxaro_config`` before anything was sent,
``scrapy crawl`` exiting non-zero, and no traceback (no asyncio "Task exception was never
retrieved").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxaro_scrape.sandbox import Sandbox

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scrapy_shop"


def _run(sb: Sandbox, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PROXARO_API_KEY=sb.api_key, PROXARO_BASE_URL=sb.api_url)
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "products", "-a", f"site_url={sb.site_url}"]
        + list(args),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy(tmp_path: Path, extra_settings: str = "") -> Path:
    project = tmp_path / "scrapy_shop"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.jl*"))
    if extra_settings:
        with (project / "shop" / "settings.py").open("a") as f:
            f.write("\n" + extra_settings + "\n")
    return project


@pytest.mark.parametrize(
    ("extra", "args", "named"),
    [
        ('PROXARO_TARGET = {"country": "USA"}', (), "PROXARO_TARGET"),
        ("PROXARO_MAX_ATTEMPTS = 0", (), "PROXARO_MAX_ATTEMPTS"),
        ('PROXARO_BAN_STATUS_CODES = ["403"]', (), "PROXARO_BAN_STATUS_CODES"),
        ("", ("-a", "country=zz"), "proxaro_target"),  # the spider's own target, not in the pool
    ],
)
def test_a_wrong_setting_is_one_line_a_close_reason_and_a_failed_exit(
    sandbox: Sandbox, tmp_path: Path, extra: str, args: tuple[str, ...], named: str
) -> None:
    proc = _run(sandbox, _copy(tmp_path, extra), *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    errors = [line for line in out.splitlines() if "] ERROR: " in line]
    assert len(errors) == 1, errors
    assert named in errors[0]
    assert "'finish_reason': 'proxaro_config'" in out
    assert "Traceback" not in out and "Task exception was never retrieved" not in out
    assert sandbox.world.counters["gateway.connections"] == 0
    assert sandbox.world.counters["site.requests"] == 0
    assert sandbox.api_key not in out


def test_a_good_crawl_still_exits_zero(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "items.jsonl"
    proc = _run(sandbox, _copy(tmp_path), "-O", str(out), "-s", "LOG_LEVEL=INFO")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "'finish_reason': 'finished'" in proc.stderr
