"""What the manager needs of a fleet (:mod:`proxaro_scrape.fleet`), loaded only on demand.

The core imports no framework, Redis included: the fleet package is imported here by name, and
only when a Redis URL is given, so a manager without one never loads redis-py.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.gateway.config import GatewayConfig

__all__ = ["ENV_REDIS_URL", "fleet_client", "make_fleet", "usage_or_other_event"]

logger = logging.getLogger("proxaro_scrape.gateway")

#: The Redis URL of a fleet when ``redis_url`` is not given.
ENV_REDIS_URL = "PROXARO_REDIS_URL"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_FLEET = "proxaro_scrape.fleet"


def make_fleet(
    url: Any,
    prefix: Any,
    api_rate: Any,
    config: GatewayConfig,
    api_key: Secret | None,
    clock: Callable[[], float],
) -> Any:
    """Check the fleet's arguments (errors name them) and build its link (not started)."""
    if not isinstance(url, str) or not url.startswith(_REDIS_SCHEMES):
        shown = type(url).__name__ if not isinstance(url, str) else "a URL of another scheme"
        raise ConfigurationError(
            f"redis_url is a redis://, rediss:// or unix:// URL, got {shown}", param="redis_url"
        )
    if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
        raise ConfigurationError(
            f"redis_prefix is a non-empty string without spaces, got {prefix!r}",
            param="redis_prefix",
        )
    if (
        isinstance(api_rate, bool)
        or not isinstance(api_rate, (int, float))
        or not 0 < api_rate <= 1_000_000
    ):
        raise ConfigurationError(
            f"fleet_api_rate is requests per minute, more than 0, got {api_rate!r}",
            param="fleet_api_rate",
        )
    if api_key is None:
        raise ConfigurationError(
            "a fleet needs the API key (its keys in Redis are named after a digest of it)",
            param="api_key",
        )
    try:
        fleet = importlib.import_module(_FLEET)
    except ImportError as exc:
        raise ConfigurationError(str(exc), param="redis_url") from None
    return fleet.build(
        url,
        api_key=api_key,
        prefix=prefix,
        session_lru_size=config.session_lru_size,
        clock=clock,
        api_rate=float(api_rate),
        credentials_interval=config.credentials_poll_interval,
        pool_ttl=config.pool_ttl,
    )


def fleet_client(fleet: Any, is_async: bool, client: Any) -> Any:
    """``client`` behind ``fleet`` (the client itself without a fleet)."""
    if fleet is None:
        return client
    kind = "AsyncFleetClient" if is_async else "FleetClient"
    return getattr(importlib.import_module(_FLEET), kind)(fleet, client)


def usage_or_other_event(core: Any, jobs: Any, etype: Any, data: Any) -> None:
    """React to a webhook event other than ``credentials.rotated`` (from any worker)."""
    if isinstance(etype, str) and etype.startswith("usage.threshold."):
        suffix = etype.rsplit(".", 1)[-1]
        pct = int(suffix) if suffix.isdigit() else 0
        if isinstance(data, Mapping):
            total, cap = data.get("total_bytes"), data.get("cap_bytes")
            if isinstance(total, int) and isinstance(cap, int):
                core.usage.total_bytes, core.usage.cap_bytes = total, cap
        jobs.usage_actions(core.usage.threshold(pct))
    elif etype == "allowlist.updated":
        logger.info("allowlist.updated event: the gateway's allowlist changed")
    else:
        logger.debug("event %r ignored by the gateway manager", etype)
