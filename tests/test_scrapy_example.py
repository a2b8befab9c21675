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


_IN_PROCESS = """
import json, sys, time
import httpx
sys.path.insert(0, sys.argv[1])
from shop.run import crawl

api, site = sys.argv[2], sys.argv[3]
done = set()


def on_page(spider, response):
    # The demo's script: a region down a third of the way, a rotation two thirds of the way.
    if spider.pages >= 110 and "down" not in done:
        done.add("down")
        httpx.post(f"{api}/_sandbox/country", json={"code": "de", "pool_health": "down"})
    if spider.pages >= 220 and "rotate" not in done:
        done.add("rotate")
        httpx.post(f"{api}/_sandbox/rotate", json={})
        # A slow callback past the grace (0.5 s): the requests that follow still carry the
        # old password, meet 407s, and the middleware must take the new one in.
        time.sleep(0.7)


result = crawl(site, spider_kwargs={"on_page": on_page}, LOG_LEVEL="WARNING")
stats = {k: v for k, v in result.stats.items() if k.startswith("proxaro/")}
print(json.dumps({"summary": result.summary, "reason": result.reason, "stats": stats}))
"""


def test_the_demo_runs_the_spider_in_process_through_faults(sandbox: Sandbox) -> None:
    """shop.run.crawl (CrawlerProcess) with bans, a region down and a rotation midway."""
    catalog = httpx.get(f"{sandbox.site_url}/catalog.json").json()
    sandbox.control("site", budget=60, ban_window=60, ban_seconds=60)
    sandbox.control("grace", seconds=0.5)
    proc = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS, str(EXAMPLE), sandbox.api_url, sandbox.site_url],
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    summary, stats = out["summary"], out["stats"]
    assert out["reason"] == "finished"
    assert summary["failed"] == 0
    assert summary["products"] == catalog["products"]
    assert summary["listing_pages"] == catalog["pages"]
    assert summary["pages_by_country"].get("de", 0) > 0  # before the region went down
    assert len(summary["pages_by_country"]) >= 4  # de, fr, us and de's failover
    assert stats["proxaro/bans"] >= 1
    assert stats["proxaro/failovers"] >= 1
    assert stats["proxaro/rotations"] == 1
    assert stats.get("proxaro/gave_up", 0) == 0
    assert sandbox.api_key not in proc.stdout + proc.stderr
