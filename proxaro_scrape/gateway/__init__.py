"""The gateway manager: credentials, pool view, targeting, sticky sessions, failover, health.

The public surface is re-exported here; the real code lives in the modules:
:mod:`~proxaro_scrape.gateway.target` (``Target`` and the username grammar),
:mod:`~proxaro_scrape.gateway.config` (``GatewayConfig``, every option checked once),
:mod:`~proxaro_scrape.gateway.outcome` (outcome classification),
:mod:`~proxaro_scrape.gateway.edge` (the integration contract),
:mod:`~proxaro_scrape.gateway.manager` (``GatewayManager``, a facade over the sans-I/O core,
its background jobs and their thread and task drivers) and the private core modules.
"""

from proxaro_scrape.gateway._core import RequestRouting, Route
from proxaro_scrape.gateway.config import GatewayConfig
from proxaro_scrape.gateway.manager import GatewayManager
from proxaro_scrape.gateway.outcome import ExitInfo, Outcome, classify
from proxaro_scrape.gateway.target import HEALTHY_ASN, Target

__all__ = [
    "HEALTHY_ASN",
    "ExitInfo",
    "GatewayConfig",
    "GatewayManager",
    "Outcome",
    "RequestRouting",
    "Route",
    "Target",
    "classify",
]
