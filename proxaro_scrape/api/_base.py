"""The shared request/response layer of :class:`Proxaro` and :class:`AsyncProxaro`.

Everything here is sans-I/O: building a request, reading a response into a value or one
exception (:data:`ERROR_TABLE` is the only place an envelope becomes a class), deciding whether
a failure is retried and how long to wait (:func:`should_retry`, :func:`retry_wait`), reading
the ``X-RateLimit-*`` headers and pacing.  The sync and async clients only differ in how they
send and how they sleep, so the two cannot drift apart.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import _validate
from proxaro_scrape.api._ratelimit import Pacer, parse_rate_limit
from proxaro_scrape.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)

if TYPE_CHECKING:
    pass

T = TypeVar("T")

logger = logging.getLogger("proxaro_scrape.api")

ENV_API_KEY = "PROXARO_API_KEY"
ENV_BASE_URL = "PROXARO_BASE_URL"
ENV_ALLOW_INSECURE_HTTP = "PROXARO_ALLOW_INSECURE_HTTP"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2

#: Methods a server may see twice without harm: retried after any transient failure.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})

# ---------------------------------------------------------------------------- errors

#: The one mapping from the reference's error table to exception classes.  The envelope's
#: ``type`` decides; an envelope with a type this version does not know falls back to its
#: status, then to APIError.  A body that is not the envelope at all is a plain APIError
#: (a RateLimitError for a 429, whoever sent it).
ERROR_TABLE: tuple[tuple[int, str, type[APIError]], ...] = (
    (400, "invalid_request", InvalidRequestError),
    (401, "authentication_required", AuthenticationError),
    (403, "forbidden", PermissionDeniedError),
    (404, "not_found", NotFoundError),
    (409, "conflict", ConflictError),
    (422, "unprocessable_entity", UnprocessableEntityError),
    (429, "rate_limited", RateLimitError),
    (500, "internal_error", InternalServerError),
    (503, "service_unavailable", ServiceUnavailableError),
)
_BY_TYPE = {type_: cls for _, type_, cls in ERROR_TABLE}
_BY_STATUS = {status: cls for status, _, cls in ERROR_TABLE}

#: Statuses after which the server cannot have acted (retried for every method).
RETRY_ANY_METHOD = frozenset({429, 503})
#: Statuses after which it may have acted (retried for idempotent methods only).  502 and 504
#: come from load balancers in front of the API: as ambiguous as a 500.
RETRY_IDEMPOTENT = frozenset({500, 502, 504})
#: httpx failures that happen before the request left: the server cannot have acted.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_SNIPPET = 200


def redact(text: str, key: Secret | None) -> str:
    """``text`` with the API key (should a server echo it) replaced by its masked form."""
    if key is not None and key.reveal() and key.reveal() in text:
        text = text.replace(key.reveal(), str(key))
    return text


def is_error_envelope(body: Any) -> bool:
    """Whether ``body`` is the reference's error envelope, ``{"error": {"type": ..., ...}}``:
    an object whose ``error`` is an object naming a ``type`` or a ``message`` (no model of the
    reference has an ``error`` object)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("error"), Mapping):
        return False
    inner = body["error"]
    return isinstance(inner.get("type"), str) or isinstance(inner.get("message"), str)


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    now: float,
    key: Secret | None = None,
) -> APIError:
    """The exception for a non-2xx answer.  Never raises itself, whatever the body."""
    if key is not None and key.reveal().encode() in content:
        # A server (or a proxy) that echoes the Authorization header must not put the key
        # into the message nor into ``exc.body``.
        content = content.replace(key.reveal().encode(), str(key).encode())
    envelope: Mapping[str, Any] | None = None
    try:
        body: Any = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        envelope = body["error"]
    retry_after = retry_after_from_headers(headers, now=now)
    request_id = headers.get("x-request-id")
    if envelope is None:
        ctype = headers.get("content-type", "unknown content type").split(";")[0]
        snippet = content[:_SNIPPET].decode("utf-8", "replace").strip()
        message = (
            f"The API answered with a body that is not the error envelope ({ctype}): {snippet!r}"
        )
        cls: type[APIError] = APIError
        if status == 429:
            # Even without the envelope, a 429 is a rate limit the caller handles as such.
            cls = RateLimitError
        return _make(
            cls,
            redact(message, key),
            status=status,
            request_id=request_id,
            retry_after=retry_after,
            body=body,
        )
    etype = _str_or_none(envelope.get("type"))
    cls = _BY_TYPE.get(etype or "") or _BY_STATUS.get(status) or APIError
    message = _str_or_none(envelope.get("message")) or f"The API answered HTTP {status}"
    return _make(
        cls,
        redact(message, key),
        status=status,
        type=etype,
        code=_str_or_none(envelope.get("code")),
        param=_str_or_none(envelope.get("param")),
        request_id=_str_or_none(envelope.get("request_id")) or request_id,
        retry_after=retry_after,
        body=body,
    )


def _make(cls: type[APIError], message: str, *, retry_after: float | None, **kw: Any) -> APIError:
    if issubclass(cls, (RateLimitError, ServiceUnavailableError)):
        return cls(message, retry_after=retry_after, **kw)
    return cls(message, **kw)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def connection_error(
    exc: httpx.TransportError, method: str, url: str, *, deadline: float | None = None
) -> APIConnectionError:
    """The exception for a request that got no answer (httpx's message has no headers).

    ``deadline`` is the call's whole budget in seconds, named in the message when a timeout is
    what ended it.
    """
    what = f"{method} {url}"
    if isinstance(exc, httpx.TimeoutException):
        phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting"
        budget = f" within its {deadline:g} s timeout" if deadline is not None else ""
        return APITimeoutError(
            f"The Proxaro API timed out ({phase}) on {what}{budget}: {exc}",
            timeout=deadline,
        )
    return APIConnectionError(
        f"Could not reach the Proxaro API on {what}: {type(exc).__name__}: {exc}"
    )


def deadline_error(method: str, url: str, deadline: float) -> APITimeoutError:
    """The exception for a call whose deadline passed between two steps (pacing, a retry)."""
    return APITimeoutError(
        f"The Proxaro API call {method} {url} did not finish within its {deadline:g} s timeout "
        "(connecting, sending, reading and retries included)",
        timeout=deadline,
    )


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts (the *which* lives in :func:`should_retry`).

    Exponential backoff ``initial_backoff * 2**(attempt-1)`` capped at ``max_backoff``, minus up
    to ``jitter`` of itself at random so that many clients do not retry in step.  A server's
    ``Retry-After`` is honoured as given, capped at ``max_retry_after``; every wait also has to
    fit in what is left of the call's deadline (the client's ``timeout``), else the call fails
    at once instead of sleeping.
    """

    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        for name in ("initial_backoff", "max_backoff", "max_retry_after", "jitter"):
            _validate.number(getattr(self, name), name, minimum=0.0)
        if self.jitter > 1:
            raise ConfigurationError(
                f"jitter must be from 0 to 1, got {self.jitter!r}", param="jitter"
            )


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to build requests; resolved once, at construction.

    ``deadline`` is the most one call may take, in seconds: connecting, sending, every read,
    the backoff between retries and any ``Retry-After`` wait included (``None``: no limit).
    """

    api_key: Secret | None
    base_url: str
    api_version: str
    timeout: httpx.Timeout
    max_retries: int
    retry_policy: RetryPolicy
    pacer: Pacer | None
    headers: Mapping[str, str] = field(default_factory=dict)
    deadline: float | None = None

    @property
    def is_test(self) -> bool:
        return self.api_key is not None and self.api_key.reveal().startswith("proxaro_test_")


def _resolve_timeout(timeout: float | httpx.Timeout | None) -> tuple[httpx.Timeout, float | None]:
    """The per-phase httpx timeout and the call's deadline.

    A number is both: no phase waits longer, and the whole call ends by then.  An
    ``httpx.Timeout`` keeps its phases, and the call's deadline is the largest of them (all
    ``None``: no deadline, as asked).
    """
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, httpx.Timeout):
        phases = [v for v in timeout.as_dict().values() if v is not None]
        for value in phases:
            _validate.number(value, "timeout", minimum=0.0, strict=True)
        return timeout, max(phases) if phases else None
    seconds = _validate.number(timeout, "timeout", minimum=0.0, strict=True, what="seconds")
    return httpx.Timeout(seconds), seconds


def resolve_config(
    api_key: str | Secret | None,
    base_url: str | None,
    *,
    api_version: str | None,
    timeout: float | httpx.Timeout | None,
    max_retries: int,
    retry_policy: RetryPolicy | None,
    pacer: Pacer | None,
    headers: Mapping[str, str] | None,
    allow_insecure_http: bool = False,
    env: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Arguments first, then ``PROXARO_API_KEY`` / ``PROXARO_BASE_URL`` /
    ``PROXARO_ALLOW_INSECURE_HTTP``, then the defaults.

    A key that is given (by either) must be well-formed, checked here before any request; a key
    that is missing altogether only fails a call that needs one (``plans.list()`` does not).
    Plain ``http://`` is refused off loopback unless ``allow_insecure_http`` (or the variable)
    says so: the key would cross the network in clear text.
    """
    env = os.environ if env is None else env
    key: Secret | None = None
    if api_key is not None:
        key = _validate.api_key(api_key, source="api_key")
    elif env.get(ENV_API_KEY) is not None:
        key = _validate.api_key(env[ENV_API_KEY], source=ENV_API_KEY)
    insecure_ok = _validate.flag(allow_insecure_http, "allow_insecure_http") or (
        _validate.env_flag(env.get(ENV_ALLOW_INSECURE_HTTP), ENV_ALLOW_INSECURE_HTTP)
    )
    if base_url is not None:
        url = _validate.base_url(base_url)
        _validate.insecure_http(url, insecure_ok)
    elif env.get(ENV_BASE_URL):
        url = _validate.base_url(env[ENV_BASE_URL], source=ENV_BASE_URL)
        _validate.insecure_http(url, insecure_ok, source=ENV_BASE_URL)
    else:
        url = protocol.DEFAULT_BASE_URL
    version = _validate.api_version(
        protocol.DEFAULT_API_VERSION if api_version is None else api_version
    )
    http_timeout, deadline = _resolve_timeout(timeout)
    if pacer is not None and not isinstance(pacer, Pacer):
        raise ConfigurationError(
            f"pacer must be a proxaro_scrape.Pacer, got {type(pacer).__name__}", param="pacer"
        )
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise ConfigurationError(
            f"retry_policy must be a proxaro_scrape.RetryPolicy, got {type(retry_policy).__name__}",
            param="retry_policy",
        )
    return ClientConfig(
        api_key=key,
        base_url=url,
        api_version=version,
        timeout=http_timeout,
        max_retries=_validate.max_retries(max_retries),
        retry_policy=retry_policy or RetryPolicy(),
        pacer=pacer,
        headers=_validate.headers(headers),
        deadline=deadline,
    )


# ---------------------------------------------------------------------------- requests


@functools.cache
def user_agent() -> str:
    """``proxaro-scrape/<version>``; read lazily because the package imports this module."""
    from proxaro_scrape import __version__

    return f"proxaro-scrape/{__version__}"


@dataclass(frozen=True)
class RequestSpec(Generic[T]):
    """One API call, validated and ready to build: what to send and how to read the answer.

    ``parse`` turns the decoded JSON body into the value the caller gets (a model, a page...).
    ``auth`` is false for the public endpoints (plans, status), which never see the key.
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    auth: bool = True
    #: Accept a 2xx body that is not JSON (GET /v1/status may answer a bare "OK").
    text_ok: bool = False

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS


def build_request(config: ClientConfig, spec: RequestSpec[Any]) -> httpx.Request:
    """The ``httpx.Request`` for ``spec`` (no I/O).  Missing key → ConfigurationError."""
    headers = {
        "Accept": "application/json",
        "User-Agent": user_agent(),
        "X-API-Version": config.api_version,
        **config.headers,
    }
    if spec.auth:
        if config.api_key is None:
            raise ConfigurationError(
                f"api_key is required for {spec.method} {spec.path}: pass api_key=... "
                f"or set {ENV_API_KEY}",
                param="api_key",
            )
        headers["Authorization"] = f"Bearer {config.api_key.reveal()}"
    params = {k: v for k, v in (spec.params or {}).items() if v is not None}
    return httpx.Request(
        spec.method,
        config.base_url + spec.path,
        params=params or None,
        json=spec.json,
        headers=headers,
        # A bare httpx.Request carries no timeout; without this extension there would be none.
        extensions={"timeout": config.timeout.as_dict()},
    )


def parse_response(
    spec: RequestSpec[T],
    response: httpx.Response,
    *,
    now: float | None = None,
    key: Secret | None = None,
) -> T:
    """The value of a 2xx answer, or raise the one exception the answer maps to."""
    now = time.time() if now is None else now
    status = response.status_code
    content = response.content
    if not 200 <= status < 300:
        raise error_from_response(status, response.headers, content, now=now, key=key)
    try:
        body = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        if spec.text_ok:
            return spec.parse({"status": content.decode("utf-8", "replace").strip()})
        raise APIError(
            f"The API answered HTTP {status} to {spec.method} {spec.path} with a body that is "
            f"not JSON: {redact(content[:_SNIPPET].decode('utf-8', 'replace'), key)!r}",
            status=status,
            request_id=response.headers.get("x-request-id"),
        ) from None
    if is_error_envelope(body):
        # Some gateways and proxies answer 200 with the error inside: that is an error, not an
        # object whose every field reads None.
        raise error_from_response(status, response.headers, content, now=now, key=key)
    try:
        return spec.parse(body)
    except (TypeError, KeyError, ValueError) as exc:
        raise APIError(
            f"The API answered {spec.method} {spec.path} with an unexpected shape: {exc}",
            status=status,
            request_id=response.headers.get("x-request-id"),
            body=body,
        ) from None


# ---------------------------------------------------------------------------- retries


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP date (``now`` is a UNIX time).

    Garbage, negative, NaN or infinite values → ``None`` (fall back to backoff); a date in the
    past → ``0``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        return None


def retry_after_from_headers(headers: Mapping[str, str], *, now: float) -> float | None:
    """``Retry-After``; else, when the budget is spent, the seconds until ``X-RateLimit-Reset``."""
    seconds = parse_retry_after(headers.get("retry-after"), now=now)
    if seconds is not None:
        return seconds
    limit = parse_rate_limit(headers, now=now)
    if limit is not None and limit.remaining == 0 and limit.reset is not None:
        return max(0.0, limit.reset.timestamp() - now)
    return None
