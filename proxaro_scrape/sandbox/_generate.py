"""What a sandbox world is generated from: its seed.

The pool (countries, ASNs, exits and the loopback address each exit binds), the order history
and last month's usage are drawn here, each from a generator of its own derived from the seed,
so that two worlds with the same seed agree on all of them and adding a draw to one never
shifts another.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from proxaro_scrape.sandbox import _data
from proxaro_scrape.sandbox._model import GIB, Account, Asn, Country, Exit, Order, slug

__all__ = ["Pool", "generate_orders", "generate_pool", "generate_usage"]


@dataclass
class Pool:
    """The generated pool: countries, their ASNs, and every exit (also by bind address)."""

    countries: dict[str, Country] = field(default_factory=dict)
    asns: dict[str, list[Asn]] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    exits_by_bind: dict[str, Exit] = field(default_factory=dict)

    def add_exit(self, ex: Exit) -> None:
        """Add one exit to both views."""
        self.exits.append(ex)
        self.exits_by_bind[ex.bind] = ex


def generate_pool(seed: int, exits_per_asn: int) -> Pool:
    """Every country of :data:`_data.COUNTRIES` with its ASNs and ``exits_per_asn`` exits each.

    Exit ``ei`` of ASN ``ai`` of country ``ci`` binds ``127.{ci+1}.{ai+1}.{ei+1}``, so that the
    demo site tells exits apart by client address.
    """
    pool = Pool()
    rng = random.Random(seed * 7919 + 17)
    for ci, (code, name, continent, classes, cities, pool_k) in enumerate(_data.COUNTRIES):
        country = Country(
            code=code,
            name=name,
            continent=continent,
            exit_classes=list(classes),
            cities=list(cities),
            estimated_pool_size=pool_k * 1000 + rng.randrange(1000),
        )
        pool.countries[code] = country
        known = _data.ASNS.get(code)
        if known is None:
            known = [
                (f"AS{rng.randrange(10_000, 270_000)}", f"{name} {suffix}", cls)
                for cls, suffix in zip(
                    classes, ("Telecom", "Broadband", "Mobile", "Wireless", "Hosting")
                )
            ]
        asns = [
            Asn(asn, org, cls, "degraded" if asn in _data.DEGRADED_AT_START else "healthy")
            for asn, org, cls in known
        ]
        pool.asns[code] = asns
        for ai, a in enumerate(asns):
            for ei in range(exits_per_asn):
                pool.add_exit(
                    Exit(
                        ip=_public_ip(rng),
                        bind=f"127.{ci + 1}.{ai + 1}.{ei + 1}",
                        country=code,
                        asn=a.asn,
                        exit_class=a.exit_class,
                        city=slug(cities[(ai + ei) % len(cities)]),
                    )
                )
        # Every country exit class must have an exit, so that class targeting can succeed.
        missing = [c for c in classes if c not in {a.exit_class for a in asns}]
        for cls in missing:
            a = Asn(f"AS{rng.randrange(10_000, 270_000)}", f"{name} {cls.title()}", cls)
            asns.append(a)
            ai = len(asns) - 1
            for ei in range(exits_per_asn):
                bind = f"127.{ci + 1}.{ai + 1}.{ei + 1}"
                pool.add_exit(
                    Exit(_public_ip(rng), bind, code, a.asn, cls, slug(cities[ei % len(cities)]))
                )
    return pool


def _public_ip(rng: random.Random) -> str:
    while True:
        addr = ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24))
        if addr.is_global:
            return str(addr)


def generate_orders(
    seed: int,
    account: Account,
    other_account: Account,
    now: float,
    new_id: Callable[[str], str],
) -> list[Order]:
    """The account's order history since it was created (newest first), a pending order, and
    one order of ``other_account`` (which the API must never show)."""
    rng = random.Random(seed * 31 + 5)
    prices = {"starter": 29.0, "growth": 99.0, "scale": 299.0}
    orders = []
    t = account.created_at
    statuses = ["paid"] * 8 + ["cancelled", "expired"]
    while t < now - 86400:
        status = rng.choice(statuses)
        plan = account.plan_id if account.plan_id in prices else "growth"
        created = t + rng.randrange(3600)
        orders.append(
            Order(
                id=new_id("ord"),
                plan_id=plan,
                amount_usd=prices[plan],
                status=status,
                payment_method=rng.choice(["card_c2c", "card", "wire"]),
                created_at=created,
                paid_at=created + rng.randrange(10, 300) if status == "paid" else None,
                account_id=account.id,
            )
        )
        t += 30 * 86400 / 3  # a few orders a month: long enough history to paginate
    orders.append(
        Order(new_id("ord"), "scale", 299.0, "pending", "card", now - 3600, None, account.id)
    )
    orders.append(
        Order(
            new_id("ord"),
            "starter",
            29.0,
            "paid",
            "card",
            now - 7200,
            now - 7100,
            other_account.id,
        )
    )
    orders.sort(key=lambda o: o.created_at, reverse=True)
    return orders


def generate_usage(
    seed: int, start: datetime, cap: int | None
) -> dict[str, dict[tuple[str, str], int]]:
    """Usage already spent last month (71 % of the cap) and this month (19 %), by exit class
    and by country: ``{"YYYY-MM": {("class" | "country", value): bytes}}``."""
    rng = random.Random(seed * 13 + 3)
    cap = cap or 25 * GIB
    usage: dict[str, dict[tuple[str, str], int]] = {}
    for months_back, fraction in ((1, 0.71), (0, 0.19)):
        y, m = start.year, start.month - months_back
        if m <= 0:
            y, m = y - 1, m + 12
        period = f"{y:04d}-{m:02d}"
        total = int(cap * fraction)
        split = {"residential": 0.62, "isp": 0.26, "mobile_4g": 0.09, "mobile_5g": 0.03}
        bucket = usage.setdefault(period, {})
        for cls, share in split.items():
            bucket[("class", cls)] = int(total * share)
        countries = ["us", "gb", "de", "fr", "jp"]
        weights = [rng.random() + 0.2 for _ in countries]
        for code, w in zip(countries, weights):
            bucket[("country", code)] = int(total * w / sum(weights))
    return usage
