"""Helpers of the REST client tests: one adapter drives the sync and the async client.

A test is written once against :class:`Driver`; the ``api`` fixture parametrizes it over
``"sync"`` (``Proxaro``, called directly) and ``"async"`` (``AsyncProxaro``, whose coroutines
run on an event loop in a thread of the driver's own, so that its ``httpx.AsyncClient`` stays on
one loop for the whole test).
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
from aiohttp import web

from proxaro_scrape import AsyncProxaro, Proxaro
from proxaro_scrape.sandbox import Sandbox


class LoopThread:
    """An event loop running in a daemon thread; :meth:`run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _collect(aiter: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in aiter]


class Driver:
    """Drive a sync or an async client with the same test code.

    >>> api(lambda c: c.usage.get())           # a value, whichever the kind
    >>> api.items(lambda c: c.orders.list())   # every item of a paginator
    """

    def __init__(self, kind: str, sandbox: Sandbox | None = None) -> None:
        assert kind in ("sync", "async")
        self.kind = kind
        self.sandbox = sandbox
        self._loop = LoopThread() if kind == "async" else None
        self._clients: list[Proxaro | AsyncProxaro] = []
        self.c: Any = self.client() if sandbox is not None else None

    def client(self, api_key: Any = "sandbox", base_url: Any = "sandbox", **kw: Any) -> Any:
        """A new client of this driver's kind (closed with the driver).  ``"sandbox"`` means
        the sandbox's key / URL."""
        if api_key == "sandbox":
            assert self.sandbox is not None
            api_key = self.sandbox.api_key
        if base_url == "sandbox":
            assert self.sandbox is not None
            base_url = self.sandbox.api_url
        cls = Proxaro if self.kind == "sync" else AsyncProxaro
        client = cls(api_key, base_url, **kw)
        self._clients.append(client)
        return client

    def run(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            assert self._loop is not None
            return self._loop.run(value)
        return value

    def __call__(self, fn: Callable[[Any], Any], client: Any = None) -> Any:
        return self.run(fn(client if client is not None else self.c))

    def items(self, fn: Callable[[Any], Any], client: Any = None) -> list[Any]:
        """Every item of the paginator ``fn(client)`` returns."""
        paginator = fn(client if client is not None else self.c)
        if self.kind == "sync":
            return list(paginator)
        return self.run(_collect(paginator.__aiter__()))  # type: ignore[no-any-return]

    def pages(self, fn: Callable[[Any], Any], client: Any = None) -> list[Any]:
        """Every page of the paginator ``fn(client)`` returns."""
        paginator = fn(client if client is not None else self.c)
        if self.kind == "sync":
            return list(paginator.pages())
        return self.run(_collect(paginator.pages()))  # type: ignore[no-any-return]

    def close(self) -> None:
        for client in self._clients:
            if isinstance(client, AsyncProxaro):
                self.run(client.aclose())
            else:
                client.close()
        if self._loop is not None:
            self._loop.close()


def counters(sb: Sandbox) -> dict[str, int]:
    """The sandbox's counters (``GET /_sandbox/counters``)."""
    resp = httpx.get(f"{sb.api_url}/_sandbox/counters", timeout=10)
    resp.raise_for_status()
    return resp.json()  # type: ignore[no-any-return]


class TinyServer:
    """A small aiohttp app on loopback, in a thread: answers that are not the API's envelope."""

    def __init__(self, routes: dict[str, Callable[[web.Request], Any]]) -> None:
        self.hits: dict[str, int] = {}
        self.requests: list[dict[str, str]] = []
        self._routes = routes
        self._loop = LoopThread()
        self._runner: web.AppRunner | None = None
        self.url = self._loop.run(self._start())

    async def _start(self) -> str:
        app = web.Application()

        async def handle(request: web.Request) -> web.StreamResponse:
            self.hits[request.path] = self.hits.get(request.path, 0) + 1
            self.requests.append(dict(request.headers))
            answer = self._routes[request.path](request)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer  # type: ignore[no-any-return]

        for path in self._routes:
            app.router.add_route("*", path, handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> TinyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def driver_fixture(request: Any, sb: Sandbox | None) -> Iterator[Driver]:
    """The body of every module's ``api`` fixture."""
    driver = Driver(request.param, sb)
    try:
        yield driver
    finally:
        driver.close()


class RawServer:
    """A loopback server on raw sockets, in threads, for what a well-behaved HTTP server never
    does (trickle, fall silent, drop a connection, close an idle one without a word).

    Each accepted connection (TLS-wrapped when ``tls`` is given) goes to :meth:`serve` in a
    thread of its own, and is closed after it.  Counts connections accepted and closed.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.closed = 0
        self._tls = tls
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def stopping(self) -> bool:
        """Set by :meth:`close`: a :meth:`serve` that loops stops looping."""
        return self._stop.is_set()

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the server closes meanwhile."""
        self._stop.wait(seconds)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the 0.2 s poll of the stop flag, or the listener closed
                continue
            self.connections += 1
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(10.0)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            self.serve(conn)
        except OSError:  # ssl.SSLError too: the client went, or refused the certificate
            pass
        finally:
            conn.close()
            self.closed += 1

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
