"""The receiver as an ASGI 3 application.

ASGI is a calling convention, not a library: this adapter needs no framework, only a
:class:`~proxaro_scrape.webhooks._core.ReceiverCore` to decide on what it reads.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from proxaro_scrape.webhooks._core import ReceiverCore
from proxaro_scrape.webhooks._signature import SIGNATURE_HEADER

__all__ = ["Message", "Receive", "Scope", "Send", "serve_asgi"]

#: ASGI's connection scope, its messages, and its ``receive`` and ``send`` callables (typed as
#: Starlette and httpx type them, so the adapter fits wherever an ASGI app is expected).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SIGNATURE_KEY = SIGNATURE_HEADER.lower().encode("latin-1")


async def serve_asgi(receiver: ReceiverCore, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one ASGI connection (``http`` or ``lifespan``) with ``receiver``.

    ``POST`` only (405 otherwise), to ``receiver.path`` when it is set (404 otherwise).  The
    body is read up to one byte past ``receiver.max_body_bytes`` and handed to
    :meth:`~proxaro_scrape.webhooks._core.ReceiverCore.accept`, which answers a longer one 400
    ``too_large``, like any other body it refuses.
    """
    kind = scope.get("type")
    if kind == "lifespan":
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message.get("type") == "lifespan.shutdown":
                await receiver.drain(10.0)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    if scope.get("method") != "POST":
        await _json(send, 405, {"error": "method_not_allowed"})
        return
    if receiver.path is not None and scope.get("path") != receiver.path:
        await _json(send, 404, {"error": "not_found"})
        return
    header: str | None = None
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() == _SIGNATURE_KEY:
            header = bytes(value).decode("latin-1")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        # Past the cap the rest is never read: accept() refuses what it has been given.
        if size > receiver.max_body_bytes or not message.get("more_body", False):
            break
    status, payload = receiver.accept(b"".join(chunks), header)
    await _json(send, status, payload)


async def _json(send: Send, status: int, payload: Mapping[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
