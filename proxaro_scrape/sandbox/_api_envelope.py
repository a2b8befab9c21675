"""What every answer of the sandbox API is wrapped in: request ids, the error envelope, lists.

One place for the reference's shapes: the error object (``{"error": {type, code, message,
param, request_id}}``, one ``type`` per HTTP status), the ``req_`` request id, and the cursor
pagination of lists (``{"object": "list", "data", "has_more", "next_cursor"}``).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = [
    "ERROR_TYPES",
    "JSON",
    "APIFailure",
    "decode_cursor",
    "encode_cursor",
    "envelope",
    "json_response",
    "new_request_id",
    "paginate",
]

JSON = dict[str, Any]

#: Error ``type`` per HTTP status (the reference's error table; 405 is the sandbox's own).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request",
    401: "authentication_required",
    403: "forbidden",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    422: "unprocessable_entity",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class APIFailure(Exception):
    """An error answer: raised anywhere in a handler, rendered as the reference's envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = ERROR_TYPES[status]
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def new_request_id() -> str:
    """``req_`` + a ULID: 10 characters of milliseconds, 16 random ones (unique, sortable)."""
    ms = int(time.time() * 1000)
    head = ""
    for _ in range(10):
        head = _CROCKFORD[ms % 32] + head
        ms //= 32
    return "req_" + head + "".join(secrets.choice(_CROCKFORD) for _ in range(16))


def envelope(
    status: int, code: str, message: str, param: str | None, request_id: str | None
) -> JSON:
    """The error envelope of the reference."""
    return {
        "error": {
            "type": ERROR_TYPES[status],
            "code": code,
            "message": message,
            "param": param,
            "request_id": request_id,
        }
    }


def json_response(payload: Any, status: int = 200) -> web.Response:
    """A compact JSON answer with ``Content-Type: application/json``."""
    return web.Response(
        text=json.dumps(payload, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


# ---------------------------------------------------------------------------- cursors


def encode_cursor(kind: str, sort_ts: float, item_id: str) -> str:
    """An opaque cursor: the list it belongs to and the sort key of the last item returned.

    Cursors point *after an item*, not at an offset, so items added at the head of a list
    while a client walks it neither repeat nor shift a page.
    """
    raw = json.dumps([kind, sort_ts, item_id], separators=(",", ":")).encode()
    return "c_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> tuple[float, str]:
    """The sort key a cursor of list ``kind`` points after; 400 naming ``cursor`` if not ours."""
    bad = APIFailure(
        400,
        "invalid_cursor",
        "The 'cursor' parameter must be a 'next_cursor' value returned by this list.",
        param="cursor",
    )
    if not cursor.startswith("c_"):
        raise bad
    body = cursor[2:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        got_kind, sort_ts, item_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    if got_kind != kind or not isinstance(sort_ts, (int, float)) or not isinstance(item_id, str):
        raise bad
    return float(sort_ts), item_id


def paginate(
    kind: str,
    items: list[Any],
    sort_key: Callable[[Any], tuple[float, str]],
    render: Callable[[Any], JSON],
    limit: int,
    cursor: str | None,
) -> JSON:
    """A page of ``items`` newest first by ``sort_key`` (timestamp, id), after ``cursor``."""
    ordered = sorted(items, key=sort_key, reverse=True)
    if cursor is not None:
        after = decode_cursor(kind, cursor)
        ordered = [it for it in ordered if sort_key(it) < after]
    page = ordered[:limit]
    has_more = len(ordered) > limit
    return {
        "object": "list",
        "data": [render(it) for it in page],
        "has_more": has_more,
        "next_cursor": encode_cursor(kind, *sort_key(page[-1])) if has_more else None,
    }
