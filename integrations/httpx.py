"""httpx transports that route every request through the Proxaro gateway.

::

    import httpx
    from proxaro_scrape import GatewayManager
    from proxaro_scrape.integrations.httpx import ProxaroTransport

    with GatewayManager(target={"country": "us"}) as mgr, httpx.Client(
        transport=ProxaroTransport(mgr), follow_redirects=True
    ) as client:
        r = client.get("https://shop.example/")                         # the default target
        r = client.get(url, extensions={"proxaro": {"country": "de"}})  # this request only
        r = client.get(url, extensions={"proxaro_session": "cart42"})   # sticky: one exit
        r = client.get(url, extensions={"proxaro": False})              # direct, no gateway
        r.extensions["proxaro_exit"]   # ExitInfo(ip=..., country=..., asn=..., exit_class=...)

:class:`AsyncProxaroTransport` is the twin for ``httpx.AsyncClient`` (``await mgr.astart()``).
Both also work in ``mounts`` (``{"https://": ProxaroTransport(mgr)}``).  A transport replaces
the client's own, so TLS settings go to the transport: ``ProxaroTransport(mgr,
verify=ssl_context)``; ``limits`` and other :class:`httpx.HTTPTransport` options too.

How a request travels:

- **Plain HTTP**: inner transports whose proxy is the gateway *without* credentials; each
  request carries its own ``Proxy-Authorization`` (the gateway authenticates every request on
  its own), so requests with different targets share keep-alive connections: the gateway sees
  no more connections than there are requests in flight, whatever the targeting.  The pool is
  split in :data:`PLAIN_SHARDS` shards, each with its part of ``limits``, and a request goes to
  the one with the fewest requests in flight (until its response is closed): httpcore's pool
  bookkeeping grows with the square of one pool's connections (at 64 in flight, one pool cost
  three times the CPU per request of four), while least-loaded shards never hold more than
  their share, so the bound on connections stays what it was.
- **HTTPS**: the tunnel is authenticated once, by its ``CONNECT``, so tunnels are pooled per
  gateway username and credentials version: inner transports in a bounded LRU
  (``tunnel_pools``), each closed when evicted and no longer carrying a request.  The exit of a
  tunnel (the ``CONNECT`` answer's ``X-Proxaro-Exit-*``) is remembered per connection, and a
  refused ``CONNECT``'s ``X-Proxaro-Error`` reaches the manager, through httpcore's ``trace``
  extension (a ``trace`` of your own is still called).  A kept-alive tunnel keeps its exit:
  over HTTPS, "a new exit per request" holds per tunnel, so use a sticky key or a session per
  identity when it matters (plain HTTP rotates on every request).
- **Answers** are classified by the manager (``rr.observe``) from status and headers, before
  the body is read, so streaming stays streaming.  407: fresh credentials, sent once more.
  Ban, dead region, exit failure, timeout: what the manager decides (new session, failover,
  retry).  An answer that will be retried is read (up to 64 KiB, so its connection is reused)
  or dropped with its connection; a banned tunnel is always dropped, since its exit is burnt.
  When the attempt budget is spent, :class:`~proxaro_scrape.AttemptsExhaustedError` is raised:
  a banned answer is never handed back as if it were the page.
- **Bodies**: bytes (``content=b"..."``, ``json=``, ``data=`` of a form) are resent as they are;
  a generator or a file being streamed cannot be, and a retry then raises
  :class:`~proxaro_scrape.RequestNotReplayableError`.
- **Credentials** never reach a target: the plain-HTTP ``Proxy-Authorization`` is put on the
  request for the attempt and taken off again (redirects and ``response.request`` never see
  it), and an HTTPS request never carries one (the tunnel's is on the ``CONNECT`` only).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

try:
    import httpx
except ImportError as _exc:  # pragma: no cover - httpx is a core dependency
    raise ImportError(
        'proxaro_scrape.integrations.httpx needs httpx: pip install "proxaro-scrape[httpx]"'
    ) from _exc

from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.gateway import ExitInfo, GatewayManager, RequestRouting, Route, Target
from proxaro_scrape.gateway.edge import (
    EXIT_KEY,
    PROXY_AUTHORIZATION,
    UNSET,
    Failure,
    PoolLRU,
    check_spec,
    failure_of,
    observe_answer,
    observe_failure,
    run_async,
    run_sync,
)
from proxaro_scrape.gateway.outcome import Outcome

from ._httpx_wire import (
    PLAIN_SHARDS,
    _AsyncReleasingStream,
    _AsyncTrace,
    _ConnectTrace,
    _drainable,
    _put_auth,
    _ReleasingStream,
    _shard_limits,
    _Shards,
    _SyncTrace,
    _take_auth,
)

__all__ = ["DEFAULT_LIMITS", "PLAIN_SHARDS", "AsyncProxaroTransport", "ProxaroTransport", "exit_of"]

#: Every plain-HTTP connection goes to the same gateway, so keep alive as many as may be open
#: (httpx's own default keeps 20 of 100, which makes a busy client reconnect all the time), and
#: for a minute: httpcore hands requests to the first idle connections, so under a busy CPU the
#: last ones idle past httpx's 5 s and are reopened (the benchmark saw 184 connections for 3,000
#: requests at 64 in flight; 64 with this).  A connection the gateway closed is detected and
#: dropped by httpcore before reuse, so a long expiry costs nothing.
DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=100, keepalive_expiry=60.0
)

_EXT_TARGET = "proxaro"
_EXT_SESSION = "proxaro_session"
#: httpx's exceptions → the core's vocabulary (first match wins).  A refused CONNECT is read
#: from the trace (its status and headers) before this table is asked.  Others (a local pool
#: timeout, a bad URL, a protocol misuse) are the caller's and are raised as they are.
FAILURES = (
    ((httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout), Failure.TIMEOUT),
    ((httpx.NetworkError, httpx.ProxyError, httpx.RemoteProtocolError), Failure.CONNECTION),
)


def exit_of(response: httpx.Response) -> ExitInfo | None:
    """The exit that carried ``response`` (``None`` when not routed or not reported)."""
    return response.extensions.get(EXIT_KEY)


def _replayable(request: httpx.Request) -> bool:
    # ByteStream (bytes, json, form data, no body) can be iterated again; generators, files
    # and multipart streams of files cannot be trusted to.
    return isinstance(request.stream, httpx.ByteStream)


class _Base:
    """What the sync and async transports share: configuration, targets, pools, exits."""

    def __init__(
        self,
        manager: GatewayManager,
        *,
        target: Target | Mapping[str, Any] | None = None,
        session_key: Any = None,
        tunnel_pools: int = 64,
        verify: Any = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        **options: Any,
    ) -> None:
        if not isinstance(manager, GatewayManager):
            raise ConfigurationError(
                "the first argument is a started GatewayManager", param="manager"
            )
        for name in ("proxy", "proxies"):
            if name in options:
                raise ConfigurationError(
                    f"the Proxaro transports choose the proxy themselves: drop {name}=",
                    param=name,
                )
        if isinstance(tunnel_pools, bool) or not isinstance(tunnel_pools, int) or tunnel_pools < 1:
            raise ConfigurationError(
                f"tunnel_pools is a whole number of at least 1, got {tunnel_pools!r}",
                param="tunnel_pools",
            )
        self._manager = manager
        spec = check_spec(target)
        if spec is False or spec is UNSET:
            raise ConfigurationError("target is a Target, a dict or None", param="target")
        self._target: Target | None = spec
        self._session_key = session_key
        ctx = verify
        if not hasattr(ctx, "wrap_socket"):
            # One SSL context for every inner transport: building one per pool costs ~ms.
            ctx = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        self._options: dict[str, Any] = {
            "verify": ctx,
            "trust_env": trust_env,
            "limits": limits,
            **options,
        }
        self._lock = threading.Lock()
        self._plain: _Shards | None = None
        self._retired: list[Any] = []
        self._direct: Any = None
        self._tunnels: PoolLRU[tuple[str, str, int], Any] = PoolLRU(tunnel_pools)
        self._tunnel_version = 0
        self._exits: weakref.WeakKeyDictionary[Any, list[tuple[bytes, bytes]]] = (
            weakref.WeakKeyDictionary()
        )
        self._exits_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} tunnel_pools={len(self._tunnels)}/{self._tunnels.maxsize} "
            f"manager={self._manager!r}>"
        )

    @property
    def manager(self) -> GatewayManager:
        """The gateway manager this transport routes with."""
        return self._manager

    # ------------------------------------------------------------------ per request

    def _begin(self, request: httpx.Request) -> RequestRouting | None:
        """The routing of ``request``, or ``None`` when it goes direct (``proxaro: False``)."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        ext = request.extensions
        spec = ext.get(_EXT_TARGET, UNSET)
        if spec is False:
            return None
        if spec is UNSET or spec is None:
            spec = self._target
        key = ext.get(_EXT_SESSION)
        if key is None:
            key = self._session_key
        return self._manager.request(str(request.url), spec, key)

    def _observe(
        self, rr: RequestRouting, response: httpx.Response, tunnel: bool, body: Any
    ) -> Outcome:
        return observe_answer(
            rr,
            response.status_code,
            response.headers,
            tunnel=tunnel,
            connect_headers=self._exit_pairs(response) if tunnel else None,
            body=body,
        )

    @staticmethod
    def _observe_failure(
        rr: RequestRouting, exc: Exception, trace: _ConnectTrace | None
    ) -> Outcome | None:
        """The outcome of a failed send, or ``None`` when the failure is the caller's."""
        if trace is not None and trace.status is not None and not 200 <= trace.status < 300:
            # A refused CONNECT: its status and X-Proxaro-Error say exactly why.
            return observe_failure(
                rr, Failure.TUNNEL_REFUSED, status=trace.status, headers=trace.headers
            )
        failure = failure_of(exc, FAILURES)
        return observe_failure(rr, failure) if failure is not None else None

    # ------------------------------------------------------------------ pools

    def _transport_class(self) -> Any:
        raise NotImplementedError

    def _plain_for(self, route: Route) -> _Shards:
        plain = self._plain
        url = route.gateway_url
        if plain is not None and plain.url == url:
            return plain
        with self._lock:
            plain = self._plain
            if plain is not None and plain.url == url:
                return plain
            if plain is not None:
                # The gateway moved (new credentials): requests in flight finish on the old
                # pools, which are closed with the transport.
                self._retired.extend(plain.pools)
            options = dict(self._options)
            make = self._transport_class()
            pools = []
            for limits in _shard_limits(options.pop("limits")):
                pools.append(make(proxy=httpx.Proxy(url), limits=limits, **options))
            self._plain = plain = _Shards(url, pools)
            return plain

    def _direct_transport(self) -> Any:
        if self._direct is None:
            with self._lock:
                if self._direct is None:
                    self._direct = self._transport_class()(**self._options)
        return self._direct

    def _tunnel_for(self, route: Route) -> tuple[Any, list[Any]]:
        version = route.credentials_version
        closing: list[Any] = []
        if version > self._tunnel_version:
            # Tunnels of older credentials keep serving what they carry, then close.
            self._tunnel_version = version
            closing = self._tunnels.retire(lambda key: key[2] < version)
        key = (route.gateway_url, route.username, version)

        def create() -> Any:
            proxy = httpx.Proxy(route.gateway_url, auth=(route.username, route.password.reveal()))
            return self._transport_class()(proxy=proxy, **self._options)

        entry, evicted = self._tunnels.acquire(key, create)
        return entry, closing + evicted

    def _remember_exit(self, stream: Any, pairs: list[tuple[bytes, bytes]]) -> None:
        try:
            with self._exits_lock:
                self._exits[stream] = pairs
        except TypeError:  # a stream that cannot be weakly referenced: no exit for it
            pass

    def _exit_pairs(self, response: httpx.Response) -> list[tuple[bytes, bytes]]:
        stream = response.extensions.get("network_stream")
        if stream is None:
            return []
        with self._exits_lock:
            try:
                return self._exits.get(stream) or []
            except TypeError:
                return []

    def _all_pools(self) -> list[Any]:
        self._closed = True
        with self._lock:
            pools = list(self._retired)
            self._retired.clear()
            if self._plain is not None:
                pools.extend(self._plain.pools)
                self._plain = None
            if self._direct is not None:
                pools.append(self._direct)
                self._direct = None
        return pools + self._tunnels.drain()


class ProxaroTransport(_Base, httpx.BaseTransport):
    """An httpx transport that routes each request through the Proxaro gateway.

    >>> client = httpx.Client(transport=ProxaroTransport(mgr))         # doctest: +SKIP
    >>> client.get(url, extensions={"proxaro": {"country": "de"}})     # doctest: +SKIP

    ``manager`` is a started :class:`~proxaro_scrape.GatewayManager` (the transport neither
    starts nor closes it).  ``target`` (a Target or dict) is this transport's default target,
    else the manager's; ``session_key`` a default sticky key.  Per request,
    ``extensions={"proxaro": Target | dict | False}`` (``False``: send direct) and
    ``extensions={"proxaro_session": key}``.  ``tunnel_pools`` bounds the HTTPS pools kept
    (one per gateway username).  ``verify``, ``cert``, ``trust_env``, ``limits`` and any other
    keyword go to every inner :class:`httpx.HTTPTransport`.  See the module docstring.
    """

    def _transport_class(self) -> Any:
        return httpx.HTTPTransport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the gateway, retrying as the manager decides."""
        rr = self._begin(request)
        if rr is None:
            return self._direct_transport().handle_request(request)  # type: ignore[no-any-return]
        tunnel = request.url.scheme == "https"
        headers = request.headers
        if tunnel and PROXY_AUTHORIZATION in headers:
            del headers[PROXY_AUTHORIZATION]  # inside a tunnel it would reach the target
        send = self._send_tunnel if tunnel else self._send_plain
        return run_sync(
            self._manager,
            rr,
            lambda route: send(request, route, rr),
            replayable=_replayable(request),
            method=request.method,
        )

    def _send_plain(
        self, request: httpx.Request, route: Route, rr: RequestRouting
    ) -> tuple[httpx.Response | None, Outcome, BaseException | None]:
        shards = self._plain_for(route)
        transport, shard = shards.take()
        headers = request.headers
        token = _put_auth(headers, route.proxy_authorization)
        try:
            response = transport.handle_request(request)
        except BaseException as exc:
            shards.give(shard)
            outcome = self._observe_failure(rr, exc, None) if isinstance(exc, Exception) else None
            if outcome is None:
                raise
            return None, outcome, exc
        finally:
            # Off again at once: the client builds redirects from this very request.
            _take_auth(headers, token)
        try:
            body = response.read() if rr.is_ban is not None else None
            outcome = self._observe(rr, response, False, body)
        except BaseException:
            response.close()
            shards.give(shard)
            raise
        if outcome.ok:
            response.extensions[EXIT_KEY] = outcome.exit
            response.stream = _ReleasingStream(response.stream, lambda: shards.give(shard))
            return response, outcome, None
        self._discard(response, reuse=True)
        shards.give(shard)
        return None, outcome, None

    def _send_tunnel(
        self, request: httpx.Request, route: Route, rr: RequestRouting
    ) -> tuple[httpx.Response | None, Outcome, BaseException | None]:
        entry, closing = self._tunnel_for(route)
        for pool in closing:
            pool.close()
        saved = request.extensions
        trace = _SyncTrace(self, saved.get("trace"))
        request.extensions = {**saved, "trace": trace}
        try:
            response = entry.value.handle_request(request)
        except BaseException as exc:
            self._release(entry)
            failed = self._observe_failure(rr, exc, trace) if isinstance(exc, Exception) else None
            if failed is None:
                raise
            return None, failed, exc
        finally:
            request.extensions = saved
        try:
            body = response.read() if rr.is_ban is not None else None
            outcome = self._observe(rr, response, True, body)
        except BaseException:
            response.close()
            self._release(entry)
            raise
        if outcome.ok:
            response.extensions[EXIT_KEY] = outcome.exit
            response.stream = _ReleasingStream(response.stream, lambda: self._release(entry))
            return response, outcome, None
        # A failed answer through a tunnel: drop the tunnel, its exit may be burnt for this
        # site (a kept-alive tunnel would carry the next attempt through the same exit).
        self._discard(response, reuse=False)
        self._release(entry)
        return None, outcome, None

    def _release(self, entry: Any) -> None:
        pool = self._tunnels.release(entry)
        if pool is not None:
            pool.close()

    @staticmethod
    def _discard(response: httpx.Response, *, reuse: bool) -> None:
        try:
            if reuse and _drainable(response):
                response.read()
        except httpx.HTTPError:
            pass
        finally:
            response.close()

    def close(self) -> None:
        """Close every inner transport (idempotent; the manager stays as it is)."""
        for pool in self._all_pools():
            pool.close()


class AsyncProxaroTransport(_Base, httpx.AsyncBaseTransport):
    """Async twin of :class:`ProxaroTransport`, for ``httpx.AsyncClient``.

    >>> client = httpx.AsyncClient(transport=AsyncProxaroTransport(mgr))  # doctest: +SKIP

    Same arguments and per-request extensions.  Credentials are refreshed with
    ``await manager.arefresh_credentials(...)``; start the manager with ``await mgr.astart()``
    (or ``mgr.start()``: both drivers serve either transport).
    """

    def _transport_class(self) -> Any:
        return httpx.AsyncHTTPTransport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the gateway, retrying as the manager decides."""
        rr = self._begin(request)
        if rr is None:
            return await self._direct_transport().handle_async_request(request)  # type: ignore[no-any-return]
        tunnel = request.url.scheme == "https"
        headers = request.headers
        if tunnel and PROXY_AUTHORIZATION in headers:
            del headers[PROXY_AUTHORIZATION]
        send = self._send_tunnel if tunnel else self._send_plain
        return await run_async(
            self._manager,
            rr,
            lambda route: send(request, route, rr),
            replayable=_replayable(request),
            method=request.method,
        )

    async def _send_plain(
        self, request: httpx.Request, route: Route, rr: RequestRouting
    ) -> tuple[httpx.Response | None, Outcome, BaseException | None]:
        shards = self._plain_for(route)
        transport, shard = shards.take()
        headers = request.headers
        token = _put_auth(headers, route.proxy_authorization)
        try:
            response = await transport.handle_async_request(request)
        except BaseException as exc:
            shards.give(shard)
            outcome = self._observe_failure(rr, exc, None) if isinstance(exc, Exception) else None
            if outcome is None:
                raise
            return None, outcome, exc
        finally:
            _take_auth(headers, token)
        try:
            body = await response.aread() if rr.is_ban is not None else None
            outcome = self._observe(rr, response, False, body)
        except BaseException:
            await response.aclose()
            shards.give(shard)
            raise

        async def give() -> None:
            shards.give(shard)

        if outcome.ok:
            response.extensions[EXIT_KEY] = outcome.exit
            response.stream = _AsyncReleasingStream(response.stream, give)
            return response, outcome, None
        await self._discard(response, reuse=True)
        shards.give(shard)
        return None, outcome, None

    async def _send_tunnel(
        self, request: httpx.Request, route: Route, rr: RequestRouting
    ) -> tuple[httpx.Response | None, Outcome, BaseException | None]:
        entry, closing = self._tunnel_for(route)
        for pool in closing:
            await pool.aclose()
        saved = request.extensions
        trace = _AsyncTrace(self, saved.get("trace"))
        request.extensions = {**saved, "trace": trace}
        try:
            response = await entry.value.handle_async_request(request)
        except BaseException as exc:
            await self._release(entry)
            failed = self._observe_failure(rr, exc, trace) if isinstance(exc, Exception) else None
            if failed is None:
                raise
            return None, failed, exc
        finally:
            request.extensions = saved
        try:
            body = await response.aread() if rr.is_ban is not None else None
            outcome = self._observe(rr, response, True, body)
        except BaseException:
            await response.aclose()
            await self._release(entry)
            raise
        if outcome.ok:
            response.extensions[EXIT_KEY] = outcome.exit

            async def release() -> None:
                await self._release(entry)

            response.stream = _AsyncReleasingStream(response.stream, release)
            return response, outcome, None
        await self._discard(response, reuse=False)
        await self._release(entry)
        return None, outcome, None

    async def _release(self, entry: Any) -> None:
        pool = self._tunnels.release(entry)
        if pool is not None:
            await pool.aclose()

    @staticmethod
    async def _discard(response: httpx.Response, *, reuse: bool) -> None:
        try:
            if reuse and _drainable(response):
                await response.aread()
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close every inner transport (idempotent; the manager stays as it is)."""
        for pool in self._all_pools():
            await pool.aclose()
