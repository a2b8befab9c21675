"""The gateway manager: credentials, pool view, targeting, sticky sessions, failover, health.

The public surface is re-exported here; the real code lives in the modules:
:mod:`~proxaro_scrape.gateway.target` (``Target`` and the username grammar),
:mod:`~proxaro_scrape.gateway.outcome` (outcome classification),
:mod:`~proxaro_scrape.gateway.manager` (``GatewayManager`` and its sync/async drivers) and the
private sans-I/O core modules.
"""

from proxaro_scrape.gateway._core import RequestRouting, Route
from proxaro_scrape.gateway.manager import GatewayManager
from proxaro_scrape.gateway.outcome import ExitInfo, Outcome, classify
from proxaro_scrape.gateway.target import HEALTHY_ASN, Target

__all__ = [
    "HEALTHY_ASN",
    "ExitInfo",
    "GatewayManager",
    "Outcome",
    "RequestRouting",
    "Route",
    "Target",
    "classify",
]
