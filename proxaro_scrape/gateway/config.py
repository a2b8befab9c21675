"""``GatewayConfig``: every option of the gateway manager, checked once, frozen.

The manager's keyword arguments, the Scrapy settings (``PROXARO_*``) and the routing core all
read this one object, so an option is parsed in one place::

    >>> cfg = GatewayConfig(target={"country": "de"}, sticky="domain", max_attempts=3)
    >>> cfg.target, cfg.max_attempts
    (Target(country='de'), 3)
    >>> GatewayManager(config=cfg)                               # doctest: +SKIP
    >>> GatewayManager(target={"country": "de"}, sticky="domain")  # the same, built for you

Field names are the manager's keyword arguments.  Every refusal is a
:class:`~proxaro_scrape.errors.ConfigurationError` (a :class:`~proxaro_scrape.errors.TargetError`
for targets) whose ``param`` is exactly the field name, so that a caller that knows the option
by another name (a Scrapy setting) can name it in turn.

The bounds, both sides checked (a ``bool`` is never a number, a ``str`` never a number, NaN and
infinity are refused):

===========================  ==========================================================
field                         accepted
===========================  ==========================================================
``target``                    a :class:`Target`, a dict of its fields, or ``None`` (any)
``sticky``                    ``"off"``, ``"domain"`` or ``"key"``
``session_ttl``               whole minutes, 1 .. 1440 (the grammar's ``sesstime``)
``session_max_requests``      ``None`` or a whole number, 1 .. 1,000,000,000
``session_lru_size``          a whole number, 1 .. 10,000,000
``failover``                  ``True``, ``False`` or 1 .. 100 targets
``max_attempts``              a whole number, 1 .. 100
``ban_status_codes``          a collection of whole numbers, each 100 .. 599 (may be empty)
``is_ban``                    ``None`` or a callable ``(status, headers, body) -> bool``
``credentials_poll_interval`` seconds, > 0 and <= 86,400
``pool_ttl``                  ``None`` (never) or seconds, > 0 and <= 86,400
``usage_poll_interval``       ``None`` (never) or seconds, > 0 and <= 86,400
``usage_cap_action``          ``"warn"`` or ``"stop"``
``breaker_base_backoff``      seconds, > 0 and <= 86,400
``breaker_max_backoff``       seconds, >= ``breaker_base_backoff`` and <= 86,400
===========================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from proxaro_scrape import protocol
from proxaro_scrape.errors import ConfigurationError, TargetError
from proxaro_scrape.gateway._usage import USAGE_CAP_ACTIONS
from proxaro_scrape.gateway.outcome import IsBan
from proxaro_scrape.gateway.target import Target

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["STICKY_MODES", "USAGE_CAP_ACTIONS", "GatewayConfig", "GatewayOptions"]

STICKY_MODES = ("off", "domain", "key")
#: The longest interval or backoff accepted (seconds): a day.  Longer is a unit mistake.
MAX_SECONDS = 86_400.0
MAX_ATTEMPTS = 100
MAX_SESSION_LRU_SIZE = 10_000_000
MAX_SESSION_REQUESTS = 1_000_000_000
MAX_FAILOVER_TARGETS = 100


class GatewayOptions(TypedDict, total=False):
    """The options as keyword arguments (``GatewayManager(**options)``): see GatewayConfig."""

    target: Target | Mapping[str, Any] | None
    sticky: str
    session_ttl: int
    session_max_requests: int | None
    session_lru_size: int
    failover: bool | Sequence[Target | Mapping[str, Any]]
    max_attempts: int
    ban_status_codes: Collection[int]
    is_ban: IsBan | None
    credentials_poll_interval: float
    pool_ttl: float | None
    usage_poll_interval: float | None
    usage_cap_action: str
    breaker_base_backoff: float
    breaker_max_backoff: float


@dataclass(frozen=True, init=False)
class GatewayConfig:
    """The gateway manager's options, validated at construction (see the module docstring).

    Values are kept in one normal form: ``target`` is a :class:`Target`, ``failover`` is a bool
    or a tuple of targets, ``ban_status_codes`` a frozenset, intervals are floats.  Use
    :meth:`replace` for a variant (validated again).
    """

    target: Target
    sticky: str
    session_ttl: int
    session_max_requests: int | None
    session_lru_size: int
    failover: bool | tuple[Target, ...]
    max_attempts: int
    ban_status_codes: frozenset[int]
    is_ban: IsBan | None
    credentials_poll_interval: float
    pool_ttl: float | None
    usage_poll_interval: float | None
    usage_cap_action: str
    breaker_base_backoff: float
    breaker_max_backoff: float

    def __init__(
        self,
        *,
        target: Target | Mapping[str, Any] | None = None,
        sticky: str = "off",
        session_ttl: int = protocol.DEFAULT_SESSTIME_MINUTES,
        session_max_requests: int | None = None,
        session_lru_size: int = 10_000,
        failover: bool | Sequence[Target | Mapping[str, Any]] = True,
        max_attempts: int = 5,
        ban_status_codes: Collection[int] = (403, 429),
        is_ban: IsBan | None = None,
        credentials_poll_interval: float = 30.0,
        pool_ttl: float | None = 300.0,
        usage_poll_interval: float | None = 300.0,
        usage_cap_action: str = "warn",
        breaker_base_backoff: float = 5.0,
        breaker_max_backoff: float = 300.0,
    ) -> None:
        put = object.__setattr__
        put(self, "target", _target(target))
        put(self, "sticky", _choice("sticky", sticky, STICKY_MODES))
        put(
            self,
            "session_ttl",
            _whole(
                "session_ttl",
                session_ttl,
                protocol.MIN_SESSTIME_MINUTES,
                protocol.MAX_SESSTIME_MINUTES,
                unit=" minutes",
            ),
        )
        if session_max_requests is not None:
            session_max_requests = _whole(
                "session_max_requests", session_max_requests, 1, MAX_SESSION_REQUESTS
            )
        put(self, "session_max_requests", session_max_requests)
        put(
            self,
            "session_lru_size",
            _whole("session_lru_size", session_lru_size, 1, MAX_SESSION_LRU_SIZE),
        )
        put(self, "failover", _failover(failover))
        put(self, "max_attempts", _whole("max_attempts", max_attempts, 1, MAX_ATTEMPTS))
        put(self, "ban_status_codes", _statuses(ban_status_codes))
        if is_ban is not None and not callable(is_ban):
            raise ConfigurationError(
                f"is_ban is a callable(status, headers, body) -> bool or None, "
                f"got {type(is_ban).__name__}",
                param="is_ban",
            )
        put(self, "is_ban", is_ban)
        put(
            self,
            "credentials_poll_interval",
            _seconds("credentials_poll_interval", credentials_poll_interval),
        )
        put(self, "pool_ttl", None if pool_ttl is None else _seconds("pool_ttl", pool_ttl))
        put(
            self,
            "usage_poll_interval",
            None
            if usage_poll_interval is None
            else _seconds("usage_poll_interval", usage_poll_interval),
        )
        put(
            self,
            "usage_cap_action",
            _choice("usage_cap_action", usage_cap_action, USAGE_CAP_ACTIONS),
        )
        base = _seconds("breaker_base_backoff", breaker_base_backoff)
        most = _seconds("breaker_max_backoff", breaker_max_backoff)
        if most < base:
            raise ConfigurationError(
                f"breaker_max_backoff ({most:g} s) must be at least breaker_base_backoff "
                f"({base:g} s)",
                param="breaker_max_backoff",
            )
        put(self, "breaker_base_backoff", base)
        put(self, "breaker_max_backoff", most)

    def replace(self, **changes: Any) -> Self:
        """A copy with some options changed, validated again.

        An unknown name raises :class:`~proxaro_scrape.errors.ConfigurationError` naming it.
        """
        check_option_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Every option's name, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))


def check_option_names(options: Mapping[str, Any]) -> None:
    """Refuse a keyword that is not an option, naming it (and the closest option)."""
    names = GatewayConfig.option_names()
    for name in options:
        if name not in names:
            import difflib  # an error's suggestion: not worth an import at every start

            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown gateway option {name!r}{hint}", param=name)


# ---------------------------------------------------------------------------- checks


def _number(name: str, value: Any) -> float:
    # bool is an int subclass and a str may hold digits: both are mistakes, not numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be a number, got {type(value).__name__} {value!r}", param=name
        )
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}", param=name)
    return float(value)


def _seconds(name: str, value: Any) -> float:
    seconds = _number(name, value)
    if not 0.0 < seconds <= MAX_SECONDS:
        raise ConfigurationError(
            f"{name} is seconds, more than 0 and at most {MAX_SECONDS:,.0f}, got {value!r}",
            param=name,
        )
    return seconds


def _whole(name: str, value: Any, low: int, high: int, *, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{name} must be a whole number{unit}, got {type(value).__name__} {value!r}",
            param=name,
        )
    if not low <= value <= high:
        raise ConfigurationError(
            f"{name} must be {low:,} .. {high:,}{unit}, got {value!r}", param=name
        )
    return int(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigurationError(
            f"{name} is one of {', '.join(map(repr, allowed))}, got {value!r}", param=name
        )
    return value


def _statuses(value: Any) -> frozenset[int]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Collection):
        raise ConfigurationError(
            f"ban_status_codes is a collection of HTTP statuses such as (403, 429), "
            f"got {type(value).__name__} {value!r}",
            param="ban_status_codes",
        )
    codes: set[int] = set()
    for code in value:
        # "403" would match no int status: ban detection would be off without a word.
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ConfigurationError(
                f"ban_status_codes holds HTTP statuses (whole numbers 100 .. 599), got {code!r}",
                param="ban_status_codes",
            )
        codes.add(int(code))
    return frozenset(codes)


def _target(value: Any) -> Target:
    try:
        target = Target.coerce(value)
    except TargetError as exc:
        raise TargetError(f"target: {exc}", param="target") from None
    return target if target is not None else Target()


def _failover(value: Any) -> bool | tuple[Target, ...]:
    if value is True or value is False:
        return bool(value)
    if isinstance(value, (str, bytes, Mapping, Target)) or not isinstance(value, Sequence):
        raise ConfigurationError(
            f"failover is True, False or a list of targets, got {type(value).__name__} {value!r}",
            param="failover",
        )
    if not 1 <= len(value) <= MAX_FAILOVER_TARGETS:
        raise ConfigurationError(
            f"failover lists 1 .. {MAX_FAILOVER_TARGETS} targets, got {len(value)} "
            "(failover=False turns failover off)",
            param="failover",
        )
    chain = []
    for i, item in enumerate(value):
        if item is None:
            raise ConfigurationError(f"failover[{i}] is None, not a target", param="failover")
        try:
            target = Target.coerce(item)
        except TargetError as exc:
            raise TargetError(f"failover[{i}]: {exc}", param="failover") from None
        assert target is not None
        chain.append(target)
    return tuple(chain)
