"""Proxaro events: the typed views of ``data`` and :func:`parse_event` / :func:`verify_event`.

Framework-free and I/O-free, like :mod:`._signature`; the bounds on a raw body are
:mod:`._body`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from proxaro_scrape import protocol
from proxaro_scrape.errors import WebhookBodyError, WebhookSignatureError
from proxaro_scrape.webhooks._body import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    check_size,
    decode_body,
    within_depth,
)
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

# Proxaro's ids are a prefix and a ULID (evt_01HVQ...): bounded, so that the deduplicator's
# memory is, and printable, so that a log line stays one line.
_EVENT_ID = re.compile(r"[\x21-\x7e]{1,255}")
# Dotted names (usage.threshold.80); "*" is the handlers' wildcard, never a type.
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value or len(value) > 64:
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


def parse_event(
    body: bytes | str | Mapping[str, Any], *, max_bytes: int = MAX_BODY_BYTES
) -> WebhookEvent:
    """A :class:`WebhookEvent` from a raw body (or an already decoded dict).

    Does not verify anything: use :func:`verify_event` on untrusted input.  Raises
    :class:`~proxaro_scrape.errors.WebhookBodyError` (a
    :class:`~proxaro_scrape.errors.WebhookPayloadError`), whose ``reason`` names the check:

    - the body as a whole: over ``max_bytes`` (default :data:`MAX_BODY_BYTES`, 1 MiB), not
      UTF-8, not JSON, nested deeper than :data:`MAX_DEPTH`, not an object, or an ``object``
      other than ``"event"`` (see :mod:`proxaro_scrape.webhooks._body`);
    - ``id``: 1 to 255 printable ASCII characters, no spaces (``evt_01HVQ...``);
    - ``type``: 1 to 100 of ``A-Z a-z 0-9 _ . -`` (``usage.threshold.80``; never ``"*"``);
    - ``created_at``: an ISO-8601 time of at most 64 characters, within ``datetime``'s range;
    - ``data``: an object.

    Unknown keys are kept in ``payload`` and otherwise ignored.
    """
    if isinstance(body, Mapping):
        payload: Any = body
        if not within_depth(payload, MAX_DEPTH):  # decode_body measures what it decodes
            raise WebhookBodyError(
                f"the body is nested deeper than {MAX_DEPTH} levels", reason="too_deep"
            )
    else:
        payload = decode_body(body, max_bytes)
    if not isinstance(payload, Mapping):
        raise WebhookBodyError(
            f"the body is a JSON {_json_kind(payload)}, not an object", reason="not_object"
        )
    obj = payload.get("object", "event")
    if obj != "event":
        raise WebhookBodyError(f"object is {_shown(obj)}, not 'event'", reason="bad_object")
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise WebhookBodyError(
            f"id {_shown(event_id)} is not an event id"
            " (1 to 255 printable ASCII characters, no spaces)",
            reason="bad_id",
        )
    type_ = payload.get("type")
    if not isinstance(type_, str) or not _EVENT_TYPE.fullmatch(type_):
        raise WebhookBodyError(
            f"type {_shown(type_)} is not an event type (1 to 100 of A-Z a-z 0-9 _ . -)",
            reason="bad_type",
        )
    created_at = _parse_time(payload.get("created_at"))
    if created_at is None or not _in_range(created_at):
        raise WebhookBodyError(
            f"created_at {_shown(payload.get('created_at'))} is not an ISO-8601 time",
            reason="bad_created_at",
        )
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise WebhookBodyError(
            f"data is a JSON {_json_kind(data)}, not an object", reason="bad_data"
        )
    return WebhookEvent(event_id, type_, created_at, data, payload)


def verify_event(
    body: bytes,
    header: str | None,
    secret: SecretLike | Iterable[SecretLike],
    *,
    max_bytes: int = MAX_BODY_BYTES,
) -> WebhookEvent:
    """Verify ``header`` against ``body``, then parse it: for receivers in other frameworks.

    ``secret`` may be several secrets (during a rotation, old and new): any one verifies.
    Raises :class:`~proxaro_scrape.errors.WebhookSignatureError` (missing or bad signature) or
    :class:`~proxaro_scrape.errors.WebhookBodyError` (see :func:`parse_event`).  A body over
    ``max_bytes`` is refused first, before any HMAC is computed over it.
    """
    secrets = as_secrets(secret)
    check_size(body, max_bytes)
    if not header:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} header")
    if not any(verify_signature(body, header, s) for s in secrets):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body")
    return parse_event(body, max_bytes=max_bytes)


def _in_range(moment: datetime) -> bool:
    # "0001-01-01T00:00:00+01:00" parses, but is before datetime.min in UTC: comparing it with
    # the manager's clock would raise OverflowError far from here.
    try:
        moment.astimezone(timezone.utc)
    except OverflowError:
        return False
    return True


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object" if isinstance(value, Mapping) else type(value).__name__


def _shown(value: object) -> str:
    """``repr(value)`` cut short: error messages and log lines never carry a whole body."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
