"""Constants of the Proxaro gateway protocol (``shared/gateway-protocol.md``).

This is the only module that the client side and the sandbox share.  It holds names and
tables, never logic: the username grammar is *encoded* in :mod:`proxaro_scrape.gateway.target`
and *decoded* in :mod:`proxaro_scrape.sandbox.targeting`, two independent implementations, so
that the client and the sandbox cannot agree on a mistake by sharing code.
"""

from __future__ import annotations

from typing import Final

#: Targeting keys, in the order in which they must appear in the username.
USERNAME_KEYS: Final[tuple[str, ...]] = ("country", "city", "asn", "class", "session", "sesstime")

#: Exit classes known to the gateway.
EXIT_CLASSES: Final[tuple[str, ...]] = (
    "residential",
    "isp",
    "mobile_4g",
    "mobile_5g",
    "datacenter",
)

#: Default sticky-session lifetime in minutes, and the accepted range.
DEFAULT_SESSTIME_MINUTES: Final = 10
MIN_SESSTIME_MINUTES: Final = 1
MAX_SESSTIME_MINUTES: Final = 1440
MAX_SESSION_ID_LENGTH: Final = 32

#: How long the previous gateway password is still accepted after a rotation (seconds).
ROTATION_GRACE_SECONDS: Final = 60.0

# Headers the gateway adds of its own.
HEADER_ERROR: Final = "X-Proxaro-Error"
HEADER_EXIT_IP: Final = "X-Proxaro-Exit-IP"
HEADER_EXIT_COUNTRY: Final = "X-Proxaro-Exit-Country"
HEADER_EXIT_ASN: Final = "X-Proxaro-Exit-ASN"
HEADER_EXIT_CLASS: Final = "X-Proxaro-Exit-Class"
HEADER_SESSION: Final = "X-Proxaro-Session"
EXIT_HEADERS: Final[tuple[str, ...]] = (
    HEADER_EXIT_IP,
    HEADER_EXIT_COUNTRY,
    HEADER_EXIT_ASN,
    HEADER_EXIT_CLASS,
    HEADER_SESSION,
)
PROXY_AUTHENTICATE_VALUE: Final = 'Basic realm="proxaro"'

# X-Proxaro-Error values (section 3), with the status the gateway answers them with.
ERROR_AUTH_FAILED: Final = "auth_failed"
ERROR_BAD_TARGETING: Final = "bad_targeting"
ERROR_SOURCE_NOT_ALLOWED: Final = "source_not_allowed"
ERROR_SCOPE_REQUIRED: Final = "scope_required"
ERROR_NO_EXIT: Final = "no_exit"
ERROR_EXIT_FAILED: Final = "exit_failed"
ERROR_TARGET_TIMEOUT: Final = "target_timeout"
#: Sandbox-only safety answer: the target host is not on loopback.
ERROR_TARGET_NOT_ALLOWED: Final = "target_not_allowed"

GATEWAY_ERROR_STATUS: Final[dict[str, int]] = {
    ERROR_AUTH_FAILED: 407,
    ERROR_BAD_TARGETING: 400,
    ERROR_SOURCE_NOT_ALLOWED: 403,
    ERROR_SCOPE_REQUIRED: 403,
    ERROR_NO_EXIT: 502,
    ERROR_EXIT_FAILED: 502,
    ERROR_TARGET_TIMEOUT: 504,
    ERROR_TARGET_NOT_ALLOWED: 403,
}

# Webhooks.
SIGNATURE_HEADER: Final = "X-NB-Signature"
WEBHOOK_EVENTS: Final[tuple[str, ...]] = (
    "order.paid",
    "order.expired",
    "credentials.rotated",
    "usage.threshold.80",
    "usage.threshold.100",
    "allowlist.updated",
)

# REST API.
DEFAULT_BASE_URL: Final = "https://api.proxaro.io"
DEFAULT_API_VERSION: Final = "2026-04-01"
API_VERSIONS: Final[tuple[str, ...]] = ("2026-04-01",)
