"""One deadline per API call, enforced under httpx's per-read timeouts; the clients' transports.

httpx's timeouts bound each socket operation: a server that trickles a byte every half second
never trips a 30 s read timeout, and a call would last as long as the server likes.  So the
clients send through :class:`~._wire.WireTransport`, whose every connect, TLS handshake, write
and read gets at most what is left of the call's deadline (kept in a context variable around
the send by :func:`deadline_scope`), and fails with httpx's timeout once nothing is left.  The
async client also bounds a whole attempt with ``asyncio.wait_for``.

The async client sends through the same sync transport, from worker threads
(:class:`ThreadedTransport`): httpx's native async transport runs on httpcore and anyio, whose
asyncio backend alone costs a process some 25 ms of CPU at its first API call.

A client the caller brings (``http_client=``) is not modified: its reads get the time left when
each attempt starts as their per-read timeout, which bounds a silent server but not a trickling
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import ssl
import threading
import time
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx

from proxaro_scrape.api._wire import DEADLINE, WireTransport


def time_left(deadline: float | None, now: float | None = None) -> float | None:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), ``None`` without one."""
    if deadline is None:
        return None
    return deadline - (time.monotonic() if now is None else now)


def clamp_timeout(timeout: httpx.Timeout, left: float | None) -> dict[str, float | None]:
    """The ``timeout`` extension of one attempt: no phase may wait past the deadline."""
    phases = timeout.as_dict()
    if left is None:
        return phases
    left = max(left, 0.0)
    return {k: left if v is None else min(v, left) for k, v in phases.items()}


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Within the block, sends from this context end by ``deadline`` (a ``time.monotonic()``)."""
    token = DEADLINE.set(deadline)
    try:
        yield
    finally:
        DEADLINE.reset(token)


def tls_for(base_url: str) -> ssl.SSLContext | bool:
    """What a client of ``base_url`` verifies TLS with (httpx's ``verify=``).

    An ``https://`` API: ``True``, httpx's default (certifi's roots, loaded when the client is
    made).  A plain ``http://`` one (the sandbox, or an API the user opted into by name) makes
    no TLS connection at all, and loading some 150 root certificates for nothing costs a
    process 20 to 40 ms of CPU at start: its client gets a context that trusts no one instead,
    which is free to make and fails closed should a TLS connection ever be tried with it.
    """
    if base_url.startswith("https:"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts no root


def http_client(timeout: httpx.Timeout, base_url: str = "https:") -> httpx.Client:
    """The ``httpx.Client`` a sync client builds for itself (on :class:`WireTransport`)."""
    return httpx.Client(transport=WireTransport(verify=tls_for(base_url)), timeout=timeout)


def async_http_client(timeout: httpx.Timeout, base_url: str = "https:") -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` an async client builds for itself: the sync client's transport,
    run from worker threads (:class:`ThreadedTransport`)."""
    transport = ThreadedTransport(WireTransport(verify=tls_for(base_url)))
    return httpx.AsyncClient(transport=transport, timeout=timeout)


class ThreadedTransport(httpx.AsyncBaseTransport):
    """An asyncio transport that sends through a sync one in worker threads.

    API calls are few (a handful per crawl) and small (JSON documents), so a thread per call in
    flight costs nothing that matters, where anyio's asyncio backend, which httpx's own async
    transport needs, costs every asyncio process some 25 ms of CPU at its first call.  Each
    request runs in a copy of the caller's context, so the deadline of
    :func:`deadline_scope` bounds its every socket operation; the whole body is read in the
    thread, by that deadline too.  A caller that stops waiting (``asyncio.wait_for``, a
    cancelled task) leaves the thread to finish by its deadline and timeouts, and the
    connection to go back to the pool or be closed.
    """

    #: Threads at most, which is also how many calls of one client are sent at once.
    MAX_THREADS = 16

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise httpx.ConnectError("the client is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.MAX_THREADS, thread_name_prefix="proxaro-api"
                )
            return self._executor

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()  # small JSON bodies: sent whole from the thread
        sync_request = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=httpx.ByteStream(content),
            extensions=request.extensions,
        )
        send = functools.partial(contextvars.copy_context().run, self._send, sync_request)
        return await asyncio.get_running_loop().run_in_executor(self._threads(), send)

    def _send(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        try:
            # Raw bytes: the client decodes the body (gzip and the like) itself, once.
            raw = b"".join(typing.cast("typing.Iterable[bytes]", response.stream))
        finally:
            response.close()
        extensions = {
            k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")
        }
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=extensions,
        )

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._inner.close()
