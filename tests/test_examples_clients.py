"""The client-stack examples run as a user would run them, on a fresh machine: no account, so
each starts its own sandbox, and prints the exits it used."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LINE = re.compile(
    r"^(?P<label>.+?)\s+(?P<status>\d{3})\s+exit (?P<ip>\S+) country=(?P<country>\w+)"
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "script", ["httpx_sync.py", "httpx_async.py", "requests_example.py", "aiohttp_example.py"]
)
def test_example_runs_and_prints_its_exits(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXARO_")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=EXAMPLES.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "local sandbox" in done.stdout
    rows = [m.groupdict() for m in map(LINE.match, done.stdout.splitlines()) if m]
    assert rows and all(r["status"] == "200" for r in rows)
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    for country in ("de", "jp"):
        assert by_label[f"country={country}"][0]["country"] == country
    sticky = by_label["sticky cart42"]
    assert len(sticky) == 3 and len({r["ip"] for r in sticky}) == 1
