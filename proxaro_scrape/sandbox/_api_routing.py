"""The sandbox API's route table: what each v1 endpoint is, and what a handler is given.

Handlers live in one module per resource (``_api_account``, ``_api_network``,
``_api_allowlist``, ``_api_webhooks``) and register themselves with :func:`endpoint`; the
pipeline in :mod:`proxaro_scrape.sandbox.api` authenticates, rate-limits and validates a request
against its :class:`Endpoint` before it calls ``handler(world, call)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from proxaro_scrape.sandbox._api_envelope import JSON, APIFailure
from proxaro_scrape.sandbox.world import ApiKey, World

__all__ = [
    "ENDPOINTS",
    "Call",
    "Endpoint",
    "Handler",
    "endpoint",
    "optional_str",
    "required_str",
]


@dataclass
class Call:
    """One authenticated, validated API call, as a handler sees it."""

    request: web.Request
    key: ApiKey | None
    query: dict[str, str]
    body: JSON = field(default_factory=dict)

    def match(self, name: str) -> str:
        """A path parameter (``{code}``, ``{id}``)."""
        return self.request.match_info[name]

    def int_param(self, name: str, default: int, lo: int, hi: int) -> int:
        """An integer query parameter within ``lo..hi``, else 400 naming it."""
        raw = self.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise APIFailure(
                400,
                "invalid_parameter",
                f"The '{name}' parameter must be an integer from {lo} to {hi}; got {raw!r}.",
                param=name,
            )
        return int(raw)

    def choice_param(self, name: str, choices: tuple[str, ...]) -> str | None:
        """A query parameter that must be one of ``choices`` (None when absent)."""
        raw = self.query.get(name)
        if raw is not None and raw not in choices:
            raise APIFailure(
                400,
                "invalid_parameter",
                f"The '{name}' parameter must be one of {', '.join(choices)}; got {raw!r}.",
                param=name,
            )
        return raw


#: A v1 handler: the world it reads and changes, and the validated call.
Handler = Callable[[World, Call], Awaitable[JSON]]


@dataclass(frozen=True)
class Endpoint:
    """A v1 route: who may call it and which parameters it takes."""

    method: str
    path: str
    handler: Handler
    public: bool = False  # no API key needed
    write: bool = False  # refused to read_only keys
    query: frozenset[str] = frozenset()
    body: frozenset[str] = frozenset()


#: Every v1 endpoint, in the order the resource modules registered them.
ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    *,
    public: bool = False,
    write: bool = False,
    query: tuple[str, ...] = (),
    body: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    """Register a handler as a v1 endpoint.

    >>> @endpoint("GET", "/v1/status", public=True)     # doctest: +SKIP
    ... async def status(world: World, call: Call) -> JSON: ...
    """

    def register(fn: Handler) -> Handler:
        ENDPOINTS.append(
            Endpoint(method, path, fn, public, write, frozenset(query), frozenset(body))
        )
        return fn

    return register


def required_str(body: JSON, name: str) -> str:
    """A required string field of a JSON body, else 400 naming it."""
    value = body.get(name)
    if value is None:
        raise APIFailure(
            400, "missing_parameter", f"The '{name}' parameter is required.", param=name
        )
    if not isinstance(value, str):
        raise APIFailure(
            400, "invalid_parameter", f"The '{name}' parameter must be a string.", param=name
        )
    return value


def optional_str(body: JSON, name: str) -> str | None:
    """An optional string field of a JSON body (None when absent), else 400 naming it."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise APIFailure(
            400, "invalid_parameter", f"The '{name}' parameter must be a string.", param=name
        )
    return value
