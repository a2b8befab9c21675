"""proxaro-scrape: route Scrapy, httpx, requests and aiohttp traffic through the Proxaro gateway.

The public surface is re-exported here; the real code lives in private modules.  The names are
loaded on first use (PEP 562): ``import proxaro_scrape.integrations.scrapy`` costs a crawl only
the modules it needs (not the webhook receiver, nor the sandbox), and ``from proxaro_scrape
import GatewayManager`` works as it always did.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from proxaro_scrape._version import __version__

if TYPE_CHECKING:
    from proxaro_scrape.api import (
        Account,
        AllowlistEntry,
        Asn,
        AsyncProxaro,
        Country,
        Credentials,
        GatewaySession,
        Order,
        Pacer,
        Page,
        Plan,
        Proxaro,
        RateLimit,
        RetryPolicy,
        RotatedCredentials,
        Usage,
        Webhook,
        WebhookAttempt,
    )
    from proxaro_scrape.errors import (
        APIConnectionError,
        APIError,
        APITimeoutError,
        AttemptsExhaustedError,
        AuthenticationError,
        BadTargetingError,
        ConfigurationError,
        ConflictError,
        GatewayAuthError,
        GatewayError,
        InternalServerError,
        InvalidRequestError,
        NotFoundError,
        PermissionDeniedError,
        ProxaroError,
        RateLimitError,
        RequestNotReplayableError,
        ScopeRequiredError,
        ServiceUnavailableError,
        SourceNotAllowedError,
        TargetError,
        UnprocessableEntityError,
        UsageCapError,
        WebhookBodyError,
        WebhookError,
        WebhookPayloadError,
        WebhookSignatureError,
    )
    from proxaro_scrape.gateway import (
        ExitInfo,
        GatewayConfig,
        GatewayManager,
        Outcome,
        RequestRouting,
        Route,
        Target,
    )
    from proxaro_scrape.webhooks import (
        EventDeduplicator,
        WebhookEvent,
        WebhookReceiver,
        compute_signature,
        parse_event,
        verify_event,
        verify_signature,
    )

#: Where each public name lives.
_HOMES: dict[str, str] = {
    "Account": "proxaro_scrape.api",
    "AllowlistEntry": "proxaro_scrape.api",
    "Asn": "proxaro_scrape.api",
    "AsyncProxaro": "proxaro_scrape.api",
    "Country": "proxaro_scrape.api",
    "Credentials": "proxaro_scrape.api",
    "GatewaySession": "proxaro_scrape.api",
    "Order": "proxaro_scrape.api",
    "Pacer": "proxaro_scrape.api",
    "Page": "proxaro_scrape.api",
    "Plan": "proxaro_scrape.api",
    "Proxaro": "proxaro_scrape.api",
    "RateLimit": "proxaro_scrape.api",
    "RetryPolicy": "proxaro_scrape.api",
    "RotatedCredentials": "proxaro_scrape.api",
    "Usage": "proxaro_scrape.api",
    "Webhook": "proxaro_scrape.api",
    "WebhookAttempt": "proxaro_scrape.api",
    "APIConnectionError": "proxaro_scrape.errors",
    "APIError": "proxaro_scrape.errors",
    "APITimeoutError": "proxaro_scrape.errors",
    "AttemptsExhaustedError": "proxaro_scrape.errors",
    "AuthenticationError": "proxaro_scrape.errors",
    "BadTargetingError": "proxaro_scrape.errors",
    "ConfigurationError": "proxaro_scrape.errors",
    "ConflictError": "proxaro_scrape.errors",
    "GatewayAuthError": "proxaro_scrape.errors",
    "GatewayError": "proxaro_scrape.errors",
    "InternalServerError": "proxaro_scrape.errors",
    "InvalidRequestError": "proxaro_scrape.errors",
    "NotFoundError": "proxaro_scrape.errors",
    "PermissionDeniedError": "proxaro_scrape.errors",
    "ProxaroError": "proxaro_scrape.errors",
    "RateLimitError": "proxaro_scrape.errors",
    "RequestNotReplayableError": "proxaro_scrape.errors",
    "ScopeRequiredError": "proxaro_scrape.errors",
    "ServiceUnavailableError": "proxaro_scrape.errors",
    "SourceNotAllowedError": "proxaro_scrape.errors",
    "TargetError": "proxaro_scrape.errors",
    "UnprocessableEntityError": "proxaro_scrape.errors",
    "UsageCapError": "proxaro_scrape.errors",
    "WebhookBodyError": "proxaro_scrape.errors",
    "WebhookError": "proxaro_scrape.errors",
    "WebhookPayloadError": "proxaro_scrape.errors",
    "WebhookSignatureError": "proxaro_scrape.errors",
    "ExitInfo": "proxaro_scrape.gateway",
    "GatewayConfig": "proxaro_scrape.gateway",
    "GatewayManager": "proxaro_scrape.gateway",
    "Outcome": "proxaro_scrape.gateway",
    "RequestRouting": "proxaro_scrape.gateway",
    "Route": "proxaro_scrape.gateway",
    "Target": "proxaro_scrape.gateway",
    "EventDeduplicator": "proxaro_scrape.webhooks",
    "WebhookEvent": "proxaro_scrape.webhooks",
    "WebhookReceiver": "proxaro_scrape.webhooks",
    "compute_signature": "proxaro_scrape.webhooks",
    "parse_event": "proxaro_scrape.webhooks",
    "verify_event": "proxaro_scrape.webhooks",
    "verify_signature": "proxaro_scrape.webhooks",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
    else:
        raise AttributeError(f"module 'proxaro_scrape' has no attribute {name!r}")
    globals()[name] = value  # once: the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Account",
    "AllowlistEntry",
    "Asn",
    "AsyncProxaro",
    "AttemptsExhaustedError",
    "AuthenticationError",
    "BadTargetingError",
    "ConfigurationError",
    "ConflictError",
    "Country",
    "Credentials",
    "EventDeduplicator",
    "ExitInfo",
    "GatewayAuthError",
    "GatewayConfig",
    "GatewayError",
    "GatewayManager",
    "GatewaySession",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "Order",
    "Outcome",
    "Pacer",
    "Page",
    "PermissionDeniedError",
    "Plan",
    "Proxaro",
    "ProxaroError",
    "RateLimit",
    "RateLimitError",
    "RequestNotReplayableError",
    "RequestRouting",
    "RetryPolicy",
    "RotatedCredentials",
    "Route",
    "ScopeRequiredError",
    "ServiceUnavailableError",
    "SourceNotAllowedError",
    "Target",
    "TargetError",
    "UnprocessableEntityError",
    "Usage",
    "UsageCapError",
    "Webhook",
    "WebhookAttempt",
    "WebhookBodyError",
    "WebhookError",
    "WebhookEvent",
    "WebhookPayloadError",
    "WebhookReceiver",
    "WebhookSignatureError",
    "__version__",
    "compute_signature",
    "parse_event",
    "verify_event",
    "verify_signature",
]
