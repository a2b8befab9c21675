"""Bad input caught before anything is sent, mirroring the reference's rules.

Every check raises :class:`~proxaro_scrape.errors.ConfigurationError` with ``param`` naming the
argument, and a message that says what is wrong and what is accepted.  Nothing here performs
I/O, and no message ever echoes an API key (only its shape is described).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import ConfigurationError

KEY_PREFIXES = ("proxaro_live_", "proxaro_test_")
KEY_BODY_LENGTH = 32
_HEX = re.compile(r"[0-9a-f]+")

#: `period` of GET /v1/usage: current, previous, or a month.
PERIODS = ("current", "previous")
_MONTH = re.compile(r"(\d{4})-(\d{2})")
GROUP_BY = ("class", "country")
ORDER_STATUSES = ("paid", "pending", "cancelled", "expired")
MAX_LABEL_LENGTH = 80
#: The widest networks the allowlist takes (reference: "Max prefix: /24 for IPv4, /48 for IPv6").
MIN_PREFIX = {4: 24, 6: 48}
ORDERS_MAX_LIMIT = 100
SESSIONS_MAX_LIMIT = 1000
#: Not in the reference; the sandbox pages delivery receipts like orders.
ATTEMPTS_MAX_LIMIT = 100
WILDCARD_EVENT = "*"

# Ids and codes are put into URL paths: only characters that cannot change the path's meaning.
_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


def api_key(value: Any, *, source: str = "api_key") -> Secret:
    """Check an API key's shape locally and wrap it as a :class:`Secret`.

    ``source`` says where the value came from (``"api_key"`` or ``"PROXARO_API_KEY"``), so the
    message points at the right place.  The message never contains the key or a part of it.
    """
    if isinstance(value, Secret):
        value = value.reveal()
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{source} must be a str, not {type(value).__name__}", param="api_key"
        )
    if not value:
        raise ConfigurationError(f"{source} is empty", param="api_key")
    if value != value.strip():
        raise ConfigurationError(
            f"{source} has leading or trailing whitespace (a copy-and-paste slip?)",
            param="api_key",
        )
    prefix = next((p for p in KEY_PREFIXES if value.startswith(p)), None)
    if prefix is None:
        raise ConfigurationError(
            f"{source} does not start with proxaro_live_ or proxaro_test_; "
            "copy the key from Dashboard → API keys",
            param="api_key",
        )
    body = value[len(prefix) :]
    if len(body) != KEY_BODY_LENGTH:
        raise ConfigurationError(
            f"{source} has {len(body)} characters after {prefix}, expected "
            f"{KEY_BODY_LENGTH} lowercase hex characters (truncated?)",
            param="api_key",
        )
    if not _HEX.fullmatch(body):
        raise ConfigurationError(
            f"{source} must be {prefix} followed by {KEY_BODY_LENGTH} lowercase hex characters "
            "(0-9, a-f); it contains other characters",
            param="api_key",
        )
    return Secret(value)


def base_url(value: Any, *, source: str = "base_url") -> str:
    """An ``http(s)://host[:port][/prefix]`` URL without a trailing slash."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{source} must be a non-empty URL", param="base_url")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{source} must be an http:// or https:// URL with a host, got {value!r}",
            param="base_url",
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"{source} must not carry a query or fragment, got {value!r}", param="base_url"
        )
    return value.strip().rstrip("/")


def api_version(value: Any) -> str:
    """A dated version such as ``2026-04-01`` (the server rejects versions it does not know)."""
    if not isinstance(value, str) or not _API_VERSION.fullmatch(value):
        raise ConfigurationError(
            f"api_version must be a date such as {protocol.DEFAULT_API_VERSION!r}, got {value!r}",
            param="api_version",
        )
    return value


def max_retries(value: Any) -> int:
    """A retry budget: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"max_retries must be an int >= 0, got {value!r}", param="max_retries"
        )
    return value


def limit(value: Any, maximum: int, param: str = "limit") -> int | None:
    """A page size from 1 to ``maximum``, or ``None`` for the server's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{param} must be an int from 1 to {maximum}, got {value!r}", param=param
        )
    if not 1 <= value <= maximum:
        raise ConfigurationError(f"{param} must be from 1 to {maximum}, got {value}", param=param)
    return value


def one_of(value: Any, allowed: Iterable[str], param: str) -> str | None:
    """``value`` is ``None`` or one of ``allowed``."""
    if value is None:
        return None
    choices = tuple(allowed)
    if not isinstance(value, str) or value not in choices:
        raise ConfigurationError(
            f"{param} must be one of {', '.join(choices)}; got {value!r}", param=param
        )
    return value


def period(value: Any) -> str | None:
    """``current``, ``previous`` or a month ``YYYY-MM``."""
    if value is None or value in PERIODS:
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        m = _MONTH.fullmatch(value)
        if m and 1 <= int(m.group(2)) <= 12:
            return value
    raise ConfigurationError(
        f"period must be 'current', 'previous' or a month 'YYYY-MM', got {value!r}",
        param="period",
    )


def exit_class(value: Any) -> str | None:
    """One of the gateway's exit classes."""
    return one_of(value, protocol.EXIT_CLASSES, "exit_class")


def cursor(value: Any) -> str | None:
    """A pagination cursor as the previous page returned it."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            "cursor must be the next_cursor string of the previous page", param="cursor"
        )
    return value


def cidr(value: Any) -> str:
    """One IPv4/IPv6 address or a network no wider than /24 (IPv4) or /48 (IPv6)."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ConfigurationError(
            f"cidr must be an IP address or CIDR such as '198.51.100.42/32', got {value!r}",
            param="cidr",
        )
    try:
        # strict=False: host bits set ("203.0.113.5/24") still name a network; the API decides.
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigurationError(
            f"cidr {value!r} is not an IPv4 or IPv6 address or CIDR", param="cidr"
        ) from None
    widest = MIN_PREFIX[net.version]
    if net.prefixlen < widest:
        raise ConfigurationError(
            f"cidr {value!r} is wider than the allowlist takes: at most /{widest} for "
            f"IPv{net.version}",
            param="cidr",
        )
    return value


def label(value: Any, param: str = "label") -> str | None:
    """A human-readable note of at most 80 characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{param} must be a str, got {type(value).__name__}", param=param)
    if len(value) > MAX_LABEL_LENGTH:
        raise ConfigurationError(
            f"{param} has {len(value)} characters; at most {MAX_LABEL_LENGTH}", param=param
        )
    return value


def webhook_url(value: Any) -> str:
    """An absolute ``https://`` URL (the API rejects plain HTTP)."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError("url must be an https:// URL", param="url")
    parts = urlsplit(value)
    if parts.scheme.lower() != "https":
        raise ConfigurationError(
            f"url must use https:// (HTTP is rejected by the API), got {value!r}", param="url"
        )
    if not parts.hostname:
        raise ConfigurationError(f"url has no host: {value!r}", param="url")
    return value


def events(value: Any) -> list[str]:
    """A non-empty list of event names from the reference, or ``["*"]`` for everything."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"events must be a list of event names such as ['order.paid'], got {value!r}",
            param="events",
        )
    names = list(value)
    if not names:
        raise ConfigurationError(
            "events is empty; name at least one event, or ['*'] for everything",
            param="events",
        )
    known = (*protocol.WEBHOOK_EVENTS, WILDCARD_EVENT)
    for name in names:
        if name not in known:
            raise ConfigurationError(
                f"unknown event {name!r}; events are {', '.join(known)}", param="events"
            )
    return names


def resource_id(value: Any, param: str = "id") -> str:
    """An id that goes into a URL path (``al_01HV...``, ``wh_01HV...``)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigurationError(
            f"{param} must be an id such as 'al_01HVQ...' (letters, digits, '_' and '-'), "
            f"got {value!r}",
            param=param,
        )
    return value


def country_code(value: Any) -> str:
    """A two-letter ISO country code, sent lowercase as the API writes it."""
    if not isinstance(value, str) or not _COUNTRY.fullmatch(value):
        raise ConfigurationError(
            f"code must be a two-letter country code such as 'us', got {value!r}", param="code"
        )
    return value.lower()
