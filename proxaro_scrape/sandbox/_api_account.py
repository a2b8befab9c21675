"""The sandbox API's account resources: ``/v1/me``, ``/v1/usage``, ``/v1/orders``, ``/v1/plans``
and ``/v1/status``."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from proxaro_scrape.sandbox import _objects as objects
from proxaro_scrape.sandbox._api_envelope import JSON, APIFailure, paginate
from proxaro_scrape.sandbox._api_routing import Call, endpoint
from proxaro_scrape.sandbox.world import PLANS, World, iso

__all__ = ["ORDER_STATUSES", "USAGE_GROUPS", "month_bounds", "previous_month"]

ORDER_STATUSES = ("paid", "pending", "cancelled", "expired")
USAGE_GROUPS = ("class", "country")

_PERIOD_RE = re.compile(r"([0-9]{4})-([0-9]{2})")


def month_bounds(year: int, month: int) -> tuple[float, float]:
    """First and last second of a calendar month, UTC."""
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    nxt = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
    return start.timestamp(), nxt.timestamp() - 1


def previous_month(year: int, month: int) -> tuple[int, int]:
    """The (year, month) before ``month`` of ``year``."""
    return (year - 1, 12) if month == 1 else (year, month - 1)


@endpoint("GET", "/v1/me")
async def me(world: World, call: Call) -> JSON:
    """``GET /v1/me``."""
    now = datetime.fromtimestamp(world.clock.now(), tz=timezone.utc)
    _, period_end = month_bounds(now.year, now.month)
    return objects.account_object(world, period_end)


@endpoint("GET", "/v1/usage", query=("period", "group_by"))
async def usage(world: World, call: Call) -> JSON:
    """``GET /v1/usage``."""
    now = datetime.fromtimestamp(world.clock.now(), tz=timezone.utc)
    period = call.query.get("period", "current")
    if period == "current":
        year, month = now.year, now.month
    elif period == "previous":
        year, month = previous_month(now.year, now.month)
    else:
        m = _PERIOD_RE.fullmatch(period)
        if m is None or not 1 <= int(m.group(2)) <= 12:
            raise APIFailure(
                400,
                "invalid_parameter",
                f"The 'period' parameter is 'current', 'previous' or YYYY-MM; got {period!r}.",
                param="period",
            )
        year, month = int(m.group(1)), int(m.group(2))
        if (year, month) > (now.year, now.month):
            raise APIFailure(
                400,
                "invalid_parameter",
                f"The period {period} has not started yet.",
                param="period",
            )
    group_by = call.choice_param("group_by", USAGE_GROUPS) or "class"
    bucket = world.usage.get(f"{year:04d}-{month:02d}", {})
    field_name = "exit_class" if group_by == "class" else "country"
    rows = sorted(
        ((nbytes, name) for (kind, name), nbytes in bucket.items() if kind == group_by),
        key=lambda row: (-row[0], row[1]),
    )
    start, end = month_bounds(year, month)
    return {
        "object": "usage",
        "period_start": iso(start),
        "period_end": iso(end),
        "total_bytes": sum(v for (kind, _), v in bucket.items() if kind == "class"),
        "cap_bytes": world.cap_bytes(),
        "breakdown": [{field_name: name, "bytes": nbytes} for nbytes, name in rows],
    }


@endpoint("GET", "/v1/orders", query=("status", "limit", "cursor"))
async def orders(world: World, call: Call) -> JSON:
    """``GET /v1/orders``."""
    status = call.choice_param("status", ORDER_STATUSES)
    limit = call.int_param("limit", 25, 1, 100)
    mine = [
        o
        for o in world.orders
        if o.account_id == world.account.id and (status is None or o.status == status)
    ]
    return paginate(
        "orders",
        mine,
        lambda o: (o.created_at, o.id),
        objects.order_object,
        limit,
        call.query.get("cursor"),
    )


@endpoint("GET", "/v1/plans", public=True)
async def plans(world: World, call: Call) -> JSON:
    """``GET /v1/plans``."""
    return {"object": "list", "data": [dict(p) for p in PLANS]}


@endpoint("GET", "/v1/status", public=True)
async def status(world: World, call: Call) -> JSON:
    """``GET /v1/status``."""
    return {"object": "status", "status": "ok", "time": iso(world.clock.now())}
