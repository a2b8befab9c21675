"""aiohttp: a client middleware that routes every request through the Proxaro gateway.

::

    import aiohttp
    from proxaro_scrape import GatewayManager
    from proxaro_scrape.integrations.aiohttp import ProxaroConnector, ProxaroMiddleware, exit_of

    async with GatewayManager(target={"country": "us"}) as mgr:
        proxaro = ProxaroMiddleware(mgr)
        async with aiohttp.ClientSession(
            connector=ProxaroConnector(), middlewares=(proxaro,)
        ) as session:
            async with session.get(url) as r:                               # the default target
                exit_of(r)     # ExitInfo(ip=..., country=...), over HTTP and HTTPS
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
  the ``CONNECT`` only; tunnels are pooled per username by aiohttp's connector.  A kept-alive
  tunnel keeps its exit, so without a sticky key HTTPS rotates per tunnel, not per request.  A
  refused ``CONNECT``'s status and ``X-Proxaro-Error`` reach the manager
  (``ClientHttpProxyError`` carries them).
- **:class:`ProxaroConnector`** (a :class:`aiohttp.TCPConnector`; use it as the session's
  connector) adds two things aiohttp's own lacks: it keeps the gateway's answer to each
  tunnel's ``CONNECT`` (aiohttp reads it and drops it), so :func:`exit_of` names the exit over
  HTTPS too; and it bounds the usernames whose idle tunnels it keeps (``max_tunnel_keys``,
  least recently used first), as the httpx and requests integrations bound theirs: every new
  sticky key opens a tunnel of its own, which aiohttp would otherwise keep until its
  ``keepalive_timeout``.  Both rest on two of aiohttp's private connector methods (checked at
  construction: an aiohttp without them gets a plain connector's behaviour and a warning).
  With any other connector the middleware routes all the same; only the HTTPS exit is then
  ``None``.
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

import asyncio
import contextvars
import logging
import os
import weakref
from collections import OrderedDict
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

from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.gateway import ExitInfo, GatewayManager, RequestRouting, Route, Target
from proxaro_scrape.gateway.edge import (
    DRAIN_LIMIT,
    EXIT_KEY,
    PROXY_AUTHORIZATION,
    UNSET,
    Failure,
    check_spec,
    failure_of,
    gateway_pairs,
    observe_answer,
    observe_failure,
    run_async,
)
from proxaro_scrape.gateway.outcome import Outcome

__all__ = ["ProxaroConnector", "ProxaroMiddleware", "exit_of"]

logger = logging.getLogger("proxaro_scrape.integrations.aiohttp")

#: aiohttp's exceptions → the core's vocabulary (first match wins).  A refused CONNECT
#: (``ClientHttpProxyError``) is handled before the table: it carries the gateway's answer.
#: Others (a bad URL, a closed session) are the caller's and are raised as they are.
FAILURES = (
    (aiohttp.ClientConnectorCertificateError, Failure.TLS),
    ((aiohttp.ConnectionTimeoutError, aiohttp.SocketTimeoutError, asyncio.TimeoutError),
     Failure.TIMEOUT),
    ((aiohttp.ClientConnectionError, aiohttp.ClientPayloadError), Failure.CONNECTION),
)  # fmt: skip
_CALLER_FAULTS = (aiohttp.InvalidURL,)
_AIOHTTP_DIR = os.path.dirname(aiohttp.__file__)


def _lost_connection(exc: BaseException) -> bool:
    """aiohttp (3.14, seen on Python 3.13) reads an answer from a connection that closed under
    it, when the gateway refuses a streamed body and closes while the body is still being
    written: ``ClientResponse.start`` then raises ``AttributeError`` (its protocol is ``None``)
    instead of a ``ClientConnectionError``.  Such an error, raised inside aiohttp itself, is a
    lost connection; an ``AttributeError`` from anywhere else is a bug, and propagates."""
    if not isinstance(exc, AttributeError):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.dirname(tb.tb_frame.f_code.co_filename) == _AIOHTTP_DIR


def exit_of(response: ClientResponse) -> ExitInfo | None:
    """The exit that carried ``response`` (``None`` when not routed or not reported).

    Over HTTPS the exit is known when the session's connector is a :class:`ProxaroConnector`
    (aiohttp's own reads the ``CONNECT`` answer and drops it).
    """
    return getattr(response, EXIT_KEY, None)


#: Set while a ProxaroConnector opens a tunnel: where its CONNECT answer's headers go.
_CONNECT_SINK: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "proxaro_aiohttp_connect", default=None
)


#: Each ProxaroConnector tunnel's connection (its protocol) → its CONNECT answer's headers.
_TUNNEL_ANSWERS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _connect_answer(response: ClientResponse) -> list[Any] | None:
    """The gateway's headers in the CONNECT answer of ``response``'s tunnel, if known."""
    conn = response.connection
    # A short body may have handed the connection back already; the response keeps its
    # protocol (aiohttp's own discard path reads it too).
    proto = conn.protocol if conn is not None else getattr(response, "_protocol", None)
    return _TUNNEL_ANSWERS.get(proto) if proto is not None else None


class _ConnectAnswer(ClientResponse):
    """The response class of a ProxaroConnector's CONNECT: hands its headers to the sink."""

    async def start(self, connection: Any) -> ClientResponse:
        resp = await super().start(connection)
        sink = _CONNECT_SINK.get()
        if sink is not None:
            sink.append(gateway_pairs(self.headers.items()))
        return resp


class ProxaroConnector(aiohttp.TCPConnector):
    """A :class:`aiohttp.TCPConnector` that knows each tunnel's exit and bounds idle tunnels.

    ``max_tunnel_keys`` (default 64): how many gateway usernames keep idle tunnels; the idle
    tunnels of the least recently used are closed past that.  Other keywords go to
    :class:`aiohttp.TCPConnector`.  See the module docstring.
    """

    def __init__(self, *, max_tunnel_keys: int = 64, **kwargs: Any) -> None:
        if (
            isinstance(max_tunnel_keys, bool)
            or not isinstance(max_tunnel_keys, int)
            or max_tunnel_keys < 1
        ):
            raise ConfigurationError(
                f"max_tunnel_keys is a whole number of at least 1, got {max_tunnel_keys!r}",
                param="max_tunnel_keys",
            )
        super().__init__(**kwargs)
        self.max_tunnel_keys = max_tunnel_keys
        self._tunnel_keys: OrderedDict[Any, None] = OrderedDict()
        self._tunnel_exits: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        base = aiohttp.TCPConnector
        self._hooked = all(
            callable(getattr(base, name, None))
            for name in (
                "_update_proxy_auth_header_and_build_proxy_req",
                "_create_proxy_connection",
                "_release",
            )
        )
        if not self._hooked:  # pragma: no cover - another aiohttp
            logger.warning(
                "this aiohttp (%s) lacks the connector methods ProxaroConnector extends: the "
                "HTTPS exit is not reported and idle tunnels are not bounded",
                aiohttp.__version__,
            )

    def _update_proxy_auth_header_and_build_proxy_req(self, req: ClientRequest) -> ClientRequest:
        proxy_req = super()._update_proxy_auth_header_and_build_proxy_req(req)  # type: ignore[misc]
        if self._hooked and req.is_ssl():
            proxy_req.response_class = _ConnectAnswer
        return proxy_req  # type: ignore[no-any-return]

    async def _create_proxy_connection(self, req: ClientRequest, *args: Any, **kwargs: Any) -> Any:
        sink: list[Any] = []
        token = _CONNECT_SINK.set(sink)
        try:
            transport, proto = await super()._create_proxy_connection(  # type: ignore[misc]
                req, *args, **kwargs
            )
        finally:
            _CONNECT_SINK.reset(token)
        if sink:
            _TUNNEL_ANSWERS[proto] = sink[-1]
        return transport, proto

    def _release(self, key: Any, protocol: Any, *args: Any, **kwargs: Any) -> None:
        super()._release(key, protocol, *args, **kwargs)  # type: ignore[misc]
        if not (self._hooked and key.is_ssl and key.proxy is not None):
            return
        keys = self._tunnel_keys
        keys[key] = None
        keys.move_to_end(key)
        while len(keys) > self.max_tunnel_keys:
            old, _ = keys.popitem(last=False)
            for proto, _since in self._conns.pop(old, ()):  # type: ignore[attr-defined]
                transport = proto.transport
                proto.close()
                if transport is not None:
                    # A TLS transport's close waits for the gateway's close_notify; an idle
                    # tunnel has nothing left to say: let its socket go now.
                    transport.abort()


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
            raise ConfigurationError(
                "the first argument is a started GatewayManager", param="manager"
            )
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
        manager = self._shared.manager
        tunnel = req.is_ssl()
        if tunnel:
            # From the caller or a hook: inside a tunnel it would reach the target.
            req.headers.popall(PROXY_AUTHORIZATION, None)
        rr = manager.request(str(req.url), self._target, self._session_key)
        # The first attempt here, the loop only after a failed one: the common case needs
        # none of the loop's closures and coroutine frames (see run_async's ``first``).
        route = rr.next_route()
        response, outcome, exc = await self._attempt(req, handler, route, rr, tunnel)
        if outcome.ok:
            assert response is not None
            return response

        async def attempt(route: Route) -> tuple[ClientResponse | None, Outcome, Exception | None]:
            return await self._attempt(req, handler, route, rr, tunnel)

        def replayable() -> bool:
            # A one-shot body (an async generator) is consumed once sent.
            return not getattr(req.body, "consumed", False)

        return await run_async(
            manager,
            rr,
            attempt,
            replayable=replayable,
            method=req.method,
            first=(route, response, outcome, exc),
        )

    async def _attempt(
        self,
        req: ClientRequest,
        handler: ClientHandlerType,
        route: Route,
        rr: RequestRouting,
        tunnel: bool,
    ) -> tuple[ClientResponse | None, Outcome, Exception | None]:
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
            outcome = observe_failure(
                rr, Failure.TUNNEL_REFUSED, status=exc.status, headers=exc.headers
            )
            return None, outcome, exc
        except Exception as exc:
            _scrub(exc)
            if isinstance(exc, _CALLER_FAULTS):
                raise
            failure = Failure.CONNECTION if _lost_connection(exc) else failure_of(exc, FAILURES)
            if failure is None:
                raise
            return None, observe_failure(rr, failure), exc
        finally:
            if not tunnel:
                # Off the request at once: the response's request_info is a live view of it.
                headers.popall(PROXY_AUTHORIZATION, None)
        try:
            connect = _connect_answer(response) if tunnel else None
            # The user's is_ban hook may look at the body; without one it stays unread.
            body = await response.read() if rr.is_ban is not None else None
            outcome = observe_answer(
                rr,
                response.status,
                response.headers,
                tunnel=tunnel,
                connect_headers=connect,
                body=body,
            )
        except BaseException:
            response.close()
            raise
        if outcome.ok:
            setattr(response, EXIT_KEY, outcome.exit)
            return response, outcome, None
        await _discard(response, req, reuse=not tunnel)
        return None, outcome, None


async def _discard(response: ClientResponse, req: ClientRequest, *, reuse: bool) -> None:
    length = response.content_length
    if reuse and length is not None and length <= DRAIN_LIMIT:
        try:
            await response.read()
        except aiohttp.ClientError:
            response.close()
            return
        response.release()
        return
    # Not to be reused (a tunnel holds on to its exit: the next attempt must CONNECT anew).
    # While the body is still arriving, closing the response closes its connection.  But
    # aiohttp hands a connection back to its pool as soon as a short body has arrived, before
    # anyone reads it, and another request may have taken it from there since: so once the
    # connection is back, it is closed only if it still waits idle in the pool.
    released = getattr(response, "_connection", None) is None
    protocol = getattr(response, "_protocol", None)
    response.close()
    if released and protocol is not None:
        _close_if_idle(getattr(getattr(req, "session", None), "connector", None), protocol)


def _close_if_idle(connector: Any, protocol: Any) -> bool:
    """Take ``protocol`` out of ``connector``'s idle pool and close it (``True``); if it is not
    there (another request is using it), leave it alone (``False``)."""
    pools = getattr(connector, "_conns", None)
    if not isinstance(pools, dict):  # pragma: no cover - another aiohttp
        return False
    for key, idle in pools.items():
        for item in idle:
            if item[0] is protocol:
                idle.remove(item)
                if not idle:
                    del pools[key]
                protocol.close()
                return True
    return False


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
