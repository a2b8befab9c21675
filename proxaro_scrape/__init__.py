"""proxaro-scrape: route Scrapy, httpx, requests and aiohttp traffic through the Proxaro gateway.

The public surface is re-exported here; the real code lives in private modules.
"""

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
    ScopeRequiredError,
    ServiceUnavailableError,
    SourceNotAllowedError,
    TargetError,
    UnprocessableEntityError,
    UsageCapError,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AttemptsExhaustedError",
    "AuthenticationError",
    "BadTargetingError",
    "ConfigurationError",
    "ConflictError",
    "GatewayAuthError",
    "GatewayError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProxaroError",
    "RateLimitError",
    "ScopeRequiredError",
    "ServiceUnavailableError",
    "SourceNotAllowedError",
    "TargetError",
    "UnprocessableEntityError",
    "UsageCapError",
    "__version__",
]
