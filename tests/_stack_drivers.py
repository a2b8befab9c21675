"""One small driver per client stack, so that every end-to-end behaviour is written once.

A driver opens a gateway manager (sync or async driver, as that stack's users would) and a
client of its stack routed through the Proxaro integration, then sends requests with an
optional per-request target and sticky key.  Every driver's interface is async: sync stacks
run their blocking calls on a thread pool of their own, so tests can put any stack under
concurrent load the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from proxaro_scrape import GatewayManager
from proxaro_scrape.gateway import ExitInfo
from proxaro_scrape.gateway.edge import UNSET as PX_UNSET
from proxaro_scrape.integrations import aiohttp as px_aiohttp
from proxaro_scrape.integrations import httpx as px_httpx
from proxaro_scrape.integrations import requests as px_requests
from proxaro_scrape.sandbox import Sandbox

UNSET: Any = object()
STREAM = "stream"  # a one-shot streamed request body, in each stack's own idiom


@dataclass
class Reply:
    status: int
    body: bytes
    exit: ExitInfo | None

    def json(self) -> Any:
        return json.loads(self.body)


class Driver:
    """The common part: the manager's lifecycle, and a thread pool for sync stacks."""

    name = ""
    is_async = False

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.manager: GatewayManager | None = None
        self.ssl = ssl.create_default_context(cafile=sb.ca_cert)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)

    @contextlib.asynccontextmanager
    async def opened(self, **manager_kw: Any) -> AsyncIterator[Driver]:
        mgr = GatewayManager(self.sb.api_key, self.sb.api_url, **manager_kw)
        if self.is_async:
            await mgr.astart()
        else:
            await asyncio.to_thread(mgr.start)
        self.manager = mgr
        try:
            await self._open(mgr)
            yield self
        finally:
            try:
                await self._close()
            finally:
                if self.is_async:
                    await mgr.aclose()
                else:
                    await asyncio.to_thread(mgr.close)
                self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    async def _open(self, mgr: GatewayManager) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def get(self, url: str, *, target: Any = UNSET, session: Any = None) -> Reply:
        raise NotImplementedError

    async def post(
        self, url: str, body: bytes | str, *, target: Any = UNSET, session: Any = None
    ) -> Reply:
        """POST ``body`` (bytes, or :data:`STREAM` for a one-shot stream of 3 x 1 KiB)."""
        raise NotImplementedError


def _chunks() -> list[bytes]:
    return [b"a" * 1024, b"b" * 1024, b"c" * 1024]


STREAM_BYTES = b"".join(_chunks())


def _httpx_ext(target: Any, session: Any) -> dict[str, Any]:
    ext: dict[str, Any] = {}
    if target is not UNSET:
        ext["proxaro"] = target
    if session is not None:
        ext["proxaro_session"] = session
    return ext


class HttpxSync(Driver):
    name = "httpx"

    async def _open(self, mgr: GatewayManager) -> None:
        self.client = httpx.Client(
            transport=px_httpx.ProxaroTransport(mgr, verify=self.ssl),
            follow_redirects=True,
            timeout=15,
        )

    async def _close(self) -> None:
        self.client.close()

    def _send(self, method: str, url: str, target: Any, session: Any, body: Any) -> Reply:
        if body is STREAM:
            body = iter(_chunks())
        r = self.client.request(method, url, content=body, extensions=_httpx_ext(target, session))
        return Reply(r.status_code, r.content, px_httpx.exit_of(r))

    async def get(self, url: str, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._run(self._send, "GET", url, target, session, None)  # type: ignore[no-any-return]

    async def post(self, url: str, body: Any, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._run(self._send, "POST", url, target, session, body)  # type: ignore[no-any-return]


class HttpxAsync(Driver):
    name = "httpx_async"
    is_async = True

    async def _open(self, mgr: GatewayManager) -> None:
        self.client = httpx.AsyncClient(
            transport=px_httpx.AsyncProxaroTransport(mgr, verify=self.ssl),
            follow_redirects=True,
            timeout=15,
        )

    async def _close(self) -> None:
        await self.client.aclose()

    async def _send(self, method: str, url: str, target: Any, session: Any, body: Any) -> Reply:
        if body is STREAM:

            async def gen() -> AsyncIterator[bytes]:
                for c in _chunks():
                    yield c

            body = gen()
        r = await self.client.request(
            method, url, content=body, extensions=_httpx_ext(target, session)
        )
        return Reply(r.status_code, r.content, px_httpx.exit_of(r))

    async def get(self, url: str, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._send("GET", url, target, session, None)

    async def post(self, url: str, body: Any, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._send("POST", url, target, session, body)


class Requests(Driver):
    name = "requests"

    async def _open(self, mgr: GatewayManager) -> None:
        self.session = px_requests.ProxaroSession(mgr, pool_maxsize=16)

    async def _close(self) -> None:
        self.session.close()

    def _send(self, method: str, url: str, target: Any, session: Any, body: Any) -> Reply:
        kw: dict[str, Any] = {}
        if target is not UNSET:
            kw["proxaro"] = target
        if session is not None:
            kw["proxaro_session"] = session
        if body is STREAM:
            body = iter(_chunks())
        # verify per request: REQUESTS_CA_BUNDLE in the environment overrides session.verify.
        r = self.session.request(method, url, data=body, verify=self.sb.ca_cert, timeout=15, **kw)
        return Reply(r.status_code, r.content, px_requests.exit_of(r))

    async def get(self, url: str, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._run(self._send, "GET", url, target, session, None)  # type: ignore[no-any-return]

    async def post(self, url: str, body: Any, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._run(self._send, "POST", url, target, session, body)  # type: ignore[no-any-return]


class Aiohttp(Driver):
    name = "aiohttp"
    is_async = True

    async def _open(self, mgr: GatewayManager) -> None:
        self.middleware = px_aiohttp.ProxaroMiddleware(mgr)
        self.session = aiohttp.ClientSession(
            middlewares=(self.middleware,),
            connector=px_aiohttp.ProxaroConnector(ssl=self.ssl),
            timeout=aiohttp.ClientTimeout(total=15),
        )

    async def _close(self) -> None:
        await self.session.close()

    async def _send(self, method: str, url: str, target: Any, session: Any, body: Any) -> Reply:
        kw: dict[str, Any] = {}
        if target is not UNSET or session is not None:
            mw = self.middleware.using(
                target if target is not UNSET else PX_UNSET, session_key=session
            )
            kw["middlewares"] = (mw,)
        if body is STREAM:

            async def gen() -> AsyncIterator[bytes]:
                for c in _chunks():
                    yield c

            body = gen()
        async with self.session.request(method, url, data=body, **kw) as r:
            return Reply(r.status, await r.read(), px_aiohttp.exit_of(r))

    async def get(self, url: str, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._send("GET", url, target, session, None)

    async def post(self, url: str, body: Any, *, target: Any = UNSET, session: Any = None) -> Reply:
        return await self._send("POST", url, target, session, body)


DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (HttpxSync, HttpxAsync, Requests, Aiohttp)}
