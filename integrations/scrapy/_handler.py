"""A download handler that keeps what the gateway said in its answer to the CONNECT.

Over HTTPS, Scrapy's HTTP/1.1 handler opens a tunnel with ``CONNECT host:443`` and reads the
proxy's answer in ``_TunnelingTCP4ClientEndpoint.processProxyResponse``: on ``200`` it starts
TLS, on anything else it raises ``TunnelError`` with the status in its message, and in both
cases it drops the answer's headers.  Those headers are the only ones inside a tunnel that
come from the gateway (``gateway-protocol.md``, sections 3 and 4): the exit it chose
(``X-Proxaro-Exit-*``) and why it refused (``X-Proxaro-Error``).

:class:`ProxaroDownloadHandler` is that handler with the answer kept:

- a refused CONNECT raises :class:`ProxaroTunnelError` (a ``TunnelError``, so every component
  that knows Scrapy's keeps working) with ``status`` and the gateway's ``headers``;
- an established tunnel remembers its CONNECT answer on its connection, and every response
  that comes through that tunnel (keep-alive reuses it) gets the answer's gateway headers in
  ``request.meta["_proxaro_connect"]`` as ``(status, ((name, value), ...))``: plain strings,
  for the middleware to read once and drop;
- after every download, done or failed, the request loses its ``Proxy-Authorization`` header:
  the credentials did their work on the wire, and whatever is built from the request later (a
  redirect, a retry, a copy in a callback) goes to the scheduler without them.

The subclasses are small and each overrides one method of Scrapy's private HTTP/1.1 classes
(Scrapy >= 2.14).  On a Scrapy whose internals differ, :data:`SUPPORTED` is ``False`` and the
handler downloads with Scrapy's own code: requests still route and lose their credentials after
the download, but ``meta["proxaro_exit"]`` is ``None`` over HTTPS and a refused CONNECT is
classified by its kind alone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers import http11
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler, TunnelError

from proxaro_scrape.gateway.edge import PROXY_AUTHORIZATION, gateway_pairs

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.internet.protocol import Protocol

__all__ = [
    "CONNECT_KEY",
    "SUPPORTED",
    "ProxaroDownloadHandler",
    "ProxaroTunnelError",
    "handler_of",
    "handlers_strip_credentials",
]

logger = logging.getLogger(__name__)

_PROXY_AUTHORIZATION = PROXY_AUTHORIZATION.encode("latin-1")
#: The private meta key where a response through a tunnel carries its CONNECT answer.
CONNECT_KEY = "_proxaro_connect"

_Agent: Any = getattr(http11, "_ScrapyAgent", None)
_TunnelingAgent: Any = getattr(http11, "_TunnelingAgent", None)
_Endpoint: Any = getattr(http11, "_TunnelingTCP4ClientEndpoint", None)
_Factory: Any = getattr(http11, "_LenientHTTP11ClientFactory", None)
_Protocol: Any = getattr(http11, "_LenientHTTP11ClientProtocol", None)
#: Does this Scrapy have the internals the handler builds on?
SUPPORTED = None not in (_Agent, _TunnelingAgent, _Endpoint, _Factory, _Protocol)

#: A CONNECT answer as the handler keeps it: the status and the gateway's header pairs.
ConnectAnswer = tuple[int, tuple[tuple[str, str], ...]]


class ProxaroTunnelError(TunnelError):
    """The gateway refused the CONNECT: its ``status`` and its ``X-Proxaro-*`` ``headers``.

    A ``TunnelError``, so ``RETRY_EXCEPTIONS`` and errbacks that check for it still match.
    """

    def __init__(
        self, message: str, *, status: int | None, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def parse_connect_answer(head: bytes) -> ConnectAnswer | None:
    """The status and the gateway's headers of a CONNECT answer's head (up to the blank line);
    ``None`` when the status line is not HTTP's."""
    lines = head.split(b"\r\n")
    match = _Endpoint._responseMatcher.match(lines[0]) if SUPPORTED else None
    if match is None:
        return None
    pairs = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            pairs.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    return int(match.group("status")), tuple(gateway_pairs(pairs))


if SUPPORTED:
    from scrapy.exceptions import ResponseDataLossError
    from scrapy.utils._download_handlers import get_dataloss_msg, wrap_twisted_exceptions
    from scrapy.utils.defer import maybe_deferred_to_future

    class _TunnelEndpoint(_Endpoint):  # type: ignore[misc,valid-type]
        """Scrapy's tunnelling endpoint, keeping the CONNECT answer."""

        def processProxyResponse(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            """Scrapy's, with the answer's status and gateway headers kept (see the module)."""
            self._connectBuffer += data
            end = self._connectBuffer.find(b"\r\n\r\n")
            if end < 0:
                return  # the head is not complete yet
            protocol: Protocol = self._protocol
            answer = parse_connect_answer(bytes(self._connectBuffer[:end]))
            if answer is not None and answer[0] == 200:
                # The connection's protocol outlives this request (keep-alive): every response
                # it carries reads the answer from there (_ClientProtocol.request).
                protocol._proxaro_connect = answer  # type: ignore[attr-defined]
                super().processProxyResponse(b"")
                return
            # Scrapy's own code would raise a TunnelError with the status in its text only.
            protocol.dataReceived = self._protocolDataReceived  # type: ignore[method-assign]
            status = answer[0] if answer is not None else None
            detail = f"{status}" if status is not None else repr(bytes(data[:100]))
            self._tunnelReadyDeferred.errback(
                ProxaroTunnelError(
                    f"Could not open CONNECT tunnel with proxy {self._host}:{self._port} "
                    f"[{detail}]",
                    status=status,
                    headers=answer[1] if answer is not None else (),
                )
            )

    class _TunnelAgent(_TunnelingAgent):  # type: ignore[misc,valid-type]
        """Scrapy's tunnelling agent, opening tunnels with :class:`_TunnelEndpoint`."""

        def _getEndpoint(self, uri: Any) -> Any:  # noqa: N802 - Twisted's name
            endpoint = super()._getEndpoint(uri)
            # As Scrapy swaps its parser's class: the subclass adds no state, one method.
            endpoint.__class__ = _TunnelEndpoint
            return endpoint

    class _ScrapyAgent(_Agent):  # type: ignore[misc,valid-type]
        """Scrapy's agent: tunnels through :class:`_TunnelAgent`, answers carry the CONNECT."""

        def _get_agent(self, request: Request, timeout: float) -> Any:
            agent = super()._get_agent(request, timeout)
            if type(agent) is _TunnelingAgent:
                agent.__class__ = _TunnelAgent
            return agent

        def _cb_bodyready(self, txresponse: Any, request: Request) -> Any:
            answer = getattr(txresponse, "_proxaro_connect", None)
            if answer is not None:
                request.meta[CONNECT_KEY] = answer
            return super()._cb_bodyready(txresponse, request)

    class _ClientProtocol(_Protocol):  # type: ignore[misc,valid-type]
        """Scrapy's HTTP/1.1 client protocol; hands its tunnel's CONNECT answer to responses."""

        _proxaro_connect: ConnectAnswer | None = None

        def request(self, request: Any) -> Any:
            d = super().request(request)
            answer = self._proxaro_connect
            if answer is not None:

                def attach(response: Any) -> Any:
                    response._proxaro_connect = answer
                    return response

                d.addCallback(attach)
            return d

    class _ClientFactory(_Factory):  # type: ignore[misc,valid-type]
        """Builds :class:`_ClientProtocol` for the connection pool."""

        def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
            return _ClientProtocol(self._quiescentCallback)


def handler_of(settings: BaseSettings, scheme: str) -> Any:
    """The download handler class ``settings`` give ``scheme`` (``None`` if none or unloadable)."""
    from scrapy.utils.misc import load_object

    current = settings.getwithbase("DOWNLOAD_HANDLERS").get(scheme)
    try:
        return load_object(current) if isinstance(current, str) else current
    except (ImportError, NameError, ValueError, AttributeError):
        return None  # Scrapy will say what is wrong with it


class ProxaroDownloadHandler(HTTP11DownloadHandler):
    """Scrapy's HTTP/1.1 download handler that keeps the gateway's answer to each CONNECT.

    The add-on installs it for ``http`` and ``https`` where they use Scrapy's default
    handler::

        DOWNLOAD_HANDLERS = {
            "http": "proxaro_scrape.integrations.scrapy.ProxaroDownloadHandler",
            "https": "proxaro_scrape.integrations.scrapy.ProxaroDownloadHandler",
        }

    It behaves as ``HTTP11DownloadHandler`` in every other respect (settings, pool, TLS).
    """

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        if SUPPORTED:
            self._pool._factory = _ClientFactory

    async def download_request(self, request: Request) -> Response:
        """Download ``request``; over a tunnel, the response's meta gets the CONNECT answer.

        Whatever happens, the request leaves without ``Proxy-Authorization``: the credentials
        did their work on the wire, and a request object that lives on (a redirect or a retry
        built from it, ``response.request`` in a callback) must not carry them to the
        scheduler, a JOBDIR or Redis.
        """
        try:
            if not SUPPORTED:  # pragma: no cover - another Scrapy's internals
                return await super().download_request(request)
            return await self._download(request)
        finally:
            request.headers.pop(_PROXY_AUTHORIZATION, None)

    async def _download(self, request: Request) -> Response:
        # HTTP11DownloadHandler.download_request, with this module's agent (Scrapy builds its
        # own by name there, so the method is repeated rather than extended).
        spider = self._crawler.spider
        agent = _ScrapyAgent(
            contextFactory=self._contextFactory,
            bindAddress=self._bind_address,
            pool=self._pool,
            maxsize=getattr(spider, "download_maxsize", self._default_maxsize),
            warnsize=getattr(spider, "download_warnsize", self._default_warnsize),
            fail_on_dataloss=self._fail_on_dataloss,
            crawler=self._crawler,
            tls_verbose_logging=self._tls_verbose_logging,
        )
        try:
            with wrap_twisted_exceptions():
                response: Response = await maybe_deferred_to_future(agent.download_request(request))
        except ResponseDataLossError:
            if not self._fail_on_dataloss_warned:
                logger.warning(get_dataloss_msg(request.url))
                self._fail_on_dataloss_warned = True
            raise
        return response


def handlers_strip_credentials(settings: BaseSettings) -> bool:
    """Do both HTTP schemes download through :class:`ProxaroDownloadHandler` (which takes the
    credentials off every request it downloads)?"""
    return all(
        isinstance(h, type) and issubclass(h, ProxaroDownloadHandler)
        for h in (handler_of(settings, "http"), handler_of(settings, "https"))
    )
