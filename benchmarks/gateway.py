"""Sandbox gateway requests/s against proxy.py, same client, same target, in one run.

    python -m benchmarks.gateway [--quick] [--json]

Three processes besides this one, all on loopback: the target (the sandbox demo shop, whose
``/robots.txt`` the client fetches, or with ``--target minimal`` a bare keep-alive responder), the
sandbox gateway (:class:`~proxaro_scrape.sandbox.gateway.GatewayServer` alone, in a process of
its own) and ``proxy.py`` (one worker, one acceptor, Basic auth, logging at ERROR so that it
does not pay for access logs our gateway does not write).  One client (a bare asyncio protocol,
keep-alive, ``concurrency`` connections each with one request in flight, 64 by default) drives
both proxies in alternating rounds, so that the machine's noise falls on both alike; the figure
is the median of the rounds' ratios (each round runs both sides back to back).  Goal: >= 1.0 (the
gateway must never be what limits the project's benchmarks).  Each side's CPU per request (its
process tree, from /proc) is reported too: on a shared machine it is steadier than requests/s.

The client sends what any static-proxy-URL client sends: absolute-form ``GET`` with
``Proxy-Authorization``; through our gateway the username has no targeting, so every request
gets a new exit (the rotating default, the gateway's most expensive plain case).

:func:`run` is what the benchmark suite calls; it returns the figure as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from benchmarks import child_env

__all__ = ["run"]

_USER = "benchuser"
_PASSWORD = "benchpass"
_BODY = b'{"ok": true, "padding": "' + b"x" * 200 + b'"}'


# ---------------------------------------------------------------------------- the target


class _TargetProtocol(asyncio.Protocol):
    """Answers every GET with the same small JSON body, keep-alive, as fast as Python can."""

    _response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(_BODY) + _BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        count = self.buf.count(b"\r\n\r\n")
        if count:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(self._response * count)


async def _serve_target() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_TargetProtocol, "127.0.0.1", 0, backlog=1024)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes away
    server.close()


async def _serve_shop() -> None:
    # The sandbox's demo shop alone (aiohttp), the target every other benchmark crawls.
    from aiohttp import web

    from proxaro_scrape.sandbox.site import build_site_app
    from proxaro_scrape.sandbox.world import World

    runner = web.AppRunner(build_site_app(World(seed=0)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    server: Any = site._server  # aiohttp keeps the bound socket there only
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


async def _serve_gateway() -> None:
    from proxaro_scrape.sandbox.gateway import GatewayServer
    from proxaro_scrape.sandbox.world import World

    world = World(seed=0)
    gateway = GatewayServer(world)
    await gateway.start()
    cred = world.credentials
    print(
        json.dumps({"port": gateway.port, "username": cred.username, "password": cred.password}),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await gateway.close()


def _serve(role: str) -> None:
    # The servers' own processes: only what they serve, nothing of the parent's.
    if role == "target":
        asyncio.run(_serve_target())
    elif role == "shop":
        asyncio.run(_serve_shop())
    elif role == "gateway":
        if os.environ.get("PROXARO_BENCH_PROFILE"):
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled")
            profiler.start()
            try:
                asyncio.run(_serve_gateway())
            finally:
                profiler.stop()
                with open(os.environ["PROXARO_BENCH_PROFILE"], "w") as fh:
                    fh.write(profiler.output_text(unicode=False, color=False))
        else:
            asyncio.run(_serve_gateway())
    else:
        raise SystemExit(f"unknown role {role!r}")


# ---------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process(args: list[str], *, announce: bool = True) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Start a server process; yield it and the JSON line it announces itself with.

    Ours stop when their stdin closes; proxy.py (``announce=False``) is sent SIGTERM.
    """
    # stderr to a file: a pipe nobody reads could fill up and stall the server mid-run.
    errfile = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if announce else subprocess.DEVNULL,
        stderr=errfile,
        text=True,
        env=child_env(),
    )
    try:
        info: dict[str, Any] = {}
        if announce:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=10)
                errfile.seek(0)
                raise RuntimeError(f"{' '.join(args[1:])} did not start: {errfile.read()[-2000:]}")
            info = json.loads(line)
        yield proc, info
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if not announce:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errfile.close()


def _run_coroutine(coro: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run``, on a thread of its own when this thread already runs a loop (for
    example under pytest-twisted or inside a caller's async code)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


def _tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a process and its descendants; None off Linux."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    todo = [pid]
    try:
        while todo:
            p = todo.pop()
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    except (OSError, ValueError, IndexError):
        return None
    return total


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


# ---------------------------------------------------------------------------- the client


class _ClientProtocol(asyncio.Protocol):
    """One keep-alive client connection: send, read the answer, send again, until the end.

    A bare protocol rather than streams, so that the client spends as little of the shared
    CPU as it can and the proxies, not the client, set the pace.
    """

    def __init__(
        self, request: bytes, stop_at: float, counts: list[int], marker: bytes | None
    ) -> None:
        self.request = request
        self.stop_at = stop_at
        self.counts = counts
        self.marker = marker
        self.buf = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            i = head.lower().find(b"\r\ncontent-length:")
            length = 0
            if i >= 0:
                eol = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : eol if eol >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            if head[9:12] == b"200" and (self.marker is None or self.marker in head):
                self.counts[0] += 1
            else:
                self.counts[1] += 1
            assert self.transport is not None
            if time.monotonic() < self.stop_at:
                self.transport.write(self.request)
            else:
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _drive(
    port: int,
    target_port: int,
    username: str,
    password: str,
    seconds: float,
    concurrency: int,
    marker: bytes | None,
    path: bytes = b"/item",
) -> tuple[float, int, int]:
    """``concurrency`` keep-alive connections, one request in flight on each, for ``seconds``.

    Returns (good responses per second, bad responses, all responses).
    """
    auth = base64.b64encode(f"{username}:{password}".encode())
    request = (
        b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Proxy-Authorization: Basic %s\r\nUser-Agent: proxaro-bench\r\nAccept: */*\r\n\r\n"
        % (target_port, path, target_port, auth)
    )
    counts = [0, 0]
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    stop_at = t0 + seconds
    protocols = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(
            lambda: _ClientProtocol(request, stop_at, counts, marker), "127.0.0.1", port
        )
        protocols.append(proto)
    await asyncio.wait_for(asyncio.gather(*(p.done for p in protocols)), seconds + 30)
    elapsed = time.monotonic() - t0
    return counts[0] / elapsed, counts[1], counts[0] + counts[1]


# ---------------------------------------------------------------------------- the figure


def run(
    quick: bool = False,
    *,
    concurrency: int = 64,
    profile: str | None = None,
    targeting: str = "",
    target: str = "shop",
) -> dict[str, Any]:
    """Measure requests/s through the sandbox gateway and through proxy.py, side by side.

    ``quick`` keeps it to a few seconds (CI smoke: the figure is produced, whatever its value);
    the full run takes about forty seconds.  ``targeting`` is appended to the gateway username
    (``"-session-b1"`` measures a sticky exit instead of rotating ones).  ``profile`` writes a
    pyinstrument profile of the gateway process to that path.  ``target`` is ``"shop"`` (the
    sandbox demo shop in a process of its own, its ``/robots.txt``: what the crawls fetch
    through the gateway) or ``"minimal"`` (a bare keep-alive responder: the proxies alone).

    Returns ``{"figure", "gateway_rps", "proxy_py_rps", "ratio", "goal", ...}`` plus each
    side's CPU per request (``*_cpu_us_per_request``, process tree, Linux only): a steadier
    figure than requests/s on a shared machine.
    """
    rounds, seconds, warmup = (2, 0.6, 0.3) if quick else (8, 2.0, 1.5)
    py = sys.executable
    me = "benchmarks.gateway"
    with contextlib.ExitStack() as stack:
        stack.callback(os.environ.pop, "PROXARO_BENCH_PROFILE", None)
        if target not in ("shop", "minimal"):
            raise ValueError("target is 'shop' or 'minimal'")
        role = "shop" if target == "shop" else "target"
        path = b"/robots.txt" if target == "shop" else b"/item"
        _, served = stack.enter_context(_process([py, "-m", me, "--serve", role]))
        if profile:
            os.environ["PROXARO_BENCH_PROFILE"] = profile
        gw_proc, gw = stack.enter_context(_process([py, "-m", me, "--serve", "gateway"]))
        os.environ.pop("PROXARO_BENCH_PROFILE", None)
        peer_port = _free_port()
        data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="proxaro-bench-"))
        peer_proc, _ = stack.enter_context(
            _process(
                [
                    py,
                    "-m",
                    "proxy",
                    "--hostname",
                    "127.0.0.1",
                    "--port",
                    str(peer_port),
                    "--num-workers",
                    "1",
                    "--num-acceptors",
                    "1",
                    "--basic-auth",
                    f"{_USER}:{_PASSWORD}",
                    "--log-level",
                    "ERROR",
                    "--data-dir",
                    data_dir,
                ],  # fmt: skip
                announce=False,
            )
        )
        _wait_listening(peer_port)
        sides = {
            "gateway": (gw_proc.pid, gw["port"], gw["username"] + targeting, gw["password"]),
            "proxy_py": (peer_proc.pid, peer_port, _USER, _PASSWORD),
        }
        markers = {"gateway": b"X-Proxaro-Exit-IP", "proxy_py": None}
        rps: dict[str, list[float]] = {name: [] for name in sides}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        errors = dict.fromkeys(sides, 0)

        async def measure() -> None:
            for name, (_, port, user, pw) in sides.items():
                await _drive(
                    port, served["port"], user, pw, warmup, concurrency, markers[name], path
                )
            order = list(sides)
            for _ in range(rounds):
                order.reverse()  # who goes first alternates, so neither always gets the calm
                for name in order:
                    pid, port, user, pw = sides[name]
                    cpu0 = _tree_cpu(pid)
                    rate, errs, done = await _drive(
                        port, served["port"], user, pw, seconds, concurrency, markers[name], path
                    )
                    cpu1 = _tree_cpu(pid)
                    rps[name].append(rate)
                    errors[name] += errs
                    if cpu0 is not None and cpu1 is not None and done:
                        cpu[name].append((cpu1 - cpu0) / done * 1e6)

        _run_coroutine(measure())

    ours = statistics.median(rps["gateway"])
    theirs = statistics.median(rps["proxy_py"])
    # Each round measures both sides back to back, under the same passing load: the median
    # of those paired ratios shrugs off a noisy round better than a ratio of medians.
    paired = [a / b for a, b in zip(rps["gateway"], rps["proxy_py"]) if b]
    result: dict[str, Any] = {
        "figure": "sandbox gateway requests/s vs proxy.py (same client, same target)",
        "gateway_rps": round(ours, 1),
        "proxy_py_rps": round(theirs, 1),
        "ratio": round(statistics.median(paired), 3) if paired else None,
        "goal": ">= 1.0",
        "concurrency": concurrency,
        "rounds": rounds,
        "seconds_per_round": seconds,
        "targeting": targeting or "(none: rotating exits)",
        "target": "the demo shop's /robots.txt" if target == "shop" else "a minimal responder",
        "errors": errors,
        "quick": quick,
        "rounds_rps": {name: [round(r) for r in rates] for name, rates in rps.items()},
    }
    for name in sides:
        result[f"{name}_cpu_us_per_request"] = (
            round(statistics.median(cpu[name]), 1) if cpu[name] else None
        )
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.gateway``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a couple of seconds (CI smoke)")
    parser.add_argument("--json", action="store_true", help="print the figure as JSON")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--target", choices=("shop", "minimal"), default="shop")
    parser.add_argument("--profile", help="write a pyinstrument profile of the gateway here")
    parser.add_argument("--targeting", default="", help="username suffix, e.g. -session-b1")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return
    result = run(
        args.quick,
        concurrency=args.concurrency,
        profile=args.profile,
        targeting=args.targeting,
        target=args.target,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"sandbox gateway {result['gateway_rps']:.0f} req/s, proxy.py "
            f"{result['proxy_py_rps']:.0f} req/s, ratio {result['ratio']} (goal >= 1.0; "
            f"{result['concurrency']} in flight, errors {result['errors']}); CPU per request: "
            f"gateway {result['gateway_cpu_us_per_request']} us, "
            f"proxy.py {result['proxy_py_cpu_us_per_request']} us"
        )


if __name__ == "__main__":
    main()
