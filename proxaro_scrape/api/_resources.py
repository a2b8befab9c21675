"""The resources of the API as namespaces on the client: ``client.usage.get()`` and friends.

Each endpoint is written once, sans-I/O, as a function that validates its arguments and
returns a :class:`~proxaro_scrape.api._base.RequestSpec` (what to send, how to read the answer).
The sync and async resource classes below are thin twins over those functions: same names,
same signatures, one ``return self._client._request(spec)`` or ``return await ...``.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from proxaro_scrape.api import _validate
from proxaro_scrape.api._base import RequestSpec
from proxaro_scrape.api._models import (
    Account,
    AllowlistEntry,
    APIStatus,
    Asn,
    Country,
    Credentials,
    Deleted,
    GatewaySession,
    Model,
    Order,
    Page,
    Plan,
    RotatedCredentials,
    Usage,
    Webhook,
    WebhookAttempt,
    guard_unknown,
)
from proxaro_scrape.errors import APIError

if TYPE_CHECKING:
    from proxaro_scrape.api._client import AsyncProxaro, Proxaro

T = TypeVar("T")
M = TypeVar("M", bound=Model)

_PAGE_KEYS = frozenset({"object", "data", "has_more", "next_cursor"})


# ---------------------------------------------------------------------------- parsing


def _mapping(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise TypeError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _data(body: Any) -> list[Any]:
    data = _mapping(body).get("data")
    if not isinstance(data, list):
        raise TypeError("expected a list object with a 'data' array")
    return data


def _one(model: type[M]) -> Callable[[Any], M]:
    def parse(body: Any) -> M:
        fields = _mapping(body)
        # An object with none of the model's fields is not that object (an empty body, an
        # error in another shape): a model full of None would only fail later, further away.
        if fields and not any(name in fields for name in model._field_converters()):
            raise TypeError(f"expected a {model.__name__} object, got keys {sorted(fields)[:5]}")
        if not fields:
            raise TypeError(f"expected a {model.__name__} object, got an empty object")
        return model.from_dict(fields)

    return parse


def _many(model: type[M]) -> Callable[[Any], list[M]]:
    return lambda body: [model.from_dict(_mapping(item)) for item in _data(body)]


def _page(model: type[M]) -> Callable[[Any], Page[M]]:
    def parse(body: Any) -> Page[M]:
        items = [model.from_dict(_mapping(item)) for item in _data(body)]
        cursor = body.get("next_cursor")
        return Page(
            items,
            has_more=bool(body.get("has_more")),
            next_cursor=cursor if isinstance(cursor, str) and cursor else None,
            extra={k: guard_unknown(k, v) for k, v in body.items() if k not in _PAGE_KEYS},
        )

    return parse


# ---------------------------------------------------------------------------- endpoints


def account_get() -> RequestSpec[Account]:
    return RequestSpec("GET", "/v1/me", _one(Account))


def usage_get(period: str | None = None, group_by: str | None = None) -> RequestSpec[Usage]:
    params = {
        "period": _validate.period(period),
        "group_by": _validate.one_of(group_by, _validate.GROUP_BY, "group_by"),
    }
    return RequestSpec("GET", "/v1/usage", _one(Usage), params=params)


def orders_pager(
    status: str | None = None, limit: int | None = None
) -> Callable[[str | None], RequestSpec[Page[Order]]]:
    """Validate once, then build the request for any cursor."""
    status = _validate.one_of(status, _validate.ORDER_STATUSES, "status")
    limit = _validate.limit(limit, _validate.ORDERS_MAX_LIMIT)

    def page(cursor: str | None) -> RequestSpec[Page[Order]]:
        params = {"status": status, "limit": limit, "cursor": _validate.cursor(cursor)}
        return RequestSpec("GET", "/v1/orders", _page(Order), params=params)

    return page


def plans_list() -> RequestSpec[list[Plan]]:
    # The public catalog: the key is not sent where it is not needed.
    return RequestSpec("GET", "/v1/plans", _many(Plan), auth=False)


def credentials_get() -> RequestSpec[Credentials]:
    return RequestSpec("GET", "/v1/credentials", _one(Credentials))


def credentials_rotate() -> RequestSpec[RotatedCredentials]:
    return RequestSpec("POST", "/v1/credentials/rotate", _one(RotatedCredentials), json={})


def sessions_pager(
    exit_class: str | None = None, limit: int | None = None
) -> Callable[[str | None], RequestSpec[Page[GatewaySession]]]:
    exit_class = _validate.exit_class(exit_class)
    limit = _validate.limit(limit, _validate.SESSIONS_MAX_LIMIT)

    def page(cursor: str | None) -> RequestSpec[Page[GatewaySession]]:
        params = {"exit_class": exit_class, "limit": limit, "cursor": _validate.cursor(cursor)}
        return RequestSpec("GET", "/v1/sessions", _page(GatewaySession), params=params)

    return page


def countries_list() -> RequestSpec[list[Country]]:
    return RequestSpec("GET", "/v1/countries", _many(Country))


def countries_asns(code: str) -> RequestSpec[list[Asn]]:
    code = _validate.country_code(code)
    return RequestSpec("GET", f"/v1/countries/{code}/asns", _many(Asn))


def allowlist_list() -> RequestSpec[list[AllowlistEntry]]:
    return RequestSpec("GET", "/v1/allowlist", _many(AllowlistEntry))


def allowlist_add(cidr: str, label: str | None = None) -> RequestSpec[AllowlistEntry]:
    body: dict[str, Any] = {"cidr": _validate.cidr(cidr)}
    if label is not None:
        body["label"] = _validate.label(label)
    return RequestSpec("POST", "/v1/allowlist", _one(AllowlistEntry), json=body)


def allowlist_remove(id: str) -> RequestSpec[Deleted]:
    id = _validate.resource_id(id)
    return RequestSpec("DELETE", f"/v1/allowlist/{id}", _one(Deleted))


def webhooks_create(
    url: str, events: Iterable[str], label: str | None = None
) -> RequestSpec[Webhook]:
    body: dict[str, Any] = {"url": _validate.webhook_url(url), "events": _validate.events(events)}
    if label is not None:
        body["label"] = _validate.label(label)
    return RequestSpec("POST", "/v1/webhooks", _one(Webhook), json=body)


def webhooks_list() -> RequestSpec[list[Webhook]]:
    return RequestSpec("GET", "/v1/webhooks", _many(Webhook))


def webhooks_rotate_secret(id: str) -> RequestSpec[Webhook]:
    id = _validate.resource_id(id)
    return RequestSpec("POST", f"/v1/webhooks/{id}/rotate", _one(Webhook), json={})


def webhooks_attempts_pager(
    id: str, limit: int | None = None
) -> Callable[[str | None], RequestSpec[Page[WebhookAttempt]]]:
    # The reference shows no shape for the receipts; a page also reads a bare list object.
    id = _validate.resource_id(id)
    limit = _validate.limit(limit, _validate.ATTEMPTS_MAX_LIMIT)

    def page(cursor: str | None) -> RequestSpec[Page[WebhookAttempt]]:
        params = {"limit": limit, "cursor": _validate.cursor(cursor)}
        return RequestSpec(
            "GET", f"/v1/webhooks/{id}/attempts", _page(WebhookAttempt), params=params
        )

    return page


def status() -> RequestSpec[APIStatus]:
    return RequestSpec("GET", "/v1/status", _one(APIStatus), auth=False, text_ok=True)


# ---------------------------------------------------------------------------- pagination


def _advance(page: Page[Any], seen: set[str]) -> str | None:
    """The next cursor, or ``None`` at the end; a cursor seen before would loop forever."""
    if not page.has_more or not page.next_cursor:
        return None
    if page.next_cursor in seen:
        raise APIError("The API returned a pagination cursor it had returned before")
    seen.add(page.next_cursor)
    return page.next_cursor


class SyncPaginator(Generic[T]):
    """Iterate every item of every page, fetching pages lazily as the loop reaches them.

    >>> for order in client.orders.list(status="paid"):   # doctest: +SKIP
    ...     print(order.id)
    >>> for page in client.orders.list().pages():          # doctest: +SKIP
    ...     print(len(page), page.next_cursor)
    """

    def __init__(self, fetch: Callable[[str | None], Page[T]], cursor: str | None = None) -> None:
        self._fetch = fetch
        self._cursor = cursor

    def pages(self) -> Iterator[Page[T]]:
        """Each page in turn, starting at the first (or at ``cursor``)."""
        cursor = self._cursor
        seen: set[str] = set()
        while True:
            page = self._fetch(cursor)
            yield page
            cursor = _advance(page, seen)
            if cursor is None:
                return

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.data


class AsyncPaginator(Generic[T]):
    """The async twin of :class:`SyncPaginator`: ``async for item in client.orders.list()``."""

    def __init__(
        self, fetch: Callable[[str | None], Awaitable[Page[T]]], cursor: str | None = None
    ) -> None:
        self._fetch = fetch
        self._cursor = cursor

    async def pages(self) -> AsyncIterator[Page[T]]:
        """Each page in turn: ``async for page in client.orders.list().pages()``."""
        cursor = self._cursor
        seen: set[str] = set()
        while True:
            page = await self._fetch(cursor)
            yield page
            cursor = _advance(page, seen)
            if cursor is None:
                return

    async def _items(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.data:
                yield item

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()


# ---------------------------------------------------------------------------- sync resources


class _Sync:
    def __init__(self, client: Proxaro) -> None:
        self._client = client


class AccountResource(_Sync):
    """``client.account``."""

    def get(self) -> Account:
        """``GET /v1/me``: the account tied to the key, with its plan."""
        return self._client._request(account_get())


class UsageResource(_Sync):
    """``client.usage``."""

    def get(self, *, period: str | None = None, group_by: str | None = None) -> Usage:
        """``GET /v1/usage``: ``period`` current (default) | previous | ``YYYY-MM``;
        ``group_by`` class (default) | country."""
        return self._client._request(usage_get(period, group_by))


class OrdersResource(_Sync):
    """``client.orders``."""

    def list(self, *, status: str | None = None, limit: int | None = None) -> SyncPaginator[Order]:
        """Every order, newest first, fetched page by page (``limit`` per page, at most 100)."""
        page = orders_pager(status, limit)
        return SyncPaginator(lambda cursor: self._client._request(page(cursor)))

    def list_page(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[Order]:
        """One page of ``GET /v1/orders``; pass the previous page's ``next_cursor``."""
        return self._client._request(orders_pager(status, limit)(cursor))


class PlansResource(_Sync):
    """``client.plans``."""

    def list(self) -> builtins.list[Plan]:
        """``GET /v1/plans``: the public catalog (no key needed)."""
        return self._client._request(plans_list())


class CredentialsResource(_Sync):
    """``client.credentials``."""

    def get(self) -> Credentials:
        """``GET /v1/credentials``: the active gateway credentials."""
        return self._client._request(credentials_get())

    def rotate(self) -> RotatedCredentials:
        """``POST /v1/credentials/rotate``: a new password (never retried after a timeout)."""
        return self._client._request(credentials_rotate())


class SessionsResource(_Sync):
    """``client.sessions``."""

    def list(
        self, *, exit_class: str | None = None, limit: int | None = None
    ) -> SyncPaginator[GatewaySession]:
        """Recent gateway sessions, page by page (``limit`` per page, at most 1000)."""
        page = sessions_pager(exit_class, limit)
        return SyncPaginator(lambda cursor: self._client._request(page(cursor)))

    def list_page(
        self,
        *,
        exit_class: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[GatewaySession]:
        """One page of ``GET /v1/sessions``."""
        return self._client._request(sessions_pager(exit_class, limit)(cursor))


class CountriesResource(_Sync):
    """``client.countries``."""

    def list(self) -> builtins.list[Country]:
        """``GET /v1/countries``: countries with live coverage."""
        return self._client._request(countries_list())

    def asns(self, code: str) -> builtins.list[Asn]:
        """``GET /v1/countries/{code}/asns`` (Growth and above; else 403 ``scope_required``)."""
        return self._client._request(countries_asns(code))


class AllowlistResource(_Sync):
    """``client.allowlist``."""

    def list(self) -> builtins.list[AllowlistEntry]:
        """``GET /v1/allowlist``."""
        return self._client._request(allowlist_list())

    def add(self, cidr: str, *, label: str | None = None) -> AllowlistEntry:
        """``POST /v1/allowlist``: an address or CIDR (at most /24 IPv4, /48 IPv6)."""
        return self._client._request(allowlist_add(cidr, label))

    def remove(self, id: str) -> Deleted:
        """``DELETE /v1/allowlist/{id}``."""
        return self._client._request(allowlist_remove(id))


class WebhooksResource(_Sync):
    """``client.webhooks``."""

    def create(self, url: str, events: Iterable[str], *, label: str | None = None) -> Webhook:
        """``POST /v1/webhooks``: an HTTPS ``url`` and event names (``["*"]`` for all).

        The answer carries the signing ``secret`` (a :class:`Secret`), shown only now.
        """
        return self._client._request(webhooks_create(url, events, label))

    def list(self) -> builtins.list[Webhook]:
        """``GET /v1/webhooks`` (without secrets)."""
        return self._client._request(webhooks_list())

    def rotate_secret(self, id: str) -> Webhook:
        """``POST /v1/webhooks/{id}/rotate``: a new signing secret."""
        return self._client._request(webhooks_rotate_secret(id))

    def attempts(self, id: str, *, limit: int | None = None) -> SyncPaginator[WebhookAttempt]:
        """``GET /v1/webhooks/{id}/attempts``: every delivery receipt, newest first."""
        page = webhooks_attempts_pager(id, limit)
        return SyncPaginator(lambda cursor: self._client._request(page(cursor)))

    def attempts_page(
        self, id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[WebhookAttempt]:
        """One page of delivery receipts."""
        return self._client._request(webhooks_attempts_pager(id, limit)(cursor))


# ---------------------------------------------------------------------------- async resources


class _Async:
    def __init__(self, client: AsyncProxaro) -> None:
        self._client = client


class AsyncAccountResource(_Async):
    """``client.account`` (async)."""

    async def get(self) -> Account:
        """``GET /v1/me``."""
        return await self._client._request(account_get())


class AsyncUsageResource(_Async):
    """``client.usage`` (async)."""

    async def get(self, *, period: str | None = None, group_by: str | None = None) -> Usage:
        """``GET /v1/usage``."""
        return await self._client._request(usage_get(period, group_by))


class AsyncOrdersResource(_Async):
    """``client.orders`` (async)."""

    def list(self, *, status: str | None = None, limit: int | None = None) -> AsyncPaginator[Order]:
        """Every order, newest first: ``async for order in client.orders.list()``."""
        page = orders_pager(status, limit)
        return AsyncPaginator(lambda cursor: self._client._request(page(cursor)))

    async def list_page(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[Order]:
        """One page of ``GET /v1/orders``."""
        return await self._client._request(orders_pager(status, limit)(cursor))


class AsyncPlansResource(_Async):
    """``client.plans`` (async)."""

    async def list(self) -> builtins.list[Plan]:
        """``GET /v1/plans`` (no key needed)."""
        return await self._client._request(plans_list())


class AsyncCredentialsResource(_Async):
    """``client.credentials`` (async)."""

    async def get(self) -> Credentials:
        """``GET /v1/credentials``."""
        return await self._client._request(credentials_get())

    async def rotate(self) -> RotatedCredentials:
        """``POST /v1/credentials/rotate`` (never retried after a timeout)."""
        return await self._client._request(credentials_rotate())


class AsyncSessionsResource(_Async):
    """``client.sessions`` (async)."""

    def list(
        self, *, exit_class: str | None = None, limit: int | None = None
    ) -> AsyncPaginator[GatewaySession]:
        """Recent gateway sessions: ``async for s in client.sessions.list()``."""
        page = sessions_pager(exit_class, limit)
        return AsyncPaginator(lambda cursor: self._client._request(page(cursor)))

    async def list_page(
        self,
        *,
        exit_class: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[GatewaySession]:
        """One page of ``GET /v1/sessions``."""
        return await self._client._request(sessions_pager(exit_class, limit)(cursor))


class AsyncCountriesResource(_Async):
    """``client.countries`` (async)."""

    async def list(self) -> builtins.list[Country]:
        """``GET /v1/countries``."""
        return await self._client._request(countries_list())

    async def asns(self, code: str) -> builtins.list[Asn]:
        """``GET /v1/countries/{code}/asns``."""
        return await self._client._request(countries_asns(code))


class AsyncAllowlistResource(_Async):
    """``client.allowlist`` (async)."""

    async def list(self) -> builtins.list[AllowlistEntry]:
        """``GET /v1/allowlist``."""
        return await self._client._request(allowlist_list())

    async def add(self, cidr: str, *, label: str | None = None) -> AllowlistEntry:
        """``POST /v1/allowlist``."""
        return await self._client._request(allowlist_add(cidr, label))

    async def remove(self, id: str) -> Deleted:
        """``DELETE /v1/allowlist/{id}``."""
        return await self._client._request(allowlist_remove(id))


class AsyncWebhooksResource(_Async):
    """``client.webhooks`` (async)."""

    async def create(self, url: str, events: Iterable[str], *, label: str | None = None) -> Webhook:
        """``POST /v1/webhooks``."""
        return await self._client._request(webhooks_create(url, events, label))

    async def list(self) -> builtins.list[Webhook]:
        """``GET /v1/webhooks``."""
        return await self._client._request(webhooks_list())

    async def rotate_secret(self, id: str) -> Webhook:
        """``POST /v1/webhooks/{id}/rotate``."""
        return await self._client._request(webhooks_rotate_secret(id))

    def attempts(self, id: str, *, limit: int | None = None) -> AsyncPaginator[WebhookAttempt]:
        """``GET /v1/webhooks/{id}/attempts``: ``async for attempt in ...``."""
        page = webhooks_attempts_pager(id, limit)
        return AsyncPaginator(lambda cursor: self._client._request(page(cursor)))

    async def attempts_page(
        self, id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[WebhookAttempt]:
        """One page of delivery receipts."""
        return await self._client._request(webhooks_attempts_pager(id, limit)(cursor))
