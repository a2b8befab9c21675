"""The pool view: what the API says is live, and every decision made from it.

A :class:`PoolView` is an immutable snapshot of ``GET /v1/countries`` and the ASNs of the
countries in use (``GET /v1/countries/{code}/asns``).  The drivers fetch; this module decides,
from plain data:

- :func:`check_target`: semantic validation before anything is sent (an unknown country names
  the closest codes, an exit class the country lacks says which it has, ASN targeting on a plan
  below Growth says so, an ASN that is not in the country says which are);
- :func:`selector_candidates`: what a selector (continent, countries, healthy ASN) may resolve
  to, with weights (``estimated_pool_size``);
- :func:`failover_chain`: the ordered list of targets a request falls back through:
  session → ASN → city → country → neighbours on the same continent by pool size, or an
  explicit chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxaro_scrape.errors import TargetError
from proxaro_scrape.gateway.target import HEALTHY_ASN, Target

__all__ = [
    "AsnInfo",
    "CountryInfo",
    "PoolView",
    "check_target",
    "failover_chain",
    "selector_candidates",
]

#: Codes people write that are not ISO 3166-1 alpha-2 codes.
_COMMON_MISTAKES = {"uk": "gb", "el": "gr", "en": "gb", "ja": "jp", "ko": "kr", "cn": "cn"}
#: How many neighbours an automatic chain tries after the country itself.
MAX_NEIGHBOURS = 4


@dataclass(frozen=True, slots=True)
class CountryInfo:
    """One country of ``GET /v1/countries``."""

    code: str
    name: str
    continent: str
    exit_classes: tuple[str, ...]
    cities_available: int
    estimated_pool_size: int
    pool_health: str = "healthy"


@dataclass(frozen=True, slots=True)
class AsnInfo:
    """One ASN of ``GET /v1/countries/{code}/asns`` (``asn`` as digits, the grammar's form)."""

    asn: str
    org: str
    exit_class: str
    pool_health: str = "healthy"


@dataclass(frozen=True)
class PoolView:
    """An immutable snapshot of the pool.  ``version`` grows with every change.

    ``asns`` holds the ASNs of the countries fetched so far; ``asn_allowed`` is ``False`` once
    the API answered 403 ``scope_required`` to an ASN listing (a plan below Growth), ``None``
    while unknown.
    """

    countries: Mapping[str, CountryInfo] = field(default_factory=dict)
    asns: Mapping[str, tuple[AsnInfo, ...]] = field(default_factory=dict)
    asn_allowed: bool | None = None
    version: int = 0

    @property
    def loaded(self) -> bool:
        """True once the country list has been fetched."""
        return bool(self.countries)

    def with_countries(self, countries: Iterable[CountryInfo]) -> PoolView:
        """A new view with this country list."""
        return PoolView(
            {c.code: c for c in countries}, self.asns, self.asn_allowed, self.version + 1
        )

    def with_asns(self, code: str, asns: Iterable[AsnInfo]) -> PoolView:
        """A new view with the ASNs of ``code``."""
        merged = dict(self.asns)
        merged[code] = tuple(asns)
        return PoolView(self.countries, merged, True, self.version + 1)

    def with_asn_forbidden(self) -> PoolView:
        """A new view that knows ASN targeting is not allowed on this plan."""
        return PoolView(self.countries, self.asns, False, self.version + 1)

    def continents(self) -> list[str]:
        """Every continent with a country in the pool."""
        return sorted({c.continent for c in self.countries.values()})

    def by_continent(self, continent: str) -> list[CountryInfo]:
        """The countries of a continent (case-insensitive), biggest pool first."""
        want = continent.casefold()
        found = [c for c in self.countries.values() if c.continent.casefold() == want]
        found.sort(key=lambda c: (-c.estimated_pool_size, c.code))
        return found


# ---------------------------------------------------------------------------- from API models


def country_from_model(model: Any) -> CountryInfo:
    """A :class:`CountryInfo` from the REST client's ``Country`` model (or a dict)."""
    get = model.get if isinstance(model, Mapping) else lambda k, d=None: getattr(model, k, d)
    return CountryInfo(
        code=str(get("code")),
        name=str(get("name") or get("code")),
        continent=str(get("continent") or ""),
        exit_classes=tuple(get("exit_classes") or ()),
        cities_available=int(get("cities_available") or 0),
        estimated_pool_size=int(get("estimated_pool_size") or 0),
        pool_health=str(get("pool_health") or "healthy"),
    )


def asn_from_model(model: Any) -> AsnInfo:
    """An :class:`AsnInfo` from the REST client's ``Asn`` model (or a dict)."""
    get = model.get if isinstance(model, Mapping) else lambda k, d=None: getattr(model, k, d)
    asn = str(get("asn") or "")
    if asn[:2].upper() == "AS":
        asn = asn[2:]
    return AsnInfo(
        asn=asn,
        org=str(get("org") or ""),
        exit_class=str(get("exit_class") or ""),
        pool_health=str(get("pool_health") or "healthy"),
    )


# ---------------------------------------------------------------------------- validation


def closest_countries(pool: PoolView, code: str, n: int = 3) -> list[str]:
    """The codes closest to ``code`` (a common mistake first, then :mod:`difflib`)."""
    out: list[str] = []
    fixed = _COMMON_MISTAKES.get(code)
    if fixed in pool.countries:
        out.append(fixed)  # type: ignore[arg-type]
    codes = sorted(pool.countries)
    import difflib  # an error's suggestion: not worth an import at every start

    for match in difflib.get_close_matches(code, codes, n=n + 2, cutoff=0.4):
        if match not in out:
            out.append(match)
    # Two-letter codes rarely match by ratio alone: same first letter is a good guess too.
    for c in codes:
        if len(out) >= n:
            break
        if c[0] == code[:1] and c not in out:
            out.append(c)
    return out[:n]


def _describe_country(pool: PoolView, code: str) -> str:
    info = pool.countries.get(code)
    return f"{code} ({info.name})" if info else code


def check_target(pool: PoolView, target: Target) -> list[str]:
    """Validate ``target`` against the pool view; raise :class:`TargetError` or return warnings.

    Warnings are for targets that can be sent but will not be served as asked (a pinned ASN
    whose ``pool_health`` is degraded or down: the request fails over).  Nothing is checked
    before the pool view is loaded: the gateway's own ``400 bad_targeting`` still catches it.
    """
    if not pool.loaded:
        return []
    warnings: list[str] = []
    codes: list[str] = []
    if target.country is not None:
        codes = [target.country]
    elif target.countries is not None:
        codes = list(target.countries)
    for code in codes:
        if code not in pool.countries:
            close = closest_countries(pool, code)
            hint = f"; did you mean {', '.join(_describe_country(pool, c) for c in close)}?"
            raise TargetError(
                f"country {code!r} is not in the Proxaro pool{hint if close else ''}",
                param="countries" if target.countries is not None else "country",
            )
    if target.continent is not None:
        members = pool.by_continent(target.continent)
        if not members:
            raise TargetError(
                f"no country of the pool is on continent {target.continent!r}; "
                f"continents: {', '.join(pool.continents())}",
                param="continent",
            )
        if target.exit_class is not None and not any(
            target.exit_class in c.exit_classes for c in members
        ):
            raise TargetError(
                f"no country of {target.continent} offers exit class {target.exit_class!r}",
                param="exit_class",
            )
    if target.exit_class is not None and codes:
        lacking = [c for c in codes if target.exit_class not in pool.countries[c].exit_classes]
        if target.countries is None and lacking:
            info = pool.countries[lacking[0]]
            raise TargetError(
                f"exit_class {target.exit_class!r}: {_describe_country(pool, info.code)} has no "
                f"such exits; it has {', '.join(info.exit_classes)}",
                param="exit_class",
            )
        if target.countries is not None and len(lacking) == len(codes):
            raise TargetError(
                f"exit_class {target.exit_class!r}: none of {', '.join(codes)} has such exits",
                param="exit_class",
            )
    if target.asn is not None:
        if pool.asn_allowed is False:
            raise TargetError(
                "ASN targeting needs the Growth plan or above: this account's plan answered "
                "403 scope_required to the ASN listing",
                param="asn",
            )
        code = target.country or ""  # the constructor guarantees an ASN comes with a country
        known = pool.asns.get(code)
        if known is not None:
            if target.asn == HEALTHY_ASN:
                fits = [a for a in known if _asn_fits(a, target.exit_class)]
                if not fits:
                    raise TargetError(
                        f"{_describe_country(pool, code)} has no ASN"
                        f"{' of class ' + repr(target.exit_class) if target.exit_class else ''}",
                        param="asn",
                    )
            else:
                match = next((a for a in known if a.asn == target.asn), None)
                if match is None:
                    listed = ", ".join(f"{a.asn} ({a.org}, {a.exit_class})" for a in known[:8])
                    raise TargetError(
                        f"ASN {target.asn} is not in the pool of "
                        f"{_describe_country(pool, code)}; it has {listed}",
                        param="asn",
                    )
                if target.exit_class is not None and match.exit_class != target.exit_class:
                    raise TargetError(
                        f"ASN {match.asn} ({match.org}) is a {match.exit_class!r} ASN, "
                        f"not {target.exit_class!r}",
                        param="exit_class",
                    )
                if match.pool_health != "healthy":
                    warnings.append(
                        f"ASN {match.asn} ({match.org}) in {code} is {match.pool_health}: "
                        f"requests pinned to it fail over (without the ASN, then further)"
                    )
    return warnings


def _asn_fits(a: AsnInfo, exit_class: str | None) -> bool:
    return exit_class is None or a.exit_class == exit_class


# ---------------------------------------------------------------------------- selectors


def selector_candidates(pool: PoolView, target: Target) -> list[tuple[Target, int]]:
    """The concrete targets a selector may resolve to, with their weights.

    Countries (from ``continent`` or ``countries``) are weighted by ``estimated_pool_size`` and
    keep the target's exit class (countries lacking it are left out); a healthy-ASN selector
    gives every healthy ASN of the class in the country, equally weighted.  Countries the pool
    view says are down are left out unless nothing else is left.  An empty list means "cannot
    resolve from the pool view yet" (for example the ASNs of that country are not fetched).
    """
    if target.continent is not None or target.countries is not None:
        if target.continent is not None:
            infos = pool.by_continent(target.continent)
        else:
            infos = [pool.countries[c] for c in target.countries or () if c in pool.countries]
        if target.exit_class is not None:
            infos = [c for c in infos if target.exit_class in c.exit_classes]
        live = [c for c in infos if c.pool_health != "down"] or infos
        return [
            (
                Target(
                    country=c.code,
                    exit_class=target.exit_class,
                    session=target.session,
                    session_ttl=target.session_ttl,
                ),
                max(1, c.estimated_pool_size),
            )
            for c in live
        ]
    if target.asn == HEALTHY_ASN:
        asns = pool.asns.get(target.country or "")
        if not asns:
            return []
        healthy = [
            a for a in asns if a.pool_health == "healthy" and _asn_fits(a, target.exit_class)
        ]
        return [(target.replace(asn=a.asn, exit_class=a.exit_class), 1) for a in healthy]
    return [(target, 1)]


# ---------------------------------------------------------------------------- failover


def relax_steps(target: Target) -> list[Target]:
    """``target`` and its relaxations: without the session, the ASN, the city (in that order).

    Each relaxation drops everything before it too, so the list goes from the most specific to
    the country alone (with the exit class kept: a class is what the caller pays for).
    """
    steps = [target]
    current = target
    if current.session is not None:
        current = current.replace(session=None, session_ttl=None)
        steps.append(current)
    if current.asn is not None:
        current = current.replace(asn=None)
        steps.append(current)
    if current.city is not None:
        current = current.replace(city=None)
        steps.append(current)
    return steps


def neighbours(pool: PoolView, target: Target, limit: int = MAX_NEIGHBOURS) -> list[Target]:
    """Other countries of the target country's continent with its exit class, by pool size."""
    info = pool.countries.get(target.country or "")
    if info is None or not info.continent:
        return []
    out = []
    for c in pool.by_continent(info.continent):
        if c.code == info.code:
            continue
        if target.exit_class is not None and target.exit_class not in c.exit_classes:
            continue
        out.append(Target(country=c.code, exit_class=target.exit_class))
        if len(out) >= limit:
            break
    return out


def failover_chain(
    pool: PoolView,
    target: Target,
    failover: bool | Sequence[Target] = True,
    *,
    alternatives: Sequence[Target] = (),
) -> list[Target]:
    """The ordered targets a request for ``target`` (concrete) may go to.

    ``failover=True``: relax (session → ASN → city), then ``alternatives`` (the other picks of
    the selector ``target`` came from, biggest first), then — when ``target`` did not come from
    a selector — the neighbours on the same continent by pool size.  ``False``: ``target`` only.
    A list: ``target`` then that explicit chain.  Duplicates are dropped.
    """
    if failover is False:
        return [target]
    if failover is True:
        chain = relax_steps(target)
        chain.extend(alternatives)
        if not alternatives:
            chain.extend(neighbours(pool, target))
    else:
        chain = [target, *failover]
    seen: set[Target] = set()
    out = []
    for t in chain:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out
