"""``proxaro-scrape demo --quick`` as a user runs it: a subprocess (a fresh Twisted reactor),
the sandbox, the demo spider the package ships, in-process, faults midway, and a report.

The same command from a wheel in an empty directory: tests/test_packaging.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxaro_scrape._cli.demo import DemoPlan, _show, scan_for_secrets
from proxaro_scrape.cli import main

EXE = str(Path(sys.executable).with_name("proxaro-scrape"))


def _env() -> dict[str, str]:
    # The demo needs no account: nothing of the caller's configuration may leak in.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROXARO_", "SCRAPY_")) and "proxy" not in k.lower()
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_demo_loses_nothing_through_bans_failover_and_rotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "report.json"
    log_path = tmp_path / "crawl.log"
    proc = subprocess.run(
        [
            EXE,
            "demo",
            "--quick",
            "--json",
            "--report",
            str(report_path),
            "--log-file",
            str(log_path),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # --json: the report, and nothing else, on stdout; the same as the file.
    report = json.loads(proc.stdout)
    assert report == json.loads(report_path.read_text())
    assert report["ok"] is True and report["problems"] == []
    assert report["mode"] == "quick" and report["finish_reason"] == "finished"
    # Every page of the shop, each product once.
    expected = report["expected"]
    assert report["pages"] == expected["pages"] == expected["products"] + expected["listing_pages"]
    assert report["products"] == expected["products"]
    assert report["lost"] == 0 and report["failed"] == 0
    assert sum(report["pages_by_country"].values()) == report["pages"]
    # Three countries at once, and de's pages moved to a neighbour once it went down.
    countries = set(report["pages_by_country"])
    assert {"de", "fr", "us"} <= countries and len(countries) >= 4
    events = {e["event"]: e for e in report["events"]}
    assert events["region_down"]["country"] == "de"
    assert events["region_down"]["at_page"] < events["credentials_rotated"]["at_page"]
    assert report["failovers"] >= 1
    # Sticky sessions, bans met and recovered from.
    assert report["sticky_sessions"] >= 1 and report["exits_used"] >= 3
    assert report["bans"] >= 1 and report["bans_recovered"] == report["bans"]
    # The rotation was picked up: a refresh after the initial fetch, one new password in use.
    assert report["rotations"] == 1 and report["credential_refreshes"] >= 1
    assert report["credential_fetches"] == report["credential_refreshes"] + 1
    assert report["stats"]["proxaro/outcomes/stale_credentials"] >= 1
    assert report["stats"].get("proxaro/gave_up", 0) == 0
    # The log was captured whole and held no secret.
    assert report["log"]["secret_lines"] == 0
    lines = log_path.read_text().splitlines()
    assert len(lines) == report["log"]["lines"] > 100
    assert any("proxaro_scrape" in line for line in lines)
    assert not re.search(r"proxaro_(test|live)_[0-9a-f]{32}", log_path.read_text())
    # The table a user sees at the end, from the same report.
    _show(report, str(report_path))
    table = capsys.readouterr().out
    assert "OK" in table and f"{report['pages']} of {expected['pages']}" in table
    assert "de marked down" in table and "failed" in table and "secrets in log" in table


def test_the_plans_differ_only_in_pace() -> None:
    quick, full = DemoPlan.for_mode(True), DemoPlan.for_mode(False)
    assert quick.slow_ms == 0 < full.slow_ms
    assert quick.down_at < quick.rotate_at < 1 and full.down_at < full.rotate_at < 1


def test_scan_for_secrets_finds_every_line_with_any_secret() -> None:
    lines = ["clean", "key proxaro_test_abc here", "pw tN3Jx9 leaked", "clean again"]
    assert scan_for_secrets(lines, ["proxaro_test_abc", "tN3Jx9", ""]) == [1, 2]
    assert scan_for_secrets(lines, []) == []


def test_demo_without_scrapy_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if Scrapy were not installed: `import scrapy` fails, and the demo spider (which
    # imports it) is imported afresh.
    monkeypatch.setitem(sys.modules, "scrapy", None)
    monkeypatch.delitem(sys.modules, "proxaro_scrape._cli._demo_spider", raising=False)
    result = CliRunner().invoke(main, ["demo", "--quick"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        'Error: the demo needs Scrapy: pip install "proxaro-scrape[scrapy]"'
    ]
