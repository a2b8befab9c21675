"""Proxaro events: the typed views of ``data`` and :func:`parse_event` / :func:`verify_event`.

Framework-free and I/O-free, like :mod:`._signature`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from proxaro_scrape import protocol
from proxaro_scrape.errors import WebhookPayloadError, WebhookSignatureError
from proxaro_scrape.webhooks._signature import (
    SIGNATURE_HEADER,
    SecretLike,
    as_secrets,
    verify_signature,
)

__all__ = [
    "WEBHOOK_EVENTS",
    "AllowlistChange",
    "CredentialsRotated",
    "OrderChange",
    "UsageThreshold",
    "WebhookEvent",
    "parse_event",
    "verify_event",
]

#: Every event type of the reference's table.
WEBHOOK_EVENTS = protocol.WEBHOOK_EVENTS


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True)
class CredentialsRotated:
    """``data`` of ``credentials.rotated``: which credentials, and when.  Never the password."""

    id: str | None
    rotated_at: datetime | None


@dataclass(frozen=True)
class UsageThreshold:
    """``data`` of ``usage.threshold.80`` / ``.100``: the percentage crossed and the usage."""

    threshold: int
    period: str | None
    total_bytes: int | None
    cap_bytes: int | None


@dataclass(frozen=True)
class OrderChange:
    """``data`` of ``order.paid`` / ``order.expired``: the order as ``GET /v1/orders`` shows it."""

    id: str | None
    status: str | None
    plan_id: str | None
    amount_usd: float | None
    payment_method: str | None
    created_at: datetime | None
    paid_at: datetime | None


@dataclass(frozen=True)
class AllowlistChange:
    """``data`` of ``allowlist.updated``: the entry, and whether it was added or removed."""

    id: str | None
    cidr: str | None
    label: str | None
    action: str | None  # "added" | "removed" when the sender says
    deleted: bool


@dataclass(frozen=True)
class WebhookEvent:
    """One Proxaro event, parsed.

    ``id``, ``type``, ``created_at`` (aware UTC datetime) and ``data`` (the object concerned,
    a dict) are always there.  ``known`` is ``False`` for a type this version does not know:
    such events are still delivered to handlers (the API only ever adds), but flagged and
    logged.  ``payload`` is the whole decoded body.  Typed views of ``data``: :attr:`order`,
    :attr:`credentials`, :attr:`usage`, :attr:`allowlist` (``None`` for other types).
    """

    id: str
    type: str
    created_at: datetime
    data: Mapping[str, Any]
    payload: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def known(self) -> bool:
        """Is ``type`` one of the reference's event types?"""
        return self.type in WEBHOOK_EVENTS

    @property
    def credentials(self) -> CredentialsRotated | None:
        """The rotated credentials, for ``credentials.rotated``."""
        if self.type != "credentials.rotated":
            return None
        return CredentialsRotated(_str(self.data, "id"), _parse_time(self.data.get("rotated_at")))

    @property
    def usage(self) -> UsageThreshold | None:
        """The threshold crossed and the usage, for ``usage.threshold.*``."""
        prefix = "usage.threshold."
        if not self.type.startswith(prefix):
            return None
        # The type is authoritative for the percentage; data may repeat it.
        suffix = self.type[len(prefix) :]
        threshold = int(suffix) if suffix.isdigit() else (_int(self.data, "threshold") or 0)
        return UsageThreshold(
            threshold,
            _str(self.data, "period"),
            _int(self.data, "total_bytes"),
            _int(self.data, "cap_bytes"),
        )

    @property
    def order(self) -> OrderChange | None:
        """The order, for ``order.paid`` and ``order.expired``."""
        if not self.type.startswith("order."):
            return None
        d = self.data
        return OrderChange(
            _str(d, "id"),
            _str(d, "status"),
            _str(d, "plan_id"),
            _float(d, "amount_usd"),
            _str(d, "payment_method"),
            _parse_time(d.get("created_at")),
            _parse_time(d.get("paid_at")),
        )

    @property
    def allowlist(self) -> AllowlistChange | None:
        """The allowlist entry added or removed, for ``allowlist.updated``."""
        if self.type != "allowlist.updated":
            return None
        d = self.data
        action = _str(d, "action")
        deleted = d.get("deleted") is True or action == "removed"
        return AllowlistChange(_str(d, "id"), _str(d, "cidr"), _str(d, "label"), action, deleted)


def parse_event(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
    """A :class:`WebhookEvent` from a raw body (or an already decoded dict).

    Does not verify anything: use :func:`verify_event` on untrusted input.  Raises
    :class:`~proxaro_scrape.errors.WebhookPayloadError` when the body is not JSON, not an
    object, or lacks a non-empty ``id``/``type``, an ISO-8601 ``created_at`` or an object
    ``data``.  Unknown keys are kept in ``payload`` and otherwise ignored.
    """
    if isinstance(body, Mapping):
        payload: Any = body
    else:
        try:
            payload = json.loads(body)
        except (ValueError, TypeError) as exc:
            raise WebhookPayloadError(f"the body is not JSON: {exc}") from None
    if not isinstance(payload, Mapping):
        raise WebhookPayloadError("the body is not a JSON object")
    obj = payload.get("object", "event")
    if obj != "event":
        raise WebhookPayloadError(f"object is {obj!r}, not 'event'")
    event_id, type_ = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookPayloadError("the event has no id")
    if not isinstance(type_, str) or not type_:
        raise WebhookPayloadError("the event has no type")
    created_at = _parse_time(payload.get("created_at"))
    if created_at is None:
        raise WebhookPayloadError("created_at is not an ISO-8601 time")
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise WebhookPayloadError("data is not an object")
    return WebhookEvent(event_id, type_, created_at, data, payload)


def verify_event(
    body: bytes, header: str | None, secret: SecretLike | Iterable[SecretLike]
) -> WebhookEvent:
    """Verify ``header`` against ``body``, then parse it: for receivers in other frameworks.

    ``secret`` may be several secrets (during a rotation, old and new): any one verifies.
    Raises :class:`~proxaro_scrape.errors.WebhookSignatureError` (missing or bad signature) or
    :class:`~proxaro_scrape.errors.WebhookPayloadError`.
    """
    if not header:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} header")
    if not any(verify_signature(body, header, s) for s in as_secrets(secret)):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body")
    return parse_event(body)
