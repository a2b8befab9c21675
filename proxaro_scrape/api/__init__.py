"""The Proxaro REST API: :class:`Proxaro` (sync) and :class:`AsyncProxaro` (async).

>>> from proxaro_scrape import Proxaro                  # doctest: +SKIP
>>> client = Proxaro()                                   # PROXARO_API_KEY, PROXARO_BASE_URL
>>> client.usage.get().total_bytes                       # doctest: +SKIP

The real code lives in private modules; this is the public surface.
"""

from __future__ import annotations

from proxaro_scrape.api._base import RetryPolicy
from proxaro_scrape.api._client import AsyncProxaro, Proxaro
from proxaro_scrape.api._models import (
    Account,
    AccountPlan,
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
    UsageBreakdown,
    Webhook,
    WebhookAttempt,
)
from proxaro_scrape.api._ratelimit import Pacer, RateLimit
from proxaro_scrape.api._resources import AsyncPaginator, SyncPaginator

__all__ = [
    "APIStatus",
    "Account",
    "AccountPlan",
    "AllowlistEntry",
    "Asn",
    "AsyncPaginator",
    "AsyncProxaro",
    "Country",
    "Credentials",
    "Deleted",
    "GatewaySession",
    "Model",
    "Order",
    "Pacer",
    "Page",
    "Plan",
    "Proxaro",
    "RateLimit",
    "RetryPolicy",
    "RotatedCredentials",
    "SyncPaginator",
    "Usage",
    "UsageBreakdown",
    "Webhook",
    "WebhookAttempt",
]
