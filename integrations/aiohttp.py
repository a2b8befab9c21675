"""aiohttp: a client middleware that routes every request through the Proxaro gateway.

::

    import aiohttp
    from proxaro_scrape import GatewayManager
    from proxaro_scrape.integrations.aiohttp import ProxaroMiddleware, exit_of

    async with GatewayManager(target={"country": "us"}) as mgr:
        proxaro = ProxaroMiddleware(mgr)
        async with aiohttp.ClientSession(middlewares=(proxaro,)) as session:
            async with session.get(url) as r:                               # the default target
                exit_of(r)     # ExitInfo(ip=..., country=...) (plain HTTP; None through a tunnel)
            de = proxaro.using({"country": "de"})                           # this request only
            async with session.get(url, middlewares=(de,)) as r: ...
            sticky = proxaro.using(session_key="cart42")                    # one exit
            async with session.get(url, middlewares=(sticky,)) as r: ...
            direct = proxaro.using(False)                                   # no gateway

**Why a middleware, and not a session wrapper.**  Client middlewares (aiohttp >= 3.12) run
once per request *and per redirect hop*, before the connector picks a connection, and receive
the :class:`aiohttp.ClientRequest` itself.  Its proxy is read from the request when a
connection is chosen (``req.connection_key`` is computed from ``req.proxy``,
``req.proxy_auth`` and ``req.proxy_headers`` each time) and again when the request line is
written (absolute-form through a proxy), so ``req.update_proxy(...)`` inside a middleware
routes that very request; the test suite checks it against a real proxy.  A middleware may also
call the handler again, which is how a retry resends the same request.  So no wrapper is
needed, and a ``ClientSession`` of your own (with your connector, cookie jar and other
middlewares) keeps working as it is.  Per-request targeting uses aiohttp's own per-request
``middlewares=`` argument (which replaces the session's list for that request: list any other
middlewares of yours there too).

How a request travels (the same design as the httpx transport):

- **Plain HTTP**: ``proxy`` is the gateway *without* credentials and the request itself carries
  ``Proxy-Authorization``.  aiohttp keys pooled connections by proxy, proxy auth and proxy
  headers, so this keeps one pool for every target: the gateway sees no more connections than
  requests in flight.  The header is removed from the request when the attempt is over, so
  ``response.request_info`` and redirects never show it.
- **HTTPS**: ``proxy_headers`` with the ``Proxy-Authorization`` of the gateway username go on
  the ``CONNECT`` only; tunnels are pooled per username by aiohttp's connector (bounded by its
  ``limit``, idle ones closed after its ``keepalive_timeout``).  A kept-alive tunnel keeps its
  exit, so without a sticky key HTTPS rotates per tunnel, not per request.  A refused
  ``CONNECT``'s status and ``X-Proxaro-Error`` reach the manager (``ClientHttpProxyError``
  carries them).
- **Answers** are classified by the manager from status and headers before the body is read;
  retries, credential refreshes, failover and the final
  :class:`~proxaro_scrape.AttemptsExhaustedError` are its decisions.  A failed answer is read
  and released (plain HTTP, up to 64 KiB) or closed with its connection (a tunnel: its exit may
  be burnt for that site).
- **Bodies**: bytes, str, forms and JSON are resent on a retry; a one-shot stream (an async
  generator, say) cannot be, and the retry raises
  :class:`~proxaro_scrape.RequestNotReplayableError`.
- **Secrets**: aiohttp keeps the ``CONNECT``'s headers in the request info of a refused
  tunnel's error (and a ``BasicAuth`` proxy auth in connection keys); an aiohttp error raised
  through this middleware is scrubbed of both first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import aiohttp
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL
except ImportError as _exc:  # pragma: no cover - aiohttp is a core dependency
    raise ImportError(
        "proxaro_scrape.integrations.aiohttp needs aiohttp >= 3.12: "
        'pip install "proxaro-scrape[aiohttp]"'
    ) from _exc

from proxaro_scrape.gateway import ExitInfo, GatewayManager, RequestRouting, Route, Target
from proxaro_scrape.gateway.outcome import Outcome

from ._common import (
    DRAIN_LIMIT,
    PROXY_AUTHORIZATION,
    UNSET,
    cert_failure,
    check_spec,
    final_error,
    gateway_pairs,
    lookup_gateway_pairs,
    not_replayable,
)

__all__ = ["ProxaroMiddleware", "exit_of"]

_EXIT_ATTR = "proxaro_exit"

# What a gateway, an exit or a target can cause; anything else is raised as it is.
_GATEWAY_FAULTS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
_CALLER_FAULTS = (aiohttp.ClientConnectorCertificateError, aiohttp.InvalidURL)


def exit_of(response: ClientResponse) -> ExitInfo | None:
    """The exit that carried ``response`` (``None`` through a tunnel or when not routed).

    Through an HTTPS tunnel the exit is named only in the ``CONNECT`` answer, which aiohttp's
    connector reads and drops.
    """
    return getattr(response, _EXIT_ATTR, None)


class _Shared:
    """State shared by a middleware and the per-request views made by ``using``."""

    __slots__ = ("manager", "urls")

    def __init__(self, manager: GatewayManager) -> None:
        self.manager = manager
        self.urls: dict[str, URL] = {}

    def gateway(self, route: Route) -> URL:
        url = self.urls.get(route.gateway_url)
        if url is None:
            url = self.urls[route.gateway_url] = URL(route.gateway_url)
        return url


class ProxaroMiddleware:
    """An aiohttp client middleware: ``ClientSession(middlewares=(ProxaroMiddleware(mgr),))``.

    ``manager`` is a started :class:`~proxaro_scrape.GatewayManager` (``await mgr.astart()``;
    the middleware neither starts nor closes it).  ``target`` (a Target, a dict, ``None`` for
    the manager's default, or ``False`` to send direct) and ``session_key`` (a sticky key) apply
    to every request it routes; :meth:`using` makes a variant for one request.
    """

    __slots__ = ("_shared", "_target", "_session_key")

    def __init__(
        self,
        manager: GatewayManager,
        *,
        target: Target | Mapping[str, Any] | None | bool = None,
        session_key: Any = None,
    ) -> None:
        if not isinstance(manager, GatewayManager):
            raise TypeError("the first argument is a started GatewayManager")
        spec = check_spec(target)
        self._shared = _Shared(manager)
        self._target: Any = None if spec is UNSET else spec
        self._session_key = session_key

    def __repr__(self) -> str:
        return f"<ProxaroMiddleware target={self._target!r} manager={self._shared.manager!r}>"

    @property
    def manager(self) -> GatewayManager:
        """The gateway manager this middleware routes with."""
        return self._shared.manager

    def using(
        self, target: Target | Mapping[str, Any] | None | bool = UNSET, *, session_key: Any = None
    ) -> ProxaroMiddleware:
        """A variant for one request: ``session.get(url, middlewares=(mw.using(...),))``.

        ``target`` replaces this middleware's target when given (``False``: send direct);
        ``session_key`` makes the request sticky under that key.  Cheap: it shares the
        manager and every cache with this middleware.
        """
        view = object.__new__(ProxaroMiddleware)
        view._shared = self._shared
        spec = check_spec(target)
        view._target = self._target if spec is UNSET else spec
        view._session_key = self._session_key if session_key is None else session_key
        return view

    async def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Route ``req`` through the gateway, retrying as the manager decides."""
        if self._target is False:
            return await handler(req)
        shared = self._shared
        manager = shared.manager
        tunnel = req.is_ssl()
        headers = req.headers
        if tunnel:
            # From the caller or a hook: inside a tunnel it would reach the target.
            headers.popall(PROXY_AUTHORIZATION, None)
        rr = manager.request(str(req.url), self._target, self._session_key)
        while True:
            route = rr.next_route()
            response, outcome, error = await self._attempt(req, handler, route, rr, tunnel)
            if response is not None:
                return response
            if not outcome.retry:
                raise final_error(outcome) from error
            body = req.body
            if getattr(body, "consumed", False):
                raise not_replayable(req.method, str(req.url), outcome) from error
            if outcome.refresh:
                await manager.arefresh_credentials(route.credentials_version)

    async def _attempt(
        self,
        req: ClientRequest,
        handler: ClientHandlerType,
        route: Route,
        rr: RequestRouting,
        tunnel: bool,
    ) -> tuple[ClientResponse | None, Outcome, BaseException | None]:
        shared = self._shared
        headers = req.headers
        if tunnel:
            # The CONNECT's own header (aiohttp >= 3.14 deprecates BasicAuth).  A fresh dict
            # each time: the connector adds Host to the one it is given.
            proxy_headers = CIMultiDict(((PROXY_AUTHORIZATION, route.proxy_authorization),))
            req.update_proxy(shared.gateway(route), None, proxy_headers)
        else:
            req.update_proxy(shared.gateway(route), None, None)
            headers[PROXY_AUTHORIZATION] = route.proxy_authorization
        try:
            response = await handler(req)
        except aiohttp.ClientHttpProxyError as exc:
            # A refused CONNECT: its status and X-Proxaro-Error say exactly why.
            _scrub(exc)
            return None, rr.observe(status=exc.status, headers=exc.headers), exc
        except _CALLER_FAULTS as exc:
            _scrub(exc)
            raise
        except _GATEWAY_FAULTS as exc:
            _scrub(exc)
            if cert_failure(exc):
                raise
            return None, rr.observe(exception=exc), exc
        finally:
            if not tunnel:
                # Off the request at once: the response's request_info is a live view of it.
                headers.popall(PROXY_AUTHORIZATION, None)
        try:
            # The user's is_ban hook may look at the body; without one it stays unread.
            body = await response.read() if self._shared.manager.core.is_ban else None
            outcome = self._observe(rr, response, tunnel, body)
        except BaseException:
            response.close()
            raise
        if outcome.ok:
            setattr(response, _EXIT_ATTR, outcome.exit)
            return response, outcome, None
        await _discard(response, reuse=not tunnel)
        return None, outcome, None

    def _observe(
        self, rr: RequestRouting, response: ClientResponse, tunnel: bool, body: bytes | None
    ) -> Outcome:
        status = response.status
        if body is not None:
            # An is_ban hook: it gets the site's headers and the body.
            items = list(response.headers.items())
            if tunnel:
                items = [p for p in items if not gateway_pairs([p])]
            return rr.observe(status=status, headers=items, body=body)
        if tunnel:
            # Every header inside a tunnel is the target's, which could pose as the gateway.
            return rr.observe(status=status, headers=())
        return rr.observe(status=status, headers=lookup_gateway_pairs(response.headers))


async def _discard(response: ClientResponse, *, reuse: bool) -> None:
    length = response.content_length
    if reuse and length is not None and length <= DRAIN_LIMIT:
        try:
            await response.read()
        except aiohttp.ClientError:
            response.close()
            return
        response.release()
        return
    # aiohttp hands a connection back to its pool as soon as a short body has arrived, before
    # anyone reads it: closing the response is then too late to drop the connection, so its
    # protocol is closed as well (the pool discards a closed connection).
    protocol = getattr(response, "_protocol", None)
    response.close()
    if protocol is not None:
        protocol.close()


def _scrub(exc: BaseException) -> None:
    """Take the gateway credentials out of an aiohttp exception (its repr shows them)."""
    key = getattr(exc, "_conn_key", None)
    if key is not None and getattr(key, "proxy_auth", None) is not None:
        clean = key._replace(proxy_auth=None, proxy_headers_hash=None)
        exc._conn_key = clean  # type: ignore[attr-defined]
        exc.args = tuple(clean if a is key else a for a in exc.args)
    info = getattr(exc, "request_info", None)
    if info is not None and PROXY_AUTHORIZATION in info.headers:
        headers = CIMultiDict(info.headers)
        headers.popall(PROXY_AUTHORIZATION, None)
        clean_info = aiohttp.RequestInfo(
            info.url, info.method, CIMultiDictProxy(headers), info.real_url
        )
        exc.request_info = clean_info  # type: ignore[attr-defined]
        exc.args = tuple(clean_info if a is info else a for a in exc.args)
