"""The httpx integration's wire pieces (private): per-attempt auth, CONNECT traces, streams.

Kept apart from :mod:`proxaro_scrape.integrations.httpx` so that the transports read as what
they do; nothing here decides anything (the integration contract does).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from proxaro_scrape.gateway.edge import DRAIN_LIMIT, PROXY_AUTHORIZATION, gateway_pairs

_PA_RAW = PROXY_AUTHORIZATION.encode()
_PA_LOWER = _PA_RAW.lower()


def _put_auth(headers: httpx.Headers, value: str) -> Any:
    """Put ``Proxy-Authorization: value`` on a request for one attempt; a token to take it off.

    On the per-request path: httpx's own ``headers[...] = ...`` and ``del`` scan and re-encode
    the whole list, so the entry is appended to (and popped from) the list httpx keeps when it
    has one, which costs a fraction of a microsecond.  Any ``Proxy-Authorization`` already there
    is replaced for the attempt and put back after.
    """
    items = getattr(headers, "_list", None)
    if type(items) is list and PROXY_AUTHORIZATION not in headers:
        item = (_PA_RAW, _PA_LOWER, value.encode("latin-1"))
        items.append(item)
        return item
    saved = headers.get(PROXY_AUTHORIZATION)
    headers[PROXY_AUTHORIZATION] = value
    return ("saved", saved)


def _take_auth(headers: httpx.Headers, token: Any) -> None:
    """Undo :func:`_put_auth`."""
    if token[0] == "saved":
        if token[1] is None:
            del headers[PROXY_AUTHORIZATION]
        else:
            headers[PROXY_AUTHORIZATION] = token[1]
        return
    items = headers._list
    if items and items[-1] is token:
        items.pop()
    else:
        try:
            items.remove(token)
        except ValueError:
            pass


def _drainable(response: httpx.Response) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT


class _ConnectTrace:
    """httpcore ``trace`` hook: the ``CONNECT`` answer, and the exit of each new tunnel.

    httpcore reads the ``CONNECT`` answer and keeps nothing of it but the status (in a
    ``ProxyError`` message when it is not 2xx).  The trace sees its headers: the exit
    (``X-Proxaro-Exit-*``) of a tunnel it opened, or the gateway's ``X-Proxaro-Error``.
    """

    __slots__ = ("owner", "user", "connecting", "status", "headers")

    def __init__(self, owner: Any, user: Any) -> None:
        self.owner = owner
        self.user = user
        self.connecting = False
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []

    def see(self, name: str, info: dict[str, Any]) -> None:
        if name == "http11.send_request_headers.started":
            self.connecting = info["request"].method == b"CONNECT"
        elif name == "http11.receive_response_headers.complete" and self.connecting:
            self.connecting = False
            _, status, _, headers = info["return_value"]
            self.status = status
            self.headers = gateway_pairs(headers)
        elif name == "proxy.start_tls.complete" and self.status is not None:
            # The TLS stream is what every later response on this tunnel names as its
            # network_stream: remember the tunnel's exit under it.
            self.owner._remember_exit(info["return_value"], self.headers)


class _SyncTrace(_ConnectTrace):
    __slots__ = ()

    def __call__(self, name: str, info: dict[str, Any]) -> None:
        self.see(name, info)
        if self.user is not None:
            self.user(name, info)


class _AsyncTrace(_ConnectTrace):
    __slots__ = ()

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        self.see(name, info)
        if self.user is not None:
            await self.user(name, info)


class _ReleasingStream(httpx.SyncByteStream):
    """A tunnel response's body: releases its pool from the LRU when closed."""

    def __init__(self, stream: Any, release: Any) -> None:
        self._stream = stream
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class _AsyncReleasingStream(httpx.AsyncByteStream):
    """Async twin of :class:`_ReleasingStream`."""

    def __init__(self, stream: Any, release: Any) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                await release()


#: Shards of the plain-HTTP pool (fewer when ``limits`` allows fewer connections).
PLAIN_SHARDS = 4


class _Shards:
    """The plain-HTTP pool, split: a request takes the shard with the fewest requests in flight
    and gives it back when its response is closed (or its attempt failed)."""

    __slots__ = ("url", "pools", "busy", "_lock")

    def __init__(self, url: str, pools: list[Any]) -> None:
        self.url = url
        self.pools = pools
        self.busy = [0] * len(pools)
        self._lock = threading.Lock()

    def take(self) -> tuple[Any, int]:
        with self._lock:
            busy = self.busy
            index = busy.index(min(busy))
            busy[index] += 1
        return self.pools[index], index

    def give(self, index: int) -> None:
        with self._lock:
            self.busy[index] -= 1


def _shard_limits(limits: httpx.Limits) -> list[httpx.Limits]:
    """``limits`` split over the shards, their sum never above the whole."""

    def split(total: int | None, n: int) -> list[int | None]:
        if total is None:
            return [None] * n
        return [total // n + (1 if i < total % n else 0) for i in range(n)]

    most = limits.max_connections
    n = PLAIN_SHARDS if most is None else max(1, min(PLAIN_SHARDS, most))
    keep = limits.max_keepalive_connections
    return [
        httpx.Limits(max_connections=c, max_keepalive_connections=k,
                     keepalive_expiry=limits.keepalive_expiry)
        for c, k in zip(split(most, n), split(keep, n))
    ]  # fmt: skip
