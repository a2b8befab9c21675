"""requests: an adapter (and a session) that route every request through the Proxaro gateway.

::

    from proxaro_scrape import GatewayManager
    from proxaro_scrape.integrations.requests import ProxaroSession

    with GatewayManager(target={"country": "us"}) as mgr, ProxaroSession(mgr) as session:
        r = session.get("https://shop.example/")                           # the default target
        r = session.get(url, proxaro={"country": "de"})                     # this request only
        r = session.get(url, proxaro_session="cart42")                      # sticky: one exit
        r = session.get(url, proxaro=False)                                 # direct, no gateway
        exit_of(r)            # ExitInfo(ip=..., country=...), over HTTP and HTTPS alike

:class:`ProxaroSession` is a :class:`requests.Session` with a :class:`ProxaroAdapter` mounted
on ``http://`` and ``https://`` whose request methods also take ``proxaro=`` (a Target, a dict,
or ``False``) and ``proxaro_session=`` (a sticky key).  With a session of your own, mount the
adapter yourself and target per request with the :func:`routing` context manager::

    session = requests.Session()
    adapter = ProxaroAdapter(mgr)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    with routing({"country": "de"}, session_key="cart42"):
        session.get(url)

Both spellings set a context variable that the adapter reads on every send, so the target
holds for every hop of a redirect chain, and nothing travels in a header.  Per thread, as
requests itself is used.

How a request travels (the same design as the httpx transport):

- **Plain HTTP**: one urllib3 ``ProxyManager`` for the gateway *without* credentials, so one
  connection pool carries every target; each attempt carries its ``Proxy-Authorization``
  header, put on the prepared request for the attempt and taken off again.  Size
  ``pool_maxsize`` to your thread count (requests' default keeps 10 connections).
- **HTTPS**: a ``ProxyManager`` per gateway username and credentials version (the tunnel is
  authenticated by its ``CONNECT``), in a bounded LRU (``max_proxy_managers``); an evicted one
  is cleared, which closes its idle connections and lets busy ones finish.  A kept-alive tunnel
  keeps its exit, so without a sticky key HTTPS rotates per tunnel, not per request.  Its
  connections read the ``CONNECT`` answer themselves (urllib3 reads and drops it), so the
  tunnel's exit is known and a refused ``CONNECT`` reaches the manager with its status and
  ``X-Proxaro-Error``.
- **Answers** are observed through the integration contract
  (:mod:`proxaro_scrape.gateway.edge`) before the body is read (``stream=True`` stays
  streaming): inside a tunnel only the ``CONNECT`` answer's ``X-Proxaro-*`` count, so a site's
  own headers (or its own 407) never pass for the gateway's.  Retries, refreshes, failover and
  the final :class:`~proxaro_scrape.AttemptsExhaustedError` are the manager's decisions.  A
  failed answer through a tunnel is dropped with its connection (its exit may be burnt for
  that site).
- **Bodies**: ``data=`` bytes, str, forms and ``json=`` are resent on a retry; a generator or
  a file object cannot be, and the retry raises :class:`~proxaro_scrape.RequestNotReplayableError`.
- **No Proxy-Authorization ever reaches a target** (the class of CVE-2023-32681): an HTTPS
  request never carries one (any found on it, from your code or a redirect, is removed before
  sending), and the plain-HTTP one never outlives its attempt, so a redirect, same host or
  other host, HTTP or HTTPS, cannot inherit it.  The ``proxies`` requests passes (your own, or
  from the environment) are ignored for routed requests: the gateway is the proxy.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

try:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
except ImportError as _exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "proxaro_scrape.integrations.requests needs requests: "
        'pip install "proxaro-scrape[requests]"'
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
    run_sync,
)
from proxaro_scrape.gateway.outcome import Outcome, cause_in_chain

__all__ = ["ProxaroAdapter", "ProxaroSession", "exit_of", "routing"]


@dataclass(frozen=True)
class _Options:
    target: Any
    session_key: Any


_OPTIONS: contextvars.ContextVar[_Options | None] = contextvars.ContextVar(
    "proxaro_requests_options", default=None
)


@contextlib.contextmanager
def routing(
    target: Target | Mapping[str, Any] | None | bool = None, *, session_key: Any = None
) -> Iterator[None]:
    """Route the requests sent inside the block with ``target`` and/or ``session_key``.

    ``target`` is a :class:`~proxaro_scrape.Target`, a dict, ``None`` (the adapter's default)
    or ``False`` (send direct, not through the gateway).  Works with any session that has a
    :class:`ProxaroAdapter` mounted; covers every redirect hop of the requests in the block.
    """
    token = _OPTIONS.set(_Options(check_spec(target, "proxaro"), session_key))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def exit_of(response: requests.Response) -> ExitInfo | None:
    """The exit that carried ``response`` (``None`` when not routed or not reported).

    Over HTTPS it is the exit the gateway named in its answer to the tunnel's ``CONNECT``.
    """
    return getattr(response, EXIT_KEY, None)


#: requests' exceptions → the core's vocabulary (first match wins).  A refused CONNECT is
#: recognised by its own exception (:class:`TunnelRefused`), found in the chain, not here.
FAILURES = (
    ((requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout), Failure.TIMEOUT),
    (requests.exceptions.Timeout, Failure.TIMEOUT),
    ((requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError),
     Failure.CONNECTION),
)  # fmt: skip


class TunnelRefused(OSError):
    """The gateway refused a ``CONNECT``: its status and its ``X-Proxaro-*`` headers."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(f"the gateway refused the tunnel: {status} {reason}")
        self.status = status
        self.headers = headers


class _TunnelConnection(HTTPSConnection):
    """A urllib3 connection that keeps what the gateway said in its ``CONNECT`` answer.

    http.client (and urllib3's copy of it) reads that answer and keeps only a message: the
    exit's headers, and a refusal's ``X-Proxaro-Error``, would be lost.
    """

    #: The ``X-Proxaro-*`` pairs of the CONNECT answer that opened this tunnel.
    proxaro_connect: list[tuple[str, str]] = []

    def _tunnel(self) -> None:
        host = self._tunnel_host or ""
        if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in host):
            raise ValueError(f"tunnel host can't contain control characters: {host!r}")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        lines = [f"CONNECT {host}:{self._tunnel_port} HTTP/1.1\r\n"]
        for name, value in self._tunnel_headers.items():  # type: ignore[attr-defined]
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        self.send("".join(lines).encode("latin-1"))
        response = http.client.HTTPResponse(self.sock, method="CONNECT")  # type: ignore[arg-type]
        try:
            _, status, reason = response._read_status()  # type: ignore[attr-defined]
            message = http.client.parse_headers(response.fp)
            pairs = gateway_pairs(message.items())
        finally:
            response.close()
        if status != 200:
            self.close()
            raise TunnelRefused(status, reason.strip(), pairs)
        self.proxaro_connect = pairs


class _TunnelPool(HTTPSConnectionPool):
    ConnectionCls = _TunnelConnection


_POOL_CLASSES = {"http": HTTPConnectionPool, "https": _TunnelPool}


def _replayable(body: Any) -> bool:
    return body is None or isinstance(body, (bytes, bytearray, str))


def _connect_answer(response: requests.Response) -> list[tuple[str, str]] | None:
    """The CONNECT answer's gateway headers for a response through a tunnel, if known."""
    raw = response.raw
    conn = getattr(raw, "connection", None) if raw is not None else None
    return getattr(conn, "proxaro_connect", None)


def _drainable(response: requests.Response) -> bool:
    length = response.headers.get("Content-Length")
    return length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT


class ProxaroAdapter(HTTPAdapter):
    """A :class:`requests.adapters.HTTPAdapter` that routes through the Proxaro gateway.

    ``manager`` is a started :class:`~proxaro_scrape.GatewayManager` (the adapter neither starts
    nor closes it).  ``target`` (a Target or dict) is this adapter's default target, else the
    manager's; ``session_key`` a default sticky key.  ``max_proxy_managers`` bounds the urllib3
    ``ProxyManager`` cache (one per tunnel username).  Other keywords (``pool_connections``,
    ``pool_maxsize``, ``max_retries``, ``pool_block``) go to :class:`HTTPAdapter`.  See the
    module docstring for per-request targeting.
    """

    def __init__(
        self,
        manager: GatewayManager,
        *,
        target: Target | Mapping[str, Any] | None = None,
        session_key: Any = None,
        max_proxy_managers: int = 64,
        **adapter_kwargs: Any,
    ) -> None:
        if not isinstance(manager, GatewayManager):
            raise ConfigurationError(
                "the first argument is a started GatewayManager", param="manager"
            )
        if (
            isinstance(max_proxy_managers, bool)
            or not isinstance(max_proxy_managers, int)
            or max_proxy_managers < 1
        ):
            raise ConfigurationError(
                f"max_proxy_managers is a whole number of at least 1, got {max_proxy_managers!r}",
                param="max_proxy_managers",
            )
        spec = check_spec(target)
        if spec is False or spec is UNSET:
            raise ConfigurationError("target is a Target, a dict or None", param="target")
        self._manager = manager
        self._target: Target | None = spec
        self._session_key = session_key
        self._max_proxy_managers = max_proxy_managers
        self._pm_lock = threading.Lock()
        super().__init__(**adapter_kwargs)
        # requests keeps one ProxyManager per proxy URL for ever; here one per tunnel username
        # would grow without end, so the cache is an LRU (see proxy_manager_for).
        self.proxy_manager: OrderedDict[str, Any] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<ProxaroAdapter proxy_managers={len(self.proxy_manager)}/"
            f"{self._max_proxy_managers} manager={self._manager!r}>"
        )

    @property
    def manager(self) -> GatewayManager:
        """The gateway manager this adapter routes with."""
        return self._manager

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """The urllib3 ``ProxyManager`` for ``proxy``, from a bounded LRU.

        An evicted manager is cleared: its idle connections close at once, those carrying a
        request close when they come back.
        """
        with self._pm_lock:
            pm = self.proxy_manager.get(proxy)
            if pm is not None:
                self.proxy_manager.move_to_end(proxy)
                return pm
            pm = super().proxy_manager_for(proxy, **proxy_kwargs)
            # Its tunnels keep what the gateway says in the CONNECT answer.
            pm.pool_classes_by_scheme = _POOL_CLASSES
            evicted = []
            while len(self.proxy_manager) > self._max_proxy_managers:
                evicted.append(self.proxy_manager.popitem(last=False)[1])
        for old in evicted:
            old.clear()
        return pm

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` through the gateway, retrying as the manager decides."""
        opts = _OPTIONS.get()
        spec = opts.target if opts is not None else UNSET
        if spec is False:
            return super().send(request, stream, timeout, verify, cert, proxies)  # type: ignore[arg-type]
        if spec is UNSET or spec is None:
            spec = self._target
        key = opts.session_key if opts is not None else None
        if key is None:
            key = self._session_key
        url = request.url or ""
        tunnel = url[:6].lower() == "https:"
        headers = request.headers
        if tunnel and PROXY_AUTHORIZATION in headers:
            # From a redirect, a hook or the caller: inside a tunnel it would reach the target.
            del headers[PROXY_AUTHORIZATION]
        rr = self._manager.request(url, spec, key)

        def attempt(route: Route) -> tuple[requests.Response | None, Outcome, Exception | None]:
            return self._attempt(request, route, rr, tunnel, (stream, timeout, verify, cert))

        return run_sync(
            self._manager,
            rr,
            attempt,
            replayable=_replayable(request.body),
            method=request.method or "GET",
        )

    def _attempt(
        self,
        request: requests.PreparedRequest,
        route: Route,
        rr: RequestRouting,
        tunnel: bool,
        args: tuple[Any, Any, Any, Any],
    ) -> tuple[requests.Response | None, Outcome, Exception | None]:
        stream, timeout, verify, cert = args
        headers = request.headers
        if tunnel:
            proxies = {"https": route.proxy_url}
            saved = None
        else:
            proxies = {"http": route.gateway_url}
            saved = headers.get(PROXY_AUTHORIZATION)
            headers[PROXY_AUTHORIZATION] = route.proxy_authorization
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
        except Exception as exc:
            refused = cause_in_chain(exc, TunnelRefused)
            if isinstance(refused, TunnelRefused):
                outcome = observe_failure(
                    rr, Failure.TUNNEL_REFUSED, status=refused.status, headers=refused.headers
                )
                return None, outcome, exc
            failure = failure_of(exc, FAILURES)
            if failure is None:
                raise
            return None, observe_failure(rr, failure), exc
        finally:
            if not tunnel:
                # Off again at once: redirects are prepared from this very request.
                if saved is None:
                    del headers[PROXY_AUTHORIZATION]
                else:
                    headers[PROXY_AUTHORIZATION] = saved
        try:
            body = response.content if rr.is_ban is not None else None
            outcome = observe_answer(
                rr,
                response.status_code,
                response.headers,
                tunnel=tunnel,
                connect_headers=_connect_answer(response) if tunnel else None,
                body=body,
            )
        except BaseException:
            response.close()
            raise
        if outcome.ok:
            setattr(response, EXIT_KEY, outcome.exit)
            return response, outcome, None
        # Reuse a plain connection (the gateway picks each request's exit); drop a tunnel.
        try:
            if not tunnel and _drainable(response):
                response.content  # noqa: B018 - read, so the connection can be reused
        except requests.RequestException:
            pass
        finally:
            response.close()
        return None, outcome, None

    def close(self) -> None:
        """Close every pool (the manager stays as it is)."""
        with self._pm_lock:
            super().close()
            self.proxy_manager.clear()


class ProxaroSession(requests.Session):
    """A :class:`requests.Session` routed through the Proxaro gateway.

    >>> with ProxaroSession(mgr, target={"country": "us"}) as s:          # doctest: +SKIP
    ...     s.get(url, proxaro={"country": "de"}, proxaro_session="cart42")

    A :class:`ProxaroAdapter` (``target``, ``session_key`` and the other keywords go to it) is
    mounted on ``http://`` and ``https://`` (``session.proxaro_adapter``).  Every request method
    takes ``proxaro=`` (Target, dict, or ``False`` for direct) and ``proxaro_session=``.
    """

    def __init__(
        self,
        manager: GatewayManager,
        *,
        target: Target | Mapping[str, Any] | None = None,
        session_key: Any = None,
        **adapter_kwargs: Any,
    ) -> None:
        super().__init__()
        self.proxaro_adapter = ProxaroAdapter(
            manager, target=target, session_key=session_key, **adapter_kwargs
        )
        self.mount("http://", self.proxaro_adapter)
        self.mount("https://", self.proxaro_adapter)

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        *args: Any,
        proxaro: Any = UNSET,
        proxaro_session: Any = None,
        **kwargs: Any,
    ) -> requests.Response:
        """:meth:`requests.Session.request` plus ``proxaro=`` and ``proxaro_session=``."""
        if proxaro is UNSET and proxaro_session is None:
            return super().request(method, url, *args, **kwargs)
        token = _OPTIONS.set(_Options(check_spec(proxaro, "proxaro"), proxaro_session))
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            _OPTIONS.reset(token)
