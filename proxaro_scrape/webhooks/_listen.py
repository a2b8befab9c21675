"""Run a receiver in the foreground: what ``proxaro-scrape webhooks listen`` calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from proxaro_scrape.webhooks._core import Handler
from proxaro_scrape.webhooks._server import WebhookReceiver
from proxaro_scrape.webhooks._signature import SecretLike

if TYPE_CHECKING:
    import ssl

__all__ = ["alisten", "listen"]


async def alisten(
    secret: SecretLike | Iterable[SecretLike],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    on_event: Handler | None = None,
    on_ready: Callable[[str], Any] | None = None,
    stop: asyncio.Event | threading.Event | None = None,
    path: str | None = None,
) -> None:
    """Serve a receiver until ``stop`` is set (or the task is cancelled).

    ``on_event(event)`` runs for every verified, new event (in the receiver's worker thread
    if it is a plain function); ``on_ready(url)`` once it listens.
    """
    receiver = WebhookReceiver(secret, path=path)
    if on_event is not None:
        receiver.on("*", on_event)
    async with receiver.serve(host, port, ssl_context=ssl_context):
        if on_ready is not None:
            on_ready(receiver.url or "")
        while True:
            if isinstance(stop, asyncio.Event):
                await stop.wait()
                return
            if stop is not None and stop.is_set():
                return
            await asyncio.sleep(0.2)


def listen(
    secret: SecretLike | Iterable[SecretLike],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    on_event: Handler | None = None,
    on_ready: Callable[[str], Any] | None = None,
    stop: threading.Event | None = None,
    path: str | None = None,
) -> None:
    """Run a receiver in the foreground until Ctrl+C (or ``stop`` is set).

    What ``proxaro-scrape webhooks listen`` calls: for example
    ``listen(secret, port=8443, ssl_context=ctx, on_event=lambda e: print(e.id, e.type))``.
    """
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            alisten(
                secret,
                host=host,
                port=port,
                ssl_context=ssl_context,
                on_event=on_event,
                on_ready=on_ready,
                stop=stop,
                path=path,
            )
        )
