"""Proxaro webhooks: verify the signature, parse the event, drop duplicates, receive and dispatch.

Proxaro delivers every event at least once, with exponential backoff for up to 24 hours, as an
HTTPS ``POST`` whose body is one JSON event and whose ``X-NB-Signature`` header is the hex
HMAC-SHA256 of the raw body under the endpoint's secret::

    {
      "object": "event",
      "id": "evt_01HVQ...",
      "type": "credentials.rotated",
      "created_at": "2026-04-22T14:30:00Z",
      "data": {"object": "credentials", "id": "cred_01HVQ...", "rotated_at": "2026-04-22T14:30:00Z"}
    }

``data`` is the object concerned (an order, the credentials, the usage, an allowlist entry);
a gateway password never appears in an event.

The pieces, from the smallest (the first four import no web framework):

- :func:`verify_signature` is exactly the reference's Node snippet (constant-time comparison of
  lower-case hex digests), returning ``False`` for anything that does not match.
- :func:`parse_event` turns a body into a :class:`WebhookEvent`; :func:`verify_event` does both.
  A body is refused with a :class:`~proxaro_scrape.errors.WebhookBodyError` naming the bound
  it broke: over **1 MiB** (``MAX_BODY_BYTES``; the receiver's ``max_body_bytes``), not UTF-8,
  not JSON, nested deeper than 32 levels, not an object, or a bad ``id``, ``type``,
  ``created_at`` or ``data``.
- :class:`EventDeduplicator` remembers the last event ids (bounded, LRU), since at-least-once
  delivery means the same event can arrive twice.
- The receiver's core decides on one delivery (:meth:`WebhookReceiver.accept` returns
  ``(status, json body)``), registers handlers and dispatches events off the response path;
  :meth:`WebhookReceiver.attach` wires it to a :class:`~proxaro_scrape.GatewayManager`.
- :class:`WebhookReceiver` serves that core over HTTPS with ``aiohttp.web`` (imported only
  when a server starts: ``pip install 'proxaro-scrape[aiohttp]'``), or as an ASGI callable.
- :func:`listen` runs a receiver until interrupted (``proxaro-scrape webhooks listen``).

Example::

    receiver = WebhookReceiver(os.environ["PROXARO_WEBHOOK_SECRET"])
    receiver.attach(manager)                      # rotation, usage thresholds, allowlist

    @receiver.on("order.paid")
    async def paid(event: WebhookEvent) -> None:
        print("paid:", event.order.id if event.order else event.data)

    await receiver.start("0.0.0.0", 8443, ssl_context=ctx)
"""

from __future__ import annotations

from proxaro_scrape.webhooks._body import MAX_BODY_BYTES as MAX_BODY_BYTES
from proxaro_scrape.webhooks._body import MAX_DEPTH as MAX_DEPTH
from proxaro_scrape.webhooks._core import MANAGER_EVENTS
from proxaro_scrape.webhooks._core import Handler as Handler
from proxaro_scrape.webhooks._core import ReceiverCore as ReceiverCore
from proxaro_scrape.webhooks._dedupe import EventDeduplicator
from proxaro_scrape.webhooks._events import (
    WEBHOOK_EVENTS,
    AllowlistChange,
    CredentialsRotated,
    OrderChange,
    UsageThreshold,
    WebhookEvent,
    parse_event,
    verify_event,
)
from proxaro_scrape.webhooks._listen import alisten, listen
from proxaro_scrape.webhooks._server import WebhookReceiver
from proxaro_scrape.webhooks._signature import (
    SIGNATURE_HEADER,
    compute_signature,
    verify_signature,
)
from proxaro_scrape.webhooks._signature import SecretLike as SecretLike

__all__ = [
    "MANAGER_EVENTS",
    "SIGNATURE_HEADER",
    "WEBHOOK_EVENTS",
    "AllowlistChange",
    "CredentialsRotated",
    "EventDeduplicator",
    "OrderChange",
    "UsageThreshold",
    "WebhookEvent",
    "WebhookReceiver",
    "alisten",
    "compute_signature",
    "listen",
    "parse_event",
    "verify_event",
    "verify_signature",
]
