"""The example Scrapy project, as a user runs it: ``scrapy crawl products`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from proxaro_scrape.sandbox import Sandbox

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scrapy_shop"


def _env(sb: Sandbox) -> dict[str, str]:
    env = dict(os.environ)
    env["PROXARO_API_KEY"] = sb.api_key
    env["PROXARO_BASE_URL"] = sb.api_url
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    return env


def test_scrapy_crawl_products_in_the_example_project(sandbox: Sandbox, tmp_path: Path) -> None:
    catalog = httpx.get(f"{sandbox.site_url}/catalog.json").json()
    # A small anti-bot budget: the crawl meets bans and must recover from every one.
    sandbox.control("site", budget=60, ban_window=60, ban_seconds=60)
    out = tmp_path / "products.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scrapy",
            "crawl",
            "products",
            "-a",
            f"site_url={sandbox.site_url}",
            "-O",
            str(out),
            "-s",
            "LOG_LEVEL=DEBUG",
        ],
        cwd=EXAMPLE,
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    items = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [item["id"] for item in items]
    assert sorted(ids) == list(range(1, catalog["products"] + 1))  # each product exactly once
    assert {item["exit_country"] for item in items} == {"de", "fr", "us"}
    assert all(item["exit_ip"] and item["name"] and item["price"] for item in items)
    assert "Retrying" in log and "ban" in log  # bans were met and retried
    assert "'proxaro/gave_up'" not in log and "ERROR" not in log
    assert "Proxaro: " in log and "exits used" in log  # the summary line at close
    # No secret at DEBUG: neither the API key nor the gateway password.
    assert sandbox.api_key not in log
    assert sandbox.world.credentials.password not in log


def test_scrapy_list_and_a_missing_site_url(sandbox: Sandbox) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "scrapy", "list"],
        cwd=EXAMPLE,
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["products"]
    env = _env(sandbox)
    env.pop("SHOP_URL", None)
    missing = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "products"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert "give the shop's URL" in missing.stderr
