"""Decode the gateway username grammar (``shared/gateway-protocol.md``, section 1).

This is the ONE sandbox module that knows the grammar.  The client side encodes it in
:mod:`proxaro_scrape.gateway.target`, written independently: the two share only the constants
of :mod:`proxaro_scrape.protocol`, so that they cannot agree on a mistake by sharing code.

>>> t = parse_username("nb_growth_a1b2c3d4-country-us-city-new_york-session-cart42")
>>> t.base, t.country, t.city, t.session, t.session_minutes
('nb_growth_a1b2c3d4', 'us', 'new_york', 'cart42', 10)

Two layers of checks:

- :func:`parse_username` checks the grammar alone (keys, order, repetition, value shapes,
  dependencies between keys).  A violation raises :class:`TargetingError` naming the parameter;
  the gateway answers it with 400 ``bad_targeting``.
- :func:`check_against_pool` checks what needs the world's static tables: an exit class the
  country does not offer is also a ``bad_targeting`` (the table's rule "must be in the
  country's exit_classes").  An unknown country, city or ASN is not a grammar error: the
  gateway answers those with 502 ``no_exit`` (no live exit there), like a dead region.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proxaro_scrape import protocol

__all__ = ["Targeting", "TargetingError", "base_username", "check_against_pool", "parse_username"]

_BASE_RE = re.compile(r"[A-Za-z0-9_]+")
_COUNTRY_RE = re.compile(r"[a-z]{2}")
_CITY_RE = re.compile(r"[a-z0-9_]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_SESSION_RE = re.compile(rf"[A-Za-z0-9]{{1,{protocol.MAX_SESSION_ID_LENGTH}}}")
_ORDER = {key: i for i, key in enumerate(protocol.USERNAME_KEYS)}


class TargetingError(ValueError):
    """A username whose targeting the gateway refuses (400 ``bad_targeting``).

    ``param`` names the offending parameter (``"country"``, ``"sesstime"``, ...), or
    ``"username"`` when the base username itself is wrong.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Targeting:
    """What one gateway username asks for.  ``None`` means "not given"."""

    base: str
    country: str | None = None
    city: str | None = None
    #: Digits only, as the grammar writes it (``"7922"``); see :attr:`asn_label`.
    asn: str | None = None
    exit_class: str | None = None
    session: str | None = None
    #: Sticky lifetime in minutes as given; ``None`` when absent.
    sesstime: int | None = None

    @property
    def asn_label(self) -> str | None:
        """The ASN as the world and the headers write it: ``"AS7922"``."""
        return None if self.asn is None else f"AS{self.asn}"

    @property
    def session_minutes(self) -> int:
        """The sticky lifetime in minutes, defaulting as the protocol says."""
        return protocol.DEFAULT_SESSTIME_MINUTES if self.sesstime is None else self.sesstime

    @property
    def pool_key(self) -> tuple[str | None, str | None, str | None, str | None]:
        """The exit-selecting part of the targeting (no session): a cache key."""
        return (self.country, self.city, self.asn_label, self.exit_class)


def base_username(username: str) -> str:
    """The account's base username: everything before the first ``-``.

    The base never contains ``-``, so this is known even when the targeting is malformed;
    the gateway authenticates first, so that targeting errors never answer a stranger.
    """
    return username.split("-", 1)[0]


def parse_username(username: str) -> Targeting:
    """Decode ``BASE[-key-value ...]`` into a :class:`Targeting`.

    Raises :class:`TargetingError` (naming the parameter) for anything the grammar refuses:
    an unknown key, a key out of the table's order or repeated, a key without a value, a value
    of the wrong shape, ``city``/``asn`` without ``country``, ``sesstime`` without ``session``.
    """
    parts = username.split("-")
    base = parts[0]
    if not _BASE_RE.fullmatch(base):
        raise TargetingError(
            "username", "the base username is empty or has characters other than [A-Za-z0-9_]"
        )
    pairs = parts[1:]
    values: dict[str, str] = {}
    last = -1
    for i in range(0, len(pairs), 2):
        key = pairs[i]
        if key not in _ORDER:
            shown = key if len(key) <= 40 else key[:40] + "..."
            raise TargetingError(
                key or "username",
                f"unknown targeting parameter {shown!r}; "
                f"known: {', '.join(protocol.USERNAME_KEYS)}",
            )
        if key in values:
            raise TargetingError(key, f"targeting parameter {key!r} is given more than once")
        if _ORDER[key] < last:
            raise TargetingError(
                key,
                f"targeting parameter {key!r} is out of order; the order is "
                f"{', '.join(protocol.USERNAME_KEYS)}",
            )
        last = _ORDER[key]
        if i + 1 >= len(pairs) or pairs[i + 1] == "":
            raise TargetingError(key, f"targeting parameter {key!r} has no value")
        values[key] = pairs[i + 1]

    country = values.get("country")
    if country is not None and not _COUNTRY_RE.fullmatch(country):
        raise TargetingError(
            "country", f"country must be a lower-case ISO 3166-1 alpha-2 code, got {country!r}"
        )
    city = values.get("city")
    if city is not None:
        if not _CITY_RE.fullmatch(city):
            raise TargetingError(
                "city", f"city must be lower case [a-z0-9_] with spaces as '_', got {city!r}"
            )
        if country is None:
            raise TargetingError("city", "city needs country")
    asn = values.get("asn")
    if asn is not None:
        if not _DIGITS_RE.fullmatch(asn):
            raise TargetingError("asn", f"asn must be digits only, without 'AS', got {asn!r}")
        if country is None:
            raise TargetingError("asn", "asn needs country")
    exit_class = values.get("class")
    if exit_class is not None and exit_class not in protocol.EXIT_CLASSES:
        raise TargetingError(
            "class",
            f"class must be one of {', '.join(protocol.EXIT_CLASSES)}, got {exit_class!r}",
        )
    session = values.get("session")
    if session is not None and not _SESSION_RE.fullmatch(session):
        raise TargetingError(
            "session",
            f"session must be 1 to {protocol.MAX_SESSION_ID_LENGTH} characters [A-Za-z0-9]",
        )
    sesstime: int | None = None
    raw_time = values.get("sesstime")
    if raw_time is not None:
        if session is None:
            raise TargetingError("sesstime", "sesstime is only allowed with session")
        if not _DIGITS_RE.fullmatch(raw_time):
            raise TargetingError("sesstime", f"sesstime must be whole minutes, got {raw_time!r}")
        sesstime = int(raw_time)
        if not protocol.MIN_SESSTIME_MINUTES <= sesstime <= protocol.MAX_SESSTIME_MINUTES:
            raise TargetingError(
                "sesstime",
                f"sesstime must be {protocol.MIN_SESSTIME_MINUTES}.."
                f"{protocol.MAX_SESSTIME_MINUTES} minutes, got {sesstime}",
            )
    return Targeting(
        base=base,
        country=country,
        city=city,
        asn=asn,
        exit_class=exit_class,
        session=session,
        sesstime=sesstime,
    )


def check_against_pool(targeting: Targeting, exit_classes: Mapping[str, Sequence[str]]) -> None:
    """Refuse an exit class that the targeted country does not offer (400 ``bad_targeting``).

    ``exit_classes`` maps each known country code to its exit classes.  An unknown country is
    left alone: the gateway answers it with 502 ``no_exit``, as for a region without exits.
    """
    if targeting.country is None or targeting.exit_class is None:
        return
    offered = exit_classes.get(targeting.country)
    if offered is not None and targeting.exit_class not in offered:
        raise TargetingError(
            "class",
            f"country {targeting.country!r} has no exit class {targeting.exit_class!r}; "
            f"it offers {', '.join(offered)}",
        )
