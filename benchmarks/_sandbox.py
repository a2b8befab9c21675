"""A whole sandbox in a process of its own, for benchmarks whose client must not share a CPU
(or a GIL) with the provider it talks to.

    with sandbox_process() as sb:          # `proxaro-scrape sandbox --json` in a subprocess
        sb.site_url, sb.api_key, sb.ca_cert
        sb.control("grace", seconds=0.3)   # POST /_sandbox/grace
        sb.counters()["gateway.connections"]

The process is the real command (``python -m proxaro_scrape.cli sandbox --json``): what a
user runs, so the benchmark measures what they would get.  Its one JSON line gives the
addresses; SIGINT stops it cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from proxaro_scrape.sandbox._runner import INFO_KEYS

__all__ = ["SandboxProcess", "sandbox_process"]


@dataclass
class SandboxProcess:
    """The addresses a ``proxaro-scrape sandbox --json`` process announced, plus its controls."""

    pid: int
    api_url: str
    api_key: str
    gateway_host: str
    gateway_port: int
    site_url: str
    site_https_url: str
    ca_cert: str

    def control(self, name: str, **body: Any) -> Any:
        """``POST /_sandbox/<name>`` with ``body``; the JSON answer (blocking)."""
        resp = httpx.post(f"{self.api_url}/_sandbox/{name}", json=body, timeout=10.0)
        resp.raise_for_status()
        return resp.json()

    async def acontrol(self, name: str, **body: Any) -> Any:
        """Async twin of :meth:`control`."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            resp = await client.post(f"{self.api_url}/_sandbox/{name}", json=body)
            resp.raise_for_status()
            return resp.json()

    def counters(self) -> dict[str, int]:
        """``GET /_sandbox/counters``: the sandbox's counters (blocking)."""
        resp = httpx.get(f"{self.api_url}/_sandbox/counters", timeout=10.0)
        resp.raise_for_status()
        return dict(resp.json())

    async def acounters(self) -> dict[str, int]:
        """Async twin of :meth:`counters`."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            resp = await client.get(f"{self.api_url}/_sandbox/counters")
            resp.raise_for_status()
            return dict(resp.json())


@contextlib.contextmanager
def sandbox_process(seed: int = 0, plan: str = "growth") -> Iterator[SandboxProcess]:
    """Run ``proxaro-scrape sandbox --json`` in a subprocess for the duration of the block."""
    # stderr to a file: a pipe that nobody reads could fill up and stall the sandbox mid-run.
    errfile = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and command, fixed arguments
        [sys.executable, "-m", "proxaro_scrape.cli", "sandbox", "--json"]
        + ["--seed", str(seed), "--plan", plan],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=errfile,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("{"):
            proc.wait(timeout=10)
            errfile.seek(0)
            raise RuntimeError(f"the sandbox did not start: {(line + errfile.read())[-2000:]}")
        info = json.loads(line)
        yield SandboxProcess(pid=proc.pid, **{k: info[k] for k in INFO_KEYS})
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: the sandbox closes its servers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        errfile.close()
