"""A JOBDIR crawl of the demo shop, paused with Ctrl+C halfway and resumed, as a user runs it.

``scrapy crawl products -s JOBDIR=...`` in the example project, through the sandbox, with a
small anti-bot budget (bans, so retries are in flight and queued when the pause comes) and a
password rotation with a short grace (407s, a credentials refresh) before the pause.  SIGINT is
sent once, when about half the products are in the feed; Scrapy stops gracefully, writing
what is queued (retries included) to the JOBDIR.  The second run resumes from it.

Must hold: every product exactly once across both runs' feeds; ``scheduler/unserializable``
never counted (every request pickled into the disk queue); neither gateway password nor the
API key (nor a Basic credential built from them) anywhere in the JOBDIR's bytes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from proxaro_scrape.sandbox import Sandbox
from tests._support import eventually

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scrapy_shop"

pytestmark = pytest.mark.slow


def _env(sb: Sandbox) -> dict[str, str]:
    env = dict(os.environ)
    env["PROXARO_API_KEY"] = sb.api_key
    env["PROXARO_BASE_URL"] = sb.api_url
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    return env


def _crawl(sb: Sandbox, jobdir: Path, feed: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scrapy",
            "crawl",
            "products",
            "-a",
            f"site_url={sb.site_url}",
            "-o",
            f"{feed}:jsonlines",
            "-s",
            f"JOBDIR={jobdir}",
            "-s",
            f"LOG_FILE={log}",
            "-s",
            "LOG_LEVEL=DEBUG",
            "-s",
            "CONCURRENT_REQUESTS=8",
            "-s",
            "CONCURRENT_REQUESTS_PER_DOMAIN=8",
        ],
        cwd=EXAMPLE,
        env=_env(sb),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _scraped(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count("Scraped from <200")
    except FileNotFoundError:
        return 0


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    eventually(predicate, timeout, message=what)


def _ids(feed: Path) -> list[int]:
    if not feed.exists():
        return []
    return [json.loads(line)["id"] for line in feed.read_text().splitlines() if line.strip()]


def _base64_forms(secret: bytes) -> set[bytes]:
    """Every run of base64 text that ``secret`` becomes inside any longer encoded string."""
    forms = set()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + secret)
        # Drop the characters the padding touched and the last, partial, group.
        start = {0: 0, 1: 2, 2: 3}[pad]
        usable = (len(b"\0" * pad + secret) // 3) * 4
        forms.add(encoded[start:usable])
    return {f for f in forms if len(f) >= 8}


def _jobdir_bytes(jobdir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(jobdir.rglob("*")) if p.is_file())


def test_a_jobdir_crawl_paused_with_sigint_and_resumed_loses_and_repeats_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    catalog = httpx.get(f"{sandbox.site_url}/catalog.json").json()
    products = catalog["products"]
    # Bans on every exit after a few dozen pages; slow product pages keep the crawl long enough
    # to be interrupted halfway; a short grace turns the rotation into 407s at once.
    sandbox.control("site", budget=40, ban_window=60, ban_seconds=60, slow_ms=60)
    sandbox.control("grace", seconds=0.3)
    passwords = [sandbox.world.credentials.password]
    username = sandbox.world.credentials.username
    jobdir, log1, log2 = tmp_path / "job", tmp_path / "run1.log", tmp_path / "run2.log"
    feed1, feed2 = tmp_path / "run1.jsonl", tmp_path / "run2.jsonl"

    first = _crawl(sandbox, jobdir, feed1, log1)
    try:
        _wait_for(lambda: _scraped(log1) >= products // 4, 120, "a quarter of the products")
        passwords.append(sandbox.control("rotate")["password"])
        _wait_for(lambda: _scraped(log1) >= products // 2, 120, "half of the products")
        first.send_signal(signal.SIGINT)  # once: Scrapy's graceful stop
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
    text1 = log1.read_text(errors="replace")
    assert "shutting down gracefully" in text1
    assert "'finish_reason': 'shutdown'" in text1
    run1 = _ids(feed1)
    assert products // 2 <= len(run1) < products, "the pause did not come halfway"
    # The pause caught work in the queue: retries among it, pickled to disk.
    assert "'scheduler/enqueued/disk'" in text1
    assert "proxaro/bans" in text1 and "proxaro/rotations': 1" in text1

    stored = _jobdir_bytes(jobdir)
    # Retries (RETRY_PRIORITY_ADJUST puts them behind the fresh pages) wait in the disk queue,
    # pickled: only a retry or a redirect is queued with a flight id in its meta.
    assert "Retrying" in text1 and b"_proxaro_flight" in stored
    secrets = [p.encode() for p in passwords] + [sandbox.api_key.encode()]
    secrets += [f"{username}:{p}".encode() for p in passwords]
    for secret in secrets:
        assert secret not in stored
        for form in _base64_forms(secret):
            assert form not in stored
    assert b"Proxy-Authorization" not in stored

    second = _crawl(sandbox, jobdir, feed2, log2)
    try:
        assert second.wait(timeout=180) == 0
    finally:
        if second.poll() is None:
            second.kill()
    text2 = log2.read_text(errors="replace")
    assert "'finish_reason': 'finished'" in text2
    run2 = _ids(feed2)
    seen = Counter(run1 + run2)
    assert sorted(seen) == list(range(1, products + 1)), "products were lost"
    assert [pid for pid, n in seen.items() if n > 1] == [], "products were scraped twice"
    for text in (text1, text2):
        assert "scheduler/unserializable" not in text
        assert "scheduler/enqueued/memory" not in text  # every request went to disk
        assert "Unable to serialize request" not in text
        assert "'proxaro/gave_up'" not in text
    stored = _jobdir_bytes(jobdir)
    for secret in secrets:
        assert secret not in stored
