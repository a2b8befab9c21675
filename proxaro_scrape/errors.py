"""Every exception proxaro-scrape raises, under one :class:`ProxaroError`.

Messages never carry a secret: API keys, gateway passwords and webhook secrets are masked
where they are stored (see :mod:`proxaro_scrape._secrets`), so they cannot reach a message.
"""

from __future__ import annotations

from typing import Any


class ProxaroError(Exception):
    """Base class of every proxaro-scrape error."""


class ConfigurationError(ProxaroError, ValueError):
    """Bad input caught before anything is sent (a key, a CIDR, a setting, a URL...).

    ``param`` names what is wrong.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TargetError(ConfigurationError):
    """A targeting (country, city, ASN, exit class, session) that cannot be sent."""


# ---------------------------------------------------------------------------- REST API


class APIError(ProxaroError):
    """The API answered with an error.

    Carries the envelope's fields: ``status``, ``type``, ``code``, ``message``, ``param`` and
    ``request_id`` (``None`` where the body was not the envelope).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.body = body
        super().__init__(self._text())

    def _text(self) -> str:
        bits = [self.message]
        if self.status is not None:
            bits.append(f"(HTTP {self.status}")
            if self.code:
                bits[-1] += f", {self.code}"
            if self.request_id:
                bits[-1] += f", request {self.request_id}"
            bits[-1] += ")"
        return " ".join(bits)


class InvalidRequestError(APIError):
    """400 ``invalid_request``."""


class AuthenticationError(APIError):
    """401 ``authentication_required``."""


class PermissionDeniedError(APIError):
    """403 ``forbidden``; ``scope_required`` tells a plan or scope that lacks the right."""

    @property
    def scope_required(self) -> bool:
        return self.code == "scope_required"


class NotFoundError(APIError):
    """404 ``not_found``."""


class ConflictError(APIError):
    """409 ``conflict``."""


class UnprocessableEntityError(APIError):
    """422 ``unprocessable_entity``."""


class RateLimitError(APIError):
    """429 ``rate_limited``; ``retry_after`` in seconds when the API said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class InternalServerError(APIError):
    """500 ``internal_error``."""


class ServiceUnavailableError(APIError):
    """503 ``service_unavailable``; ``retry_after`` in seconds when the API said (RFC 9110
    allows ``Retry-After`` on a 503 too)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class APIConnectionError(ProxaroError):
    """The API could not be reached."""


class APITimeoutError(APIConnectionError):
    """The API did not answer in time; ``timeout`` is the call's deadline in seconds, when it
    had one."""

    def __init__(self, message: str, *, timeout: float | None = None) -> None:
        self.timeout = timeout
        super().__init__(message)


# ---------------------------------------------------------------------------- gateway


class GatewayError(ProxaroError):
    """The gateway itself refused or failed (``X-Proxaro-Error``)."""

    def __init__(
        self, message: str, *, status: int | None = None, error: str | None = None
    ) -> None:
        self.status = status
        self.error = error
        super().__init__(message)


class GatewayAuthError(GatewayError):
    """407 ``auth_failed`` even with freshly fetched credentials."""


class BadTargetingError(GatewayError):
    """400 ``bad_targeting``: a bug in the targeting; never retried."""


class SourceNotAllowedError(GatewayError):
    """403 ``source_not_allowed``: add this machine's address to the allowlist."""


class ScopeRequiredError(GatewayError):
    """403 ``scope_required``: ASN targeting needs the Growth plan or above."""


class AttemptsExhaustedError(ProxaroError):
    """Every attempt the budget allowed failed; ``tried`` says what was tried."""

    def __init__(self, message: str, *, tried: list[str] | None = None) -> None:
        self.tried = list(tried or [])
        super().__init__(message)


class UsageCapError(ProxaroError):
    """The plan's bandwidth cap is reached and the usage guard is set to stop routing."""


class RequestNotReplayableError(ProxaroError):
    """An attempt failed and must be sent again, but its body was a one-shot stream.

    The client-stack integrations resend a request after a ban, a dead region, an exit failure
    or a credentials refresh; a body given as bytes can be sent again, a generator or a file
    being streamed cannot.  ``kind`` is the outcome of the attempt that failed (``"ban"``...).
    """

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        self.kind = kind
        super().__init__(message)


# ---------------------------------------------------------------------------- webhooks


class WebhookError(ProxaroError):
    """A webhook delivery that cannot be accepted."""


class WebhookSignatureError(WebhookError):
    """The ``X-NB-Signature`` header is missing or does not match the body and the secret."""


class WebhookPayloadError(WebhookError, ValueError):
    """The body is not a Proxaro event (not JSON, or a bad id, type, created_at or data)."""


class WebhookBodyError(WebhookPayloadError):
    """A webhook body that is not an event Proxaro sends; ``reason`` names the check it failed.

    ``reason`` is one of ``too_large`` (over the receiver's size cap), ``not_utf8``,
    ``not_json``, ``too_deep`` (nested deeper than an event is), ``not_object``, ``bad_object``,
    ``bad_id``, ``bad_type``, ``bad_created_at`` or ``bad_data``.  The receiver's 400 answer
    carries it, so the sender's delivery log says why.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
