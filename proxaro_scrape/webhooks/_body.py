"""The bounds on a webhook body, and decoding one without trusting it.

A Proxaro event is a few hundred bytes of UTF-8 JSON, an object nested two or three deep.
Whatever else arrives, even correctly signed, is refused with a
:class:`~proxaro_scrape.errors.WebhookBodyError` whose ``reason`` names the bound, never with
a ``RecursionError``, a ``MemoryError`` or a guess at another encoding:

- over :data:`MAX_BODY_BYTES` (1 MiB, the receiver's default ``max_body_bytes``): ``too_large``;
  the receiver reads no further than one byte past the cap and checks this before the
  signature, so a huge body costs neither memory nor an HMAC over it;
- not UTF-8 (``json.loads`` would take UTF-16 and UTF-32 too): ``not_utf8``;
- not JSON, or JSON an event never holds (``NaN``, ``Infinity``, a float that overflows to
  infinity, an integer over Python's digit limit, a key twice in one object): ``not_json``;
- nested deeper than :data:`MAX_DEPTH`: ``too_deep``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from proxaro_scrape.errors import ConfigurationError, WebhookBodyError

__all__ = ["MAX_BODY_BYTES", "MAX_DEPTH", "check_size", "decode_body", "within_depth"]

#: Largest body the receiver reads (bytes); a Proxaro event is a few hundred bytes.
MAX_BODY_BYTES = 1024 * 1024
#: Deepest nesting of a body, the event object itself being depth 1 (``data`` is depth 2).
MAX_DEPTH = 32


def check_size(body: object, max_bytes: int) -> None:
    """Refuse a bytes-like or str ``body`` longer than ``max_bytes`` (``reason="too_large"``).

    A str is measured in characters, a lower bound of its UTF-8 size: :func:`decode_body`
    measures it again once encoded.
    """
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ConfigurationError("max_bytes is a positive int", param="max_bytes")
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        size = body.nbytes if isinstance(body, memoryview) else len(body)
        if size > max_bytes:
            raise WebhookBodyError(
                f"the body is over the {max_bytes}-byte cap ({size} bytes or more)",
                reason="too_large",
            )


def decode_body(body: object, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """The JSON value of a raw body, within every bound above; any failure is a
    :class:`~proxaro_scrape.errors.WebhookBodyError`.  Any JSON value is returned: whether it
    is an event is :func:`~proxaro_scrape.webhooks.parse_event`'s business.
    """
    check_size(body, max_bytes)
    if isinstance(body, str):
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: no UTF-8 body decodes to this
            raise WebhookBodyError("the body is not UTF-8", reason="not_utf8") from None
        check_size(raw, max_bytes)
    elif isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
    else:
        raise WebhookBodyError(f"the body is a {type(body).__name__}, not bytes", reason="not_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookBodyError(
            f"the body is not UTF-8 (byte {exc.start})", reason="not_utf8"
        ) from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
        )
    except RecursionError:
        # The C decoder recurses once per level and gives up near the interpreter's recursion
        # limit, far deeper than MAX_DEPTH: what it refuses is too deep by any measure.
        raise WebhookBodyError(
            f"the body is nested deeper than {MAX_DEPTH} levels", reason="too_deep"
        ) from None
    except ValueError as exc:
        raise WebhookBodyError(f"the body is not JSON: {exc}", reason="not_json") from None
    if not within_depth(value, MAX_DEPTH):
        raise WebhookBodyError(
            f"the body is nested deeper than {MAX_DEPTH} levels", reason="too_deep"
        )
    return value


def within_depth(value: object, limit: int) -> bool:
    """Is ``value`` (JSON-like: mappings, lists, tuples, scalars) nested ``limit`` deep at most?

    Iterative, so any depth can be measured without recursion; a scalar is depth 0.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that disagree on which duplicate wins is how smuggling starts: refuse.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} does not fit a float")
    return value
