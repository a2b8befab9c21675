"""Targets, and the ONE client module that encodes the gateway's username grammar.

``shared/gateway-protocol.md`` section 1: the base username from ``GET /v1/credentials`` gets
``-key-value`` pairs appended, in the order ``country, city, asn, class, session, sesstime``,
each key at most once::

    >>> Target(country="us", city="New York", exit_class="residential").username("nb_a1b2")
    'nb_a1b2-country-us-city-new_york-class-residential'
    >>> Target(country="de", asn=3320, session="cart42", session_ttl=30).username("nb_a1b2")
    'nb_a1b2-country-de-asn-3320-session-cart42-sesstime-30'

The sandbox decodes the same grammar in its own module (``proxaro_scrape.sandbox.targeting``),
an independent implementation: this module never imports the sandbox, so the two cannot agree on
a mistake by sharing code.

**Syntax** is checked here, in the constructor, before anything can be sent: a malformed value
raises :class:`~proxaro_scrape.errors.TargetError` whose ``param`` names the field.  **Semantics**
(is that country in the pool, does it have that exit class, is ASN targeting allowed on this
plan) needs the pool view and is checked by ``GatewayManager.request`` from cached data, still
before anything is sent.

**Selectors** are targets the manager resolves client-side, per request, from the pool view:

- ``Target(continent="Europe")``: a country of that continent, weighted by
  ``estimated_pool_size``;
- ``Target(countries=["de", "fr"])`` (``Target(country=["de", "fr"])`` is accepted too): one of
  these countries, weighted by ``estimated_pool_size``;
- ``Target(country="us", exit_class="mobile_4g", asn=HEALTHY_ASN)``: a healthy ASN of that class
  in that country (needs the Growth plan, like any ASN targeting).

A selector has no username of its own (:meth:`Target.username` refuses it); the routes the
manager hands out always carry a concrete target.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from proxaro_scrape import protocol
from proxaro_scrape.errors import TargetError

__all__ = ["HEALTHY_ASN", "Target"]

#: ``Target(asn=HEALTHY_ASN)``: "a healthy ASN of the target's class in its country".
HEALTHY_ASN = "healthy"

_COUNTRY = re.compile(r"[a-z]{2}\Z")
_CITY = re.compile(r"[a-z0-9_]+\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
#: Bounds on free-form values, so that a runaway string fails here and not as a 64 KiB header.
MAX_CITY_LENGTH = 64
MAX_CONTINENT_LENGTH = 32
MAX_COUNTRIES = 250
MAX_ASN = 4_294_967_295  # 32-bit AS numbers
_SESSION = re.compile(rf"[A-Za-z0-9]{{1,{protocol.MAX_SESSION_ID_LENGTH}}}\Z")

#: Keys a mapping may use in :meth:`Target.coerce`: the field names, plus the grammar's own
#: names (``class``, ``sesstime``) so that a dict copied from a username reads naturally.
_ALIASES = {"class": "exit_class", "sesstime": "session_ttl"}
#: Dict targets already checked, by their items: a spider that writes ``{"country": "de"}`` on
#: every request pays for its validation once (the integrations check a request's dict where
#: it is given, the core again: both hit this).  Bounded: cleared when full.
_COERCED: dict[tuple[Any, ...], Target] = {}
_COERCED_LIMIT = 1024


@dataclass(frozen=True)
class Target:
    """Where a request should exit: country, city, ASN, exit class and sticky session.

    All fields are optional; ``Target()`` is "any exit of the pool, a new one per request".
    ``session_ttl`` is the sticky session's lifetime in minutes (the grammar's ``sesstime``).
    ``countries`` and ``continent`` (and ``asn=HEALTHY_ASN``) make the target a *selector*, see
    the module docstring.  Instances are immutable and hashable; use :meth:`replace` for a
    variant.  Invalid values raise :class:`~proxaro_scrape.errors.TargetError` naming the field.
    """

    country: str | None = None
    city: str | None = None
    asn: str | None = None
    exit_class: str | None = None
    session: str | None = None
    session_ttl: int | None = None
    countries: tuple[str, ...] | None = None
    continent: str | None = None
    # Precomputed once: hashing is on the per-request path.  ``_key`` is a string that two
    # targets share exactly when they are equal (a str caches its hash, a dataclass does not;
    # and a str's hash is recomputed after unpickling, where a stored int would be stale).
    _key: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        put = object.__setattr__
        country: Any = self.country
        countries: Any = self.countries
        if country is not None and countries is not None:
            raise TargetError("give either country or countries, not both", param="country")
        if isinstance(country, (list, tuple, set, frozenset)):
            # Target(country=["de", "fr"]): the list form of the countries selector.
            countries, country = country, None
        if country is not None:
            _check_country(country, "country")
        if countries is not None:
            if isinstance(countries, str) or not isinstance(countries, Iterable):
                raise TargetError(
                    f"countries must be a list of country codes, got {countries!r}",
                    param="countries",
                )
            codes: list[str] = []
            for code in countries:
                _check_country(code, "countries")
                if len(codes) >= MAX_COUNTRIES:
                    raise TargetError(
                        f"countries lists at most {MAX_COUNTRIES} codes", param="countries"
                    )
                if code not in codes:
                    codes.append(code)
            if not codes:
                raise TargetError("countries must not be empty", param="countries")
            if len(codes) == 1:
                country, countries = codes[0], None
            else:
                countries = tuple(codes)
        put(self, "country", country)
        put(self, "countries", countries)

        if self.continent is not None:
            if (
                not isinstance(self.continent, str)
                or not self.continent.strip()
                or len(self.continent) > MAX_CONTINENT_LENGTH
            ):
                raise TargetError(
                    f"continent must be a name such as 'Europe' (at most "
                    f"{MAX_CONTINENT_LENGTH} characters), got {_clip(self.continent)}",
                    param="continent",
                )
            if country is not None or countries is not None:
                raise TargetError("give a continent or countries, not both", param="continent")
            put(self, "continent", " ".join(self.continent.split()))

        single = country is not None
        if self.city is not None:
            city = self.city
            if not isinstance(city, str):
                raise TargetError(f"city must be a string, got {_clip(city)}", param="city")
            if len(city) > MAX_CITY_LENGTH:
                raise TargetError(
                    f"city is at most {MAX_CITY_LENGTH} characters, got {len(city)}",
                    param="city",
                )
            # The grammar writes spaces as "_" and everything but the session in lower case.
            city = "_".join(city.strip().lower().split())
            if not _CITY.match(city):
                raise TargetError(
                    f"city must be lower case letters, digits and '_' (spaces become '_'), "
                    f"got {_clip(self.city)}",
                    param="city",
                )
            if not single:
                raise TargetError("a city needs a single country (country='..')", param="city")
            put(self, "city", city)

        if self.asn is not None:
            asn: Any = self.asn
            if isinstance(asn, bool) or not isinstance(asn, (int, str)):
                raise TargetError(f"asn must be digits, got {_clip(asn)}", param="asn")
            if isinstance(asn, int):
                if asn <= 0:
                    raise TargetError(f"asn must be a positive number, got {asn!r}", param="asn")
                asn = str(asn)
            if asn != HEALTHY_ASN:
                if asn[:2].upper() == "AS":
                    raise TargetError(
                        f"write the ASN without the 'AS' prefix: asn={asn[2:]!r}, not {asn!r}",
                        param="asn",
                    )
                if not _DIGITS.match(asn) or len(asn) > 10 or not 0 < int(asn) <= MAX_ASN:
                    raise TargetError(
                        f"asn must be digits only, 1..{MAX_ASN}, got {_clip(asn)}", param="asn"
                    )
            if not single:
                raise TargetError("an ASN needs a single country (country='..')", param="asn")
            put(self, "asn", asn)

        if self.exit_class is not None and self.exit_class not in protocol.EXIT_CLASSES:
            raise TargetError(
                f"unknown exit class {self.exit_class!r}; "
                f"expected one of {', '.join(protocol.EXIT_CLASSES)}",
                param="exit_class",
            )

        if self.session is not None and (
            not isinstance(self.session, str) or not _SESSION.match(self.session)
        ):
            raise TargetError(
                f"session must be 1 to {protocol.MAX_SESSION_ID_LENGTH} letters or digits, "
                f"got {self.session!r}",
                param="session",
            )
        ttl: Any = self.session_ttl
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int):
                raise TargetError(f"session_ttl is whole minutes, got {ttl!r}", param="session_ttl")
            if not protocol.MIN_SESSTIME_MINUTES <= ttl <= protocol.MAX_SESSTIME_MINUTES:
                raise TargetError(
                    f"session_ttl must be {protocol.MIN_SESSTIME_MINUTES}.."
                    f"{protocol.MAX_SESSTIME_MINUTES} minutes, got {ttl}",
                    param="session_ttl",
                )
            if self.session is None:
                raise TargetError(
                    "session_ttl only applies to a sticky session (session='..')",
                    param="session_ttl",
                )
        key = "\x1f".join(
            "" if v is None else ",".join(v) if isinstance(v, tuple) else str(v)
            for v in (
                self.country,
                self.city,
                self.asn,
                self.exit_class,
                self.session,
                self.session_ttl,
                self.countries,
                self.continent,
            )
        )
        put(self, "_key", key)

    def __hash__(self) -> int:
        return hash(self._key)

    # ------------------------------------------------------------------ construction

    @classmethod
    def coerce(cls, value: Target | Mapping[str, Any] | None) -> Target | None:
        """A :class:`Target` from a target, a dict of field names, or ``None``.

        Dicts may also use the grammar's names ``class`` and ``sesstime``.  Unknown keys and
        other types raise :class:`~proxaro_scrape.errors.TargetError`.

        >>> Target.coerce({"country": "us", "class": "isp"})
        Target(country='us', exit_class='isp')
        """
        if value is None or isinstance(value, Target):
            return value
        if isinstance(value, Mapping):
            try:
                # Each value's type in the key too: 1 and True are equal, and only one of them
                # may be a valid value.
                cache_key: Any = tuple((k, type(v), v) for k, v in value.items())
                hit = _COERCED.get(cache_key) if cls is Target else None
            except TypeError:  # an unhashable value (a list of countries): checked each time
                cache_key = hit = None
            if hit is not None:
                return hit
            names = _TARGET_FIELDS if cls is Target else _init_names(cls)
            kwargs: dict[str, Any] = {}
            for key, val in value.items():
                name = _ALIASES.get(key, key)
                if name not in names:
                    raise TargetError(
                        f"unknown target key {key!r}; expected some of {', '.join(sorted(names))}",
                        param=str(key),
                    )
                if name in kwargs:
                    raise TargetError(f"target key {name!r} given twice", param=name)
                kwargs[name] = val
            target = cls(**kwargs)
            if cache_key is not None and cls is Target:
                if len(_COERCED) >= _COERCED_LIMIT:
                    _COERCED.clear()
                _COERCED[cache_key] = target
            return target
        raise TargetError(
            f"a target is a Target, a dict or None, not {type(value).__name__}", param="target"
        )

    def replace(self, **changes: Any) -> Target:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ reading

    @property
    def is_selector(self) -> bool:
        """True when the manager must resolve this target (continent, countries, healthy ASN)."""
        return self.countries is not None or self.continent is not None or self.asn == HEALTHY_ASN

    @property
    def geo(self) -> Target:
        """The same target without its sticky session."""
        if self.session is None:
            return self
        return replace(self, session=None, session_ttl=None)

    def describe(self) -> str:
        """A short human form: ``country=de city=berlin class=residential`` (``any`` if empty)."""
        bits = []
        if self.continent is not None:
            bits.append(f"continent={self.continent}")
        if self.countries is not None:
            bits.append(f"countries={','.join(self.countries)}")
        for key, value in (
            ("country", self.country),
            ("city", self.city),
            ("asn", self.asn),
            ("class", self.exit_class),
            ("session", self.session),
            ("sesstime", self.session_ttl),
        ):
            if value is not None:
                bits.append(f"{key}={value}")
        return " ".join(bits) or "any"

    def __repr__(self) -> str:
        # Only the fields that are set: Target(country='us', exit_class='isp').
        inner = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.init and getattr(self, f.name) is not None
        )
        return f"Target({inner})"

    # ------------------------------------------------------------------ encoding

    def username(self, base_username: str) -> str:
        """The gateway username for this target (``shared/gateway-protocol.md`` section 1).

        ``base_username`` is the one from ``GET /v1/credentials``; it may contain ``_`` but
        never ``-``.  A selector target is resolved by the manager first and has no username.
        """
        if self.is_selector:
            raise TargetError(
                f"{self.describe()} is a selector: GatewayManager.request resolves it to a "
                f"concrete target first",
                param="continent"
                if self.continent is not None
                else "countries"
                if self.countries is not None
                else "asn",
            )
        if not base_username or "-" in base_username:
            raise TargetError(
                "the base username must be non-empty and contain no '-'", param="username"
            )
        return encode_username(
            base_username,
            self.country,
            self.city,
            self.asn,
            self.exit_class,
            self.session,
            self.session_ttl,
        )


def encode_username(
    base: str,
    country: str | None = None,
    city: str | None = None,
    asn: str | None = None,
    exit_class: str | None = None,
    session: str | None = None,
    sesstime: int | None = None,
) -> str:
    """Append the ``-key-value`` pairs in the grammar's order (values already validated)."""
    parts = [base]
    if country is not None:
        parts.append(f"country-{country}")
    if city is not None:
        parts.append(f"city-{city}")
    if asn is not None:
        parts.append(f"asn-{asn}")
    if exit_class is not None:
        parts.append(f"class-{exit_class}")
    if session is not None:
        parts.append(f"session-{session}")
        if sesstime is not None:
            parts.append(f"sesstime-{sesstime}")
    return "-".join(parts)


def _check_country(code: Any, param: str) -> None:
    if not isinstance(code, str) or not _COUNTRY.match(code):
        hint = ""
        if isinstance(code, str) and len(code.strip()) == 2 and code.strip().isalpha():
            hint = f" (write {code.strip().lower()!r})"
        raise TargetError(
            f"a country is an ISO 3166-1 alpha-2 code in lower case such as 'us', "
            f"got {code!r}{hint}",
            param=param,
        )


def _clip(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut short: an error message never echoes a 100,000-character value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _init_names(cls: type[Target]) -> frozenset[str]:
    """The field names a target's dict may use (besides the grammar's aliases)."""
    return frozenset(f.name for f in fields(cls) if f.init)


_TARGET_FIELDS = _init_names(Target)
