""":class:`WebhookReceiver`: the receiver core served by aiohttp, or mounted as ASGI.

aiohttp is imported here only, and only when a server is built (:meth:`~WebhookReceiver.start`,
:meth:`~WebhookReceiver.make_app`), so that importing :mod:`proxaro_scrape.webhooks`, checking
signatures and calling :meth:`~WebhookReceiver.accept` work without it installed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING

from proxaro_scrape.webhooks._asgi import Receive, Scope, Send, serve_asgi
from proxaro_scrape.webhooks._core import MAX_BODY_BYTES, Handler, ReceiverCore
from proxaro_scrape.webhooks._signature import SIGNATURE_HEADER, SecretLike

if TYPE_CHECKING:
    import ssl

    import aiohttp
    from aiohttp import web

__all__ = ["WebhookReceiver", "aiohttp_web"]

logger = logging.getLogger("proxaro_scrape.webhooks")

_AIOHTTP_MISSING = (
    "the webhook receiver's HTTPS server needs aiohttp: pip install 'proxaro-scrape[aiohttp]' "
    "(or mount WebhookReceiver.asgi, or call WebhookReceiver.accept from your own server)"
)


def aiohttp_web() -> ModuleType:
    """``aiohttp.web``, or an :class:`ImportError` that says which extra to install."""
    try:
        from aiohttp import web
    except ImportError as exc:
        raise ImportError(_AIOHTTP_MISSING, name="aiohttp") from exc
    return web


#: Seconds a closing receiver waits for requests still arriving (see :meth:`close`).
_SHUTDOWN_TIMEOUT = 5.0


class WebhookReceiver(ReceiverCore):
    """Receives Proxaro webhooks: verify, deduplicate, answer at once, then dispatch.

    ``secret`` is the endpoint's secret, or several (old and new while you roll a rotation
    out): a delivery verified by any of them is accepted.  It is held as a
    :class:`~proxaro_scrape._secrets.Secret`.

    For every ``POST`` (any path, unless ``path`` is given):

    - a body over ``max_body_bytes`` (default 1 MiB, ``MAX_BODY_BYTES``) → 400
      ``{"error": "invalid_payload", "reason": "too_large"}``: checked first, and the body is
      not read past the cap, so a huge one costs neither memory nor an HMAC.
    - no ``X-NB-Signature`` → 400 ``missing_signature``; a signature that does not match the
      raw body → 400 ``invalid_signature``.  No handler runs.
    - a verified body that is not an event (not UTF-8, not JSON, nested deeper than 32, not an
      object, a bad ``id``/``type``/``created_at``/``data``) → 400 ``invalid_payload`` with a
      ``reason`` and a ``message`` (:class:`~proxaro_scrape.errors.WebhookBodyError`'s, see
      :func:`~proxaro_scrape.webhooks.parse_event`).  Counted in ``stats()["invalid_payload"]``;
      no handler runs and the deduplicator is untouched.
    - an event id seen before (the last ``dedupe_size`` ids) → 200 ``{"duplicate": true}``,
      no handler runs again.
    - otherwise → 200, and the event goes to the handlers in a task of its own, off the
      response path: the answer never waits for a handler, and an exception in a handler is
      logged, never turned into a retry.

    Handlers (:meth:`on`) take the :class:`~proxaro_scrape.webhooks.WebhookEvent`; an event's
    handlers run one after the other, in registration order.  Coroutine functions run on the
    receiver's loop; plain functions run in one worker thread (one at a time), so a slow or
    blocking handler never stalls the loop; ``inline=True`` handlers are called on the loop
    directly (they must not block).  Events are not ordered: Proxaro's deliveries are
    concurrent and retried anyway.

    Serve it with :meth:`start` / :meth:`close` (or ``async with receiver.serve(...)``), mount
    :attr:`app` in your own ``aiohttp`` server, hand :meth:`asgi` to an ASGI server, or call
    :meth:`accept` from any other framework.  Only the first two need aiohttp
    (``pip install 'proxaro-scrape[aiohttp]'``).
    """

    def __init__(
        self,
        secret: SecretLike | Iterable[SecretLike],
        handlers: Mapping[str, Handler | Iterable[Handler]] | None = None,
        *,
        path: str | None = None,
        dedupe_size: int = 10_000,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(
            secret, handlers, path=path, dedupe_size=dedupe_size, max_body_bytes=max_body_bytes
        )
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None

    # ------------------------------------------------------------------ aiohttp

    @property
    def app(self) -> web.Application:
        """The receiver as an ``aiohttp.web.Application`` (built once)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A new ``aiohttp.web.Application`` serving this receiver."""
        web = aiohttp_web()
        # The handler reads the stream itself, up to one byte past the cap, so that a body
        # too large gets the same named 400 as any other refused body, not aiohttp's 413.
        app = web.Application(client_max_size=self.max_body_bytes + 1)
        if self.path is None:
            app.router.add_route("POST", "/{tail:.*}", self._aiohttp_handler)
        else:
            app.router.add_route("POST", self.path, self._aiohttp_handler)
        return app

    async def _aiohttp_handler(self, request: web.Request) -> web.StreamResponse:
        web = aiohttp_web()
        body = await _read_capped(request.content, self.max_body_bytes + 1)
        # Whatever is left unread aiohttp discards after the answer (its lingering read), so
        # the sender gets the 400 instead of a reset connection.
        status, payload = self.accept(body, request.headers.get(SIGNATURE_HEADER))
        return web.json_response(payload, status=status)

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> str:
        """Serve on ``host:port`` (``port=0``: a free port) and return the URL.

        Proxaro delivers over HTTPS only: pass ``ssl_context`` unless TLS ends in front of
        this process.  ``.url`` and ``.port`` are set once it listens.
        """
        web = aiohttp_web()
        if self._runner is not None:
            raise RuntimeError("the receiver is already serving")
        # aiohttp's own shutdown waits up to 60 s for requests in progress (a delivery still
        # sending its body, say) before close() gets to its handlers: bound it as well.
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.port = int(bound[1])
        scheme = "https" if ssl_context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}{self.path or '/'}"
        logger.info("webhook receiver listening on %s", self.url)
        return self.url

    async def close(self, timeout: float = 10.0) -> None:
        """Stop serving (requests still arriving get up to 5 s), let running handlers finish
        (up to ``timeout``), then cancel them."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.url = None
        await super().close(timeout)

    @contextlib.asynccontextmanager
    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncIterator[WebhookReceiver]:
        """``async with receiver.serve(host, port, ssl_context=ctx):`` start, then close."""
        await self.start(host, port, ssl_context=ssl_context)
        try:
            yield self
        finally:
            await self.close()

    # ------------------------------------------------------------------ ASGI

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The receiver as an ASGI 3 application (``uvicorn mod:receiver.asgi``)."""
        await serve_asgi(self, scope, receive, send)


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """At most ``limit`` bytes of ``stream`` (fewer at its end)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
