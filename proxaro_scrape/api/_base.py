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
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

import httpx
import tenacity

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import _validate
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

T = TypeVar("T")

logger = logging.getLogger("proxaro_scrape.api")

ENV_API_KEY = "PROXARO_API_KEY"
ENV_BASE_URL = "PROXARO_BASE_URL"
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


def connection_error(exc: httpx.TransportError, method: str, url: str) -> APIConnectionError:
    """The exception for a request that got no answer (httpx's message has no headers)."""
    what = f"{method} {url}"
    if isinstance(exc, httpx.TimeoutException):
        phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting"
        return APITimeoutError(f"The Proxaro API timed out ({phase}) on {what}: {exc}")
    return APIConnectionError(
        f"Could not reach the Proxaro API on {what}: {type(exc).__name__}: {exc}"
    )


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts (the *which* lives in :func:`should_retry`).

    Exponential backoff ``initial_backoff * 2**(attempt-1)`` capped at ``max_backoff``, minus up
    to ``jitter`` of itself at random so that many clients do not retry in step.  A server's
    ``Retry-After`` is honoured as given, capped at ``max_retry_after``.
    """

    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        for name in ("initial_backoff", "max_backoff", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ConfigurationError(f"{name} must be a number >= 0", param=name)
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be from 0 to 1", param="jitter")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to build requests; resolved once, at construction."""

    api_key: Secret | None
    base_url: str
    api_version: str
    timeout: httpx.Timeout
    max_retries: int
    retry_policy: RetryPolicy
    pacer: Pacer | None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_test(self) -> bool:
        return self.api_key is not None and self.api_key.reveal().startswith("proxaro_test_")


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
    env: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Arguments first, then ``PROXARO_API_KEY`` / ``PROXARO_BASE_URL``, then the defaults.

    A key that is given (by either) must be well-formed, checked here before any request; a key
    that is missing altogether only fails a call that needs one (``plans.list()`` does not).
    """
    env = os.environ if env is None else env
    key: Secret | None = None
    if api_key is not None:
        key = _validate.api_key(api_key, source="api_key")
    elif env.get(ENV_API_KEY) is not None:
        key = _validate.api_key(env[ENV_API_KEY], source=ENV_API_KEY)
    if base_url is not None:
        url = _validate.base_url(base_url)
    elif env.get(ENV_BASE_URL):
        url = _validate.base_url(env[ENV_BASE_URL], source=ENV_BASE_URL)
    else:
        url = protocol.DEFAULT_BASE_URL
    version = _validate.api_version(
        protocol.DEFAULT_API_VERSION if api_version is None else api_version
    )
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if not isinstance(timeout, httpx.Timeout):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(
                f"timeout must be a number of seconds > 0, got {timeout!r}", param="timeout"
            )
        timeout = httpx.Timeout(float(timeout))
    if pacer is not None and not isinstance(pacer, Pacer):
        raise ConfigurationError("pacer must be a proxaro_scrape.Pacer", param="pacer")
    return ClientConfig(
        api_key=key,
        base_url=url,
        api_version=version,
        timeout=timeout,
        max_retries=_validate.max_retries(max_retries),
        retry_policy=retry_policy or RetryPolicy(),
        pacer=pacer,
        headers=dict(headers or {}),
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


def retry_wait(
    attempt: int, retry_after: float | None, *, policy: RetryPolicy, jitter: float
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).  Pure.

    ``retry_after`` is what the server asked for (seconds, already parsed); ``jitter`` is a
    random number in ``[0, 1)`` supplied by the caller so that this function stays pure.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_retry_after)
    backoff = min(policy.max_backoff, policy.initial_backoff * 2 ** max(attempt - 1, 0))
    return backoff * (1.0 - policy.jitter * min(max(jitter, 0.0), 1.0))


def should_retry(exc: BaseException, *, idempotent: bool) -> bool:
    """Is this failure worth another attempt?  Pure; the one place that decides.

    429 and 503 (the server did not act) and failures before the request left (connect
    errors and connect timeouts) are retried for every method.  500/502/504 and failures after
    the request may have arrived (read timeouts, dropped connections) are ambiguous: retried
    only for idempotent methods, never for a POST such as ``credentials.rotate()``.
    """
    if isinstance(exc, APIError):
        if exc.status in RETRY_ANY_METHOD:
            return True
        return idempotent and exc.status in RETRY_IDEMPOTENT
    if isinstance(exc, APIConnectionError):
        cause = exc.__cause__
        if isinstance(cause, httpx.UnsupportedProtocol):
            return False  # a bad URL stays bad
        if isinstance(cause, _NOT_SENT):
            return True
        return idempotent
    return False


def retrying_kwargs(
    config: ClientConfig,
    spec: RequestSpec[Any],
    rng: Callable[[], float] = random.random,
) -> dict[str, Any]:
    """tenacity arguments for one call: the same policy object for ``Retrying`` and
    ``AsyncRetrying``."""
    policy = config.retry_policy
    idempotent = spec.idempotent

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return retry_wait(
            state.attempt_number,
            getattr(exc, "retry_after", None),
            policy=policy,
            jitter=rng(),
        )

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        logger.info(
            "retrying %s %s in %.2fs after %s (attempt %d of %d)",
            spec.method,
            spec.path,
            sleep,
            type(exc).__name__,
            state.attempt_number,
            config.max_retries + 1,
        )

    return {
        "stop": tenacity.stop_after_attempt(config.max_retries + 1),
        "wait": wait,
        "retry": tenacity.retry_if_exception(lambda e: should_retry(e, idempotent=idempotent)),
        "before_sleep": before_sleep,
        "reraise": True,
    }


# ---------------------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class RateLimit:
    """The last ``X-RateLimit-*`` values the API sent: the per-key sliding 60 s budget."""

    limit: int | None
    remaining: int | None
    reset: datetime | None
    #: When the values were read (UNIX time).
    observed_at: float = 0.0

    def seconds_until_reset(self, now: float | None = None) -> float | None:
        """Seconds until ``reset`` (0 when it passed), ``None`` when the API did not say."""
        if self.reset is None:
            return None
        now = time.time() if now is None else now
        return max(0.0, self.reset.timestamp() - now)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if math.isfinite(number) else None


def parse_rate_limit(headers: Mapping[str, str], *, now: float) -> RateLimit | None:
    """The ``X-RateLimit-*`` headers, or ``None`` when there are none.  Garbage reads ``None``."""
    limit = _int_header(headers, "x-ratelimit-limit")
    remaining = _int_header(headers, "x-ratelimit-remaining")
    reset_ts = _int_header(headers, "x-ratelimit-reset")
    if limit is None and remaining is None and reset_ts is None:
        return None
    reset = None
    if reset_ts is not None:
        try:
            reset = datetime.fromtimestamp(reset_ts, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            reset = None
    return RateLimit(limit=limit, remaining=remaining, reset=reset, observed_at=now)


class Pacer:
    """Client-side pacing that keeps a process under its plan's request budget.

    Off by default.  Share one instance between every client of a process that uses the same
    key: ``pacer = Pacer(); Proxaro(pacer=pacer); AsyncProxaro(pacer=pacer)``.

    The budget is ``limit`` requests per ``window`` seconds when given, else learned from the
    API's ``X-RateLimit-Limit`` (per 60 s), times ``headroom`` to leave a margin for other users
    of the key.  Requests are spread evenly over the window, with at most ``burst`` of them
    back to back (default: a sixth of the budget, ten seconds' worth), so that the API's burst
    window is never met either; and never more than the budget in any sliding window.  When
    the API reports ``Remaining: 0`` the pacer holds requests until ``X-RateLimit-Reset``.

    :meth:`reserve` is pure bookkeeping over the ``now`` it is given (no sleeping): the clients
    sleep what it returns, the sync one with ``time.sleep``, the async one with ``asyncio.sleep``.
    """

    def __init__(
        self,
        limit: int | None = None,
        *,
        window: float = 60.0,
        headroom: float = 0.9,
        burst: int | None = None,
    ) -> None:
        for name, value in (("limit", limit), ("burst", burst)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{name} must be an int >= 1", param=name)
        if not isinstance(window, (int, float)) or not window > 0:
            raise ConfigurationError("window must be > 0 seconds", param="window")
        if not isinstance(headroom, (int, float)) or not 0 < headroom <= 1:
            raise ConfigurationError("headroom must be in (0, 1]", param="headroom")
        self.limit = limit
        self.window = float(window)
        self.headroom = float(headroom)
        self.burst = burst
        self._learned: int | None = None
        self._sent: deque[float] = deque()
        self._tat = float("-inf")  # GCRA's theoretical arrival time of the next request
        self._not_before = 0.0
        self._lock = threading.Lock()

    @property
    def budget(self) -> int | None:
        """Requests allowed per window, or ``None`` while unknown (then nothing is delayed)."""
        base = self.limit or self._learned
        if base is None:
            return None
        return max(1, math.floor(base * self.headroom))

    def reserve(self, now: float) -> float:
        """Book a slot for one request; return how many seconds to wait before sending it."""
        with self._lock:
            slot = max(now, self._not_before)
            budget = self.budget
            if budget is not None:
                interval = self.window / budget
                burst = min(self.burst or max(1, budget // 6), budget)
                # Even spacing with a burst tolerance (GCRA)...
                slot = max(slot, self._tat - (burst - 1) * interval)
                self._tat = max(self._tat, slot) + interval
                # ...and never more than `budget` in any sliding window.
                while len(self._sent) > budget:
                    self._sent.popleft()
                if len(self._sent) >= budget:
                    slot = max(slot, self._sent[-budget] + self.window)
                if self._sent:
                    slot = max(slot, self._sent[-1])  # first come, first served: stays sorted
                self._sent.append(slot)
            # Sub-microsecond waits are float noise of the arithmetic above, not pacing.
            wait = slot - now
            return wait if wait > 1e-6 else 0.0

    def observe(self, rate_limit: RateLimit, now: float) -> None:
        """Learn from the API's own view: its limit, and a spent budget's reset time."""
        with self._lock:
            if rate_limit.limit is not None and rate_limit.limit > 0:
                self._learned = rate_limit.limit
            if rate_limit.remaining is not None and rate_limit.remaining <= 0:
                wait = rate_limit.seconds_until_reset(now)
                if wait:
                    self._not_before = max(self._not_before, now + min(wait, self.window))

    def __repr__(self) -> str:
        return f"Pacer(budget={self.budget}, window={self.window})"
