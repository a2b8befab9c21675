""":class:`Proxaro` and :class:`AsyncProxaro`: twins of the same shape over one shared layer.

Both resolve their configuration, build requests and read responses through
:mod:`proxaro_scrape.api._base`; only the sending (``httpx.Client`` vs ``httpx.AsyncClient``)
and the sleeping (``time.sleep`` vs ``asyncio.sleep``, via tenacity) differ.  A call's first
attempt is made directly; tenacity, imported then, takes over only once a retry is due
(:func:`~proxaro_scrape.api._retry.worth_retrying`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TypeVar

import httpx

from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import _deadline
from proxaro_scrape.api import _resources as r
from proxaro_scrape.api._base import (
    DEFAULT_MAX_RETRIES,
    ClientConfig,
    RequestSpec,
    RetryPolicy,
    build_request,
    connection_error,
    deadline_error,
    parse_rate_limit,
    parse_response,
    resolve_config,
)
from proxaro_scrape.api._deadline import clamp_timeout, deadline_scope, time_left
from proxaro_scrape.api._models import APIStatus
from proxaro_scrape.api._ratelimit import Pacer, RateLimit
from proxaro_scrape.api._retry import retrying_kwargs, worth_retrying
from proxaro_scrape.errors import APIConnectionError, ConfigurationError

T = TypeVar("T")


class _ClientBase:
    """What the twins share: configuration, the last rate-limit view, the pacer."""

    _config: ClientConfig

    def __init__(
        self,
        api_key: str | Secret | None,
        base_url: str | None,
        *,
        api_version: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        retry_policy: RetryPolicy | None,
        pacer: Pacer | None,
        default_headers: Mapping[str, str] | None,
        allow_insecure_http: bool,
    ) -> None:
        self._config = resolve_config(
            api_key,
            base_url,
            api_version=api_version,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            pacer=pacer,
            headers=default_headers,
            allow_insecure_http=allow_insecure_http,
        )
        self._rate_limit: RateLimit | None = None

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._config.base_url

    @property
    def api_version(self) -> str:
        """The ``X-API-Version`` sent with every request."""
        return self._config.api_version

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt, for failures worth retrying."""
        return self._config.max_retries

    @property
    def timeout(self) -> httpx.Timeout:
        """The httpx timeout of every request."""
        return self._config.timeout

    @property
    def deadline(self) -> float | None:
        """The most one call may take, in seconds, retries included (``None``: no limit)."""
        return self._config.deadline

    def _start(self, spec: RequestSpec[T]) -> tuple[httpx.Request, float | None]:
        """The request of ``spec`` and the ``time.monotonic()`` by which the call must end."""
        request = build_request(self._config, spec)
        total = self._config.deadline
        return request, (time.monotonic() + total if total is not None else None)

    def _time_left(self, request: httpx.Request, deadline: float | None) -> float | None:
        """Seconds left for this attempt, with the request's per-phase timeouts clamped to it;
        raises when none are left."""
        left = time_left(deadline)
        if left is not None and left <= 0:
            assert self._config.deadline is not None
            raise deadline_error(request.method, str(request.url), self._config.deadline)
        request.extensions["timeout"] = clamp_timeout(self._config.timeout, left)
        return left

    def _pace(self, request: httpx.Request, deadline: float | None) -> float:
        """Seconds the pacer asks to wait; raises when they do not fit in the deadline."""
        pacer = self._config.pacer
        if pacer is None:
            return 0.0
        left = time_left(deadline)
        delay = pacer.reserve(time.time(), within=left)
        if left is not None and delay >= left:
            assert self._config.deadline is not None
            raise deadline_error(request.method, str(request.url), self._config.deadline)
        return delay

    def _timed_out(self, exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
        return connection_error(
            exc, request.method, str(request.url), deadline=self._config.deadline
        )

    @property
    def pacer(self) -> Pacer | None:
        """The client-side pacer, when one was given."""
        return self._config.pacer

    @property
    def has_key(self) -> bool:
        """Whether an API key is configured (``plans.list()`` and ``status()`` need none)."""
        return self._config.api_key is not None

    @property
    def is_test(self) -> bool:
        """``True`` for a ``proxaro_test_`` key (sandboxed pool, fake usage), ``False`` for a
        ``proxaro_live_`` key or no key."""
        return self._config.is_test

    @property
    def rate_limit(self) -> RateLimit | None:
        """The last ``X-RateLimit-*`` values seen (``limit``, ``remaining``, ``reset``)."""
        return self._rate_limit

    def _observe(self, response: httpx.Response) -> None:
        now = time.time()
        seen = parse_rate_limit(response.headers, now=now)
        if seen is not None:
            self._rate_limit = seen
            if self._config.pacer is not None:
                self._config.pacer.observe(seen, now)

    def __repr__(self) -> str:
        key = str(self._config.api_key) if self._config.api_key is not None else "none"
        return f"<{type(self).__name__} base_url={self.base_url!r} key={key}>"


class Proxaro(_ClientBase):
    """The Proxaro REST API, synchronously.

    >>> with Proxaro() as client:           # PROXARO_API_KEY from the environment  # doctest: +SKIP
    ...     print(client.usage.get().total_bytes)
    ...     for order in client.orders.list(status="paid"):
    ...         print(order.id, order.created_at)

    ``api_key`` defaults to ``PROXARO_API_KEY`` and is checked locally (``proxaro_live_`` or
    ``proxaro_test_`` + 32 lowercase hex) before any request; ``base_url`` defaults to
    ``PROXARO_BASE_URL``, then ``https://api.proxaro.io``.  ``max_retries`` retries 429, 503 and
    failures before the request left (connect errors, connect or pool timeouts) for every call,
    and 500/502/504, read timeouts and dropped connections for idempotent methods only (GET,
    HEAD, OPTIONS, DELETE, PUT; see :func:`~proxaro_scrape.api._retry.should_retry`).
    ``pacer`` (off by default) paces requests to stay under the plan's budget.  ``http_client``
    brings your own ``httpx.Client`` (which the client then does not close).

    ``timeout`` (seconds, default 30) is ONE deadline per call: connecting, sending, every read,
    the backoff between retries and any ``Retry-After`` wait all fit in it, so a server that
    trickles its answer cannot hold a call longer; a ``Retry-After`` longer than the time left
    raises at once, the time asked and the time left in the message.  An ``httpx.Timeout``
    sets each phase of an attempt, and its largest value is the call's deadline.  (A brought
    ``http_client`` gets the time left as each attempt's per-read timeout, which bounds a
    silent server but not a trickling one.)

    ``base_url`` is parsed strictly (http/https, a host, a port from 1 to 65535, an optional
    path prefix; no user or password, query or fragment).  Plain ``http://`` is refused unless
    the host is this machine (``localhost``, ``127.0.0.0/8``, ``::1``) or
    ``allow_insecure_http=True`` (or ``PROXARO_ALLOW_INSECURE_HTTP=1``) says you mean it: the
    key would cross the network in clear text.
    """

    def __init__(
        self,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        *,
        api_version: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            api_version=api_version,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            pacer=pacer,
            default_headers=default_headers,
            allow_insecure_http=allow_insecure_http,
        )
        self._owns_http = http_client is None
        if http_client is not None and not isinstance(http_client, httpx.Client):
            raise ConfigurationError(
                f"http_client must be an httpx.Client, got {type(http_client).__name__}",
                param="http_client",
            )
        self._http = http_client or _deadline.http_client(
            self._config.timeout, self._config.base_url
        )
        self.account = r.AccountResource(self)
        self.usage = r.UsageResource(self)
        self.orders = r.OrdersResource(self)
        self.plans = r.PlansResource(self)
        self.credentials = r.CredentialsResource(self)
        self.sessions = r.SessionsResource(self)
        self.countries = r.CountriesResource(self)
        self.allowlist = r.AllowlistResource(self)
        self.webhooks = r.WebhooksResource(self)

    def status(self) -> APIStatus:
        """``GET /v1/status``: answers when the API is healthy, raises otherwise."""
        return self._request(r.status())

    def _request(self, spec: RequestSpec[T]) -> T:
        request, deadline = self._start(spec)
        try:
            return self._send_once(request, spec, deadline)
        except Exception as exc:
            if not worth_retrying(self._config, spec, exc):
                raise
            failed: Exception | None = exc
        import tenacity  # a retry is due (see worth_retrying)

        def attempt(request: httpx.Request, spec: RequestSpec[T], deadline: float | None) -> T:
            nonlocal failed
            if failed is not None:  # attempt 1, already made: its failure, replayed
                exc, failed = failed, None
                raise exc
            return self._send_once(request, spec, deadline)

        retrying = tenacity.Retrying(**retrying_kwargs(self._config, spec, deadline=deadline))
        return retrying(attempt, request, spec, deadline)

    def _send_once(self, request: httpx.Request, spec: RequestSpec[T], deadline: float | None) -> T:
        delay = self._pace(request, deadline)
        if delay > 0:
            time.sleep(delay)
        self._time_left(request, deadline)
        try:
            with deadline_scope(deadline):
                response = self._http.send(request)
        except httpx.TransportError as exc:
            raise self._timed_out(exc, request) from exc
        self._observe(response)
        return parse_response(spec, response, key=self._config.api_key)

    def close(self) -> None:
        """Close the underlying ``httpx.Client`` (unless it was brought by the caller)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Proxaro:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncProxaro(_ClientBase):
    """The Proxaro REST API, asynchronously: the same shape as :class:`Proxaro`.

    >>> async with AsyncProxaro() as client:                       # doctest: +SKIP
    ...     usage = await client.usage.get()
    ...     async for order in client.orders.list():
    ...         print(order.id)
    """

    def __init__(
        self,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        *,
        api_version: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        super().__init__(
            api_key,
            base_url,
            api_version=api_version,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            pacer=pacer,
            default_headers=default_headers,
            allow_insecure_http=allow_insecure_http,
        )
        self._owns_http = http_client is None
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError(
                f"http_client must be an httpx.AsyncClient, got {type(http_client).__name__}",
                param="http_client",
            )
        self._http = http_client or _deadline.async_http_client(
            self._config.timeout, self._config.base_url
        )
        self.account = r.AsyncAccountResource(self)
        self.usage = r.AsyncUsageResource(self)
        self.orders = r.AsyncOrdersResource(self)
        self.plans = r.AsyncPlansResource(self)
        self.credentials = r.AsyncCredentialsResource(self)
        self.sessions = r.AsyncSessionsResource(self)
        self.countries = r.AsyncCountriesResource(self)
        self.allowlist = r.AsyncAllowlistResource(self)
        self.webhooks = r.AsyncWebhooksResource(self)

    async def status(self) -> APIStatus:
        """``GET /v1/status``."""
        return await self._request(r.status())

    async def _request(self, spec: RequestSpec[T]) -> T:
        request, deadline = self._start(spec)
        try:
            return await self._send_once(request, spec, deadline)
        except Exception as exc:
            if not worth_retrying(self._config, spec, exc):
                raise
            failed: Exception | None = exc
        import tenacity  # a retry is due (see worth_retrying)

        async def attempt(
            request: httpx.Request, spec: RequestSpec[T], deadline: float | None
        ) -> T:
            nonlocal failed
            if failed is not None:  # attempt 1, already made: its failure, replayed
                exc, failed = failed, None
                raise exc
            return await self._send_once(request, spec, deadline)

        retrying = tenacity.AsyncRetrying(**retrying_kwargs(self._config, spec, deadline=deadline))
        result: T = await retrying(attempt, request, spec, deadline)
        return result

    async def _send_once(
        self, request: httpx.Request, spec: RequestSpec[T], deadline: float | None
    ) -> T:
        delay = self._pace(request, deadline)
        if delay > 0:
            await asyncio.sleep(delay)
        left = self._time_left(request, deadline)
        try:
            # The whole attempt, however the server spaces its bytes, ends with the deadline
            # (and, on the client's own transport, so does each of its socket operations).
            with deadline_scope(deadline):
                response = await asyncio.wait_for(self._http.send(request), left)
        except httpx.TransportError as exc:
            raise self._timed_out(exc, request) from exc
        except asyncio.TimeoutError:
            assert self._config.deadline is not None
            raise deadline_error(request.method, str(request.url), self._config.deadline) from None
        self._observe(response)
        return parse_response(spec, response, key=self._config.api_key)

    async def aclose(self) -> None:
        """Close the underlying ``httpx.AsyncClient`` (unless it was brought by the caller)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncProxaro:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
