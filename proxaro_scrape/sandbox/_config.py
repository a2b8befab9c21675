"""The checks on :class:`~proxaro_scrape.sandbox.Sandbox`'s arguments, made before anything is
bound, written, or generated.

The sandbox shares nothing with the client side but :mod:`proxaro_scrape.protocol`, so its
error is its own (:class:`SandboxConfigError`, a :class:`ValueError`), not one of
:mod:`proxaro_scrape.errors`; like those it names the argument it is about.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection
from typing import Any

from proxaro_scrape.sandbox.world import PLAN_IDS

__all__ = [
    "ALL_COMPONENTS",
    "SandboxConfigError",
    "check_components",
    "check_host",
    "check_plan",
    "check_ports",
    "check_seed",
    "check_seconds",
    "check_speed",
    "is_loopback",
]

ALL_COMPONENTS = frozenset({"api", "gateway", "site", "webhooks"})
_MAX_PORT = 65535


class SandboxConfigError(ValueError):
    """A :class:`~proxaro_scrape.sandbox.Sandbox` argument is of the wrong type or out of range.

    ``param`` is the argument's name, as the caller wrote it (``host``, ``gateway_port``...).

    >>> Sandbox(host="0.0.0.0")                  # doctest: +SKIP
    SandboxConfigError: host: the sandbox only listens on loopback (127.0.0.0/8, ::1 or
    localhost), not '0.0.0.0'
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _kind(value: Any) -> str:
    return type(value).__name__


def is_loopback(host: str) -> bool:
    """``localhost``, or an IP literal in 127.0.0.0/8 or ``::1`` (never a name to resolve)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_seed(seed: Any) -> int:
    """The world's seed: any int (a bool is not one)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SandboxConfigError("seed", f"must be an int, not {_kind(seed)}")
    return seed


def check_plan(plan: Any) -> str:
    """One of the reference's plan ids."""
    if not isinstance(plan, str) or plan not in PLAN_IDS:
        raise SandboxConfigError("plan", f"must be one of {', '.join(PLAN_IDS)}; got {plan!r}")
    return plan


def check_host(host: Any) -> str:
    """A loopback address the sandbox may listen on."""
    if not isinstance(host, str):
        raise SandboxConfigError("host", f"must be a str, not {_kind(host)}")
    if not is_loopback(host):
        raise SandboxConfigError(
            "host",
            f"the sandbox only listens on loopback (127.0.0.0/8, ::1 or localhost), not {host!r}",
        )
    return host


def check_ports(**ports: Any) -> dict[str, int]:
    """Each port an int in 0..65535 (0: a free one), and no fixed port given twice."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if isinstance(port, bool) or not isinstance(port, int):
            raise SandboxConfigError(name, f"must be an int, not {_kind(port)}")
        if not 0 <= port <= _MAX_PORT:
            raise SandboxConfigError(
                name, f"must be from 0 (a free port) to {_MAX_PORT}; got {port}"
            )
        if port and port in seen:
            raise SandboxConfigError(name, f"port {port} is already given as {seen[port]}")
        seen[port] = name
    return dict(ports)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SandboxConfigError(name, f"must be a number, not {_kind(value)}")
    if not math.isfinite(value):
        raise SandboxConfigError(name, f"must be finite; got {value!r}")
    return float(value)


def check_seconds(name: str, value: Any) -> float:
    """A finite number of seconds, 0 or more."""
    seconds = _real(name, value)
    if seconds < 0:
        raise SandboxConfigError(name, f"must be 0 or more; got {value!r}")
    return seconds


def check_speed(name: str, value: Any) -> float:
    """A finite clock speed above 0 (world seconds per real second)."""
    speed = _real(name, value)
    if speed <= 0:
        raise SandboxConfigError(name, f"must be above 0; got {value!r}")
    return speed


def check_components(components: Any) -> frozenset[str]:
    """A non-empty collection of component names (``api``, ``gateway``, ``site``, ``webhooks``)."""
    known = ", ".join(sorted(ALL_COMPONENTS))
    if isinstance(components, (str, bytes)) or not isinstance(components, Collection):
        raise SandboxConfigError(
            "components", f"must be a collection of names among {known}, not {_kind(components)}"
        )
    names = list(components)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise SandboxConfigError("components", f"names are str, not {_kind(bad[0])}")
    unknown = set(names) - ALL_COMPONENTS
    if unknown:
        raise SandboxConfigError(
            "components",
            f"unknown sandbox component(s): {', '.join(sorted(unknown))}; known: {known}",
        )
    if not names:
        raise SandboxConfigError("components", f"name at least one of {known}")
    return frozenset(names)
