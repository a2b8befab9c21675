"""A fleet of workers on one Proxaro key, sharing their state through Redis.

``GatewayManager(..., redis_url="redis://127.0.0.1:6379/0")`` (or ``PROXARO_REDIS_URL``) makes
the manager one worker of a fleet: every process, thread pool or machine whose manager names
the same Redis and the same API key shares sticky sessions, bans, circuit breakers, counters and
the usage guard's state, and does the account's API work once for all (one credentials refresh
per rotation, one leader polling the pool view and usage, one rate-limit budget).  The request
path never waits on Redis: decisions read local memory, a background thread keeps it in step.

Needs the ``redis`` extra (``pip install 'proxaro-scrape[redis]'``: redis-py and cryptography).
The core never imports this package; the manager loads it only when a Redis URL is given.
"""

from __future__ import annotations

try:
    import redis  # noqa: F401 - checked here so that the error names the extra
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "a Redis URL needs the redis extra: pip install 'proxaro-scrape[redis]'"
    ) from exc

from collections.abc import Callable

from proxaro_scrape._secrets import Secret
from proxaro_scrape.fleet._client import AsyncFleetClient, FleetClient
from proxaro_scrape.fleet._fleet import Fleet, masked_url
from proxaro_scrape.fleet._keys import Keyspace
from proxaro_scrape.fleet._state import FleetStore

__all__ = [
    "AsyncFleetClient",
    "Fleet",
    "FleetClient",
    "FleetStore",
    "Keyspace",
    "build",
    "masked_url",
]


def build(
    url: str,
    *,
    api_key: Secret,
    prefix: str,
    session_lru_size: int,
    clock: Callable[[], float],
    api_rate: float,
    credentials_interval: float,
    pool_ttl: float | None,
) -> Fleet:
    """The fleet link of one manager: its store (to route with) and its Redis thread (not
    started: :meth:`Fleet.start`)."""
    keyspace = Keyspace(api_key, prefix)
    store = FleetStore(keyspace, session_lru_size=session_lru_size, clock=clock)
    return Fleet(
        url,
        keyspace,
        store,
        api_rate=api_rate,
        credentials_interval=credentials_interval,
        pool_ttl=pool_ttl,
    )
