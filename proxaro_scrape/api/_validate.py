"""Bad input caught before anything is sent, mirroring the reference's rules.

Every check raises :class:`~proxaro_scrape.errors.ConfigurationError` with ``param`` naming the
argument, and a message that says what is wrong and what is accepted.  Nothing here performs
I/O, and no message ever echoes an API key (only its shape is described).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
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


# A base URL is parsed by hand rather than by ``urlsplit``: the standard parser accepts ports
# past 65535 (httpx then wraps them onto another port), backslashes that browsers read as "/",
# and whitespace, and each of those would send the key somewhere the user did not write.
_BASE_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?P<rest>.*)",
    re.DOTALL,
)
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[^:]*))?")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?")
_SEGMENT = re.compile(r"[A-Za-z0-9._~\-]+")
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")
MAX_HOST_LENGTH = 253
#: Where plain http is believed safe: the key never leaves the machine.
LOOPBACK_NAMES = ("localhost",)


def mask_url(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL replaced by ``****@``, for messages."""
    return _USERINFO.sub("****@", text)


def _bad_url(source: str, what: str, value: str) -> ConfigurationError:
    return ConfigurationError(f"{source} {what}, got {mask_url(value)!r}", param="base_url")


def _check_host(host: str, source: str, value: str) -> str:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _bad_url(
                source, "has a bracketed host that is not an IPv6 address", value
            ) from None
        return host.lower()
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise _bad_url(source, "must be an http:// or https:// URL with a host", value)
    if len(name) > MAX_HOST_LENGTH or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise _bad_url(source, "has a host that is not a DNS name or an IP address", value)
    if name.replace(".", "").isdigit():
        # All digits: only a dotted-quad IPv4 address is unambiguous ("127.1" is not).
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise _bad_url(source, "has a host that is not a valid IPv4 address", value) from None
    return name.lower()


def base_url(value: Any, *, source: str = "base_url") -> str:
    """A strict ``http(s)://host[:port][/prefix]``, returned without a trailing slash.

    Refused, with a message that names ``source`` (and never shows a password): another scheme;
    a user or password (``https://user:pass@host``: the API authenticates with the key, and a
    password in a URL ends up in logs); a port outside 1..65535 or not written in digits; a host
    that is neither a DNS name nor an IP address; whitespace, control characters or backslashes
    anywhere; a query or a fragment; ``.``/``..``/empty path segments or characters a path
    prefix cannot hold; and a prefix ending in ``/v1`` (the client adds ``/v1/...`` itself).
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{source} must be a non-empty URL", param="base_url")
    text = value.strip()
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c == "\\" for c in text):
        raise _bad_url(
            source, "must not contain whitespace, control characters or backslashes", text
        )
    m = _BASE_URL.fullmatch(text)
    if m is None or m["scheme"].lower() not in ("http", "https"):
        raise _bad_url(source, "must be an http:// or https:// URL with a host", text)
    scheme, authority, path = m["scheme"].lower(), m["authority"], m["path"]
    if "@" in authority:
        raise _bad_url(
            source,
            "must not carry a user or password (the API key authenticates; pass it as api_key)",
            text,
        )
    if m["rest"]:
        raise _bad_url(source, "must not carry a query or fragment", text)
    hp = _HOST_PORT.fullmatch(authority)
    if hp is None:
        raise _bad_url(source, "has a malformed host or port", text)
    host = _check_host(hp["host"], source, text)
    port = ""
    if hp["port"] is not None:
        if (
            not hp["port"].isascii()
            or not hp["port"].isdigit()
            or not 1 <= int(hp["port"]) <= 65535
        ):
            raise _bad_url(source, "must have a port from 1 to 65535", text)
        port = f":{int(hp['port'])}"
    segments = path.rstrip("/").split("/")[1:] if path.rstrip("/") else []
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise _bad_url(
                source,
                "may only have a path prefix of letters, digits and -._~ segments",
                text,
            )
    if segments and segments[-1].lower() == "v1":
        raise _bad_url(
            source,
            "is the API's root, without /v1 (the client adds /v1/... to every request)",
            text,
        )
    return f"{scheme}://{host}{port}{''.join('/' + s for s in segments)}"


def is_loopback_url(url: str) -> bool:
    """Whether a URL :func:`base_url` returned names this machine (no name is resolved)."""
    host = url.split("://", 1)[1].split("/", 1)[0]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_http(url: str, allowed: bool, *, source: str = "base_url") -> None:
    """Refuse plain ``http://`` off loopback unless ``allowed``: the key would cross the
    network in clear text."""
    if url.startswith("http://") and not allowed and not is_loopback_url(url):
        raise ConfigurationError(
            f"{source} is plain http:// to a host that is not this machine ({url}): the API "
            "key would travel in clear text. Use https://, or opt in with "
            "allow_insecure_http=True (PROXARO_ALLOW_INSECURE_HTTP=1)",
            param="base_url",
        )


def flag(value: Any, param: str) -> bool:
    """A bool argument (``1`` or ``"yes"`` are not accepted: they hide a typo)."""
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{param} must be True or False, got {type(value).__name__} {value!r}", param=param
        )
    return value


def env_flag(value: str | None, name: str) -> bool:
    """An environment variable read as a flag: unset, empty, 0/false/no → False; 1/true/yes →
    True; anything else is refused, naming the variable."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"{name} must be 1/true/yes or 0/false/no, got {value!r}", param=name)


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


def number(
    value: Any,
    param: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    what: str = "a number",
) -> float:
    """A finite int or float (never a bool) from ``minimum`` (excluded when ``strict``) to
    ``maximum``, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{param} must be {what}, got {type(value).__name__} {value!r}", param=param
        )
    if not math.isfinite(value):
        raise ConfigurationError(f"{param} must be finite, got {value!r}", param=param)
    low_ok = minimum is None or (value > minimum if strict else value >= minimum)
    if not low_ok or (maximum is not None and value > maximum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        if maximum is not None:
            bound += f" and <= {maximum:g}"
        raise ConfigurationError(f"{param} must be {bound}, got {value!r}", param=param)
    return float(value)


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Headers the client writes itself; a default header cannot replace them.
RESERVED_HEADERS = frozenset({"authorization", "x-api-version", "host", "content-length"})


def headers(value: Any) -> dict[str, str]:
    """``default_headers``: a mapping of header names to str values, neither holding a line
    break (a header split in two is a request smuggled in)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"default_headers must be a mapping of str to str, got {type(value).__name__}",
            param="default_headers",
        )
    out: dict[str, str] = {}
    for name, val in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigurationError(
                f"default_headers has a name that is not an HTTP header name: {name!r}",
                param="default_headers",
            )
        if name.lower() in RESERVED_HEADERS:
            raise ConfigurationError(
                f"default_headers cannot set {name}: the client writes it (api_key=, api_version=)",
                param="default_headers",
            )
        if not isinstance(val, str) or any(c in val for c in "\r\n\0"):
            raise ConfigurationError(
                f"default_headers[{name!r}] must be a str without line breaks",
                param="default_headers",
            )
        out[name] = val
    return out


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
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in value):
        raise ConfigurationError(
            f"url must not contain whitespace, control characters or backslashes: {value!r}",
            param="url",
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(f"url must have a port from 1 to 65535: {value!r}", param="url")
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
