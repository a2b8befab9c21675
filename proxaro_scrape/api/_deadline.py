"""One deadline per API call, enforced under httpx's per-read timeouts.

httpx's timeouts bound each socket operation: a server that trickles a byte every half second
never trips a 30 s read timeout, and a call would last as long as the server likes.  The async
client bounds a whole attempt with ``asyncio.wait_for``.  The sync client cannot interrupt a
blocking read from outside, so the client it builds for itself sends through a network backend
whose every connect, TLS handshake, write and read gets at most what is left of the call's
deadline (kept in a context variable around the send), and fails with httpcore's timeout once
nothing is left; httpx maps that to its own ``TimeoutException`` as for any timeout.

A ``httpx.Client`` the caller brings is not modified: its reads get the time left when each
attempt starts as their per-read timeout, which bounds a silent server but not a trickling one.
"""

from __future__ import annotations

import contextlib
import contextvars
import ssl
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

#: The ``time.monotonic()`` by which the call being sent on this thread must end.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "proxaro_api_deadline", default=None
)


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
    """Within the block, sends on this thread end by ``deadline`` (through :class:`Backend`)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _bounded(timeout: float | None, exc: type[Exception]) -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("the API call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the call's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout)
        )
        return _Stream(inner)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class Backend(httpcore.NetworkBackend):
    """httpcore's sync backend with the deadline applied to every socket operation."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            _bounded(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _Stream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, _bounded(timeout, httpcore.ConnectTimeout), socket_options=socket_options
        )
        return _Stream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


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


def http_client(timeout: httpx.Timeout, base_url: str = "https:") -> tuple[httpx.Client, bool]:
    """The ``httpx.Client`` a sync client builds for itself, and whether the deadline backend
    is in place.

    httpx takes no network backend as an argument, so it is set on the transport's connection
    pool; should a future httpx move that attribute, the client still works, with per-read
    timeouts only (the second value says which, and a test pins it).
    """
    transport = httpx.HTTPTransport(verify=tls_for(base_url))
    pool = getattr(transport, "_pool", None)
    installed = False
    if isinstance(pool, httpcore.ConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = Backend(pool._network_backend)
        installed = True
    return httpx.Client(transport=transport, timeout=timeout), installed
