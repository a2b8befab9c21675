"""The JSON shapes of the sandbox's world objects, as the v1 reference writes them.

One function per object, shared by the API handlers, the controls and the events they emit, so
that an order in ``GET /v1/orders`` and the same order in an ``order.paid`` event cannot differ.
Field names, types and ``object`` values follow ``proxaro-api-reference.txt``; where the
reference shows no ``object`` field (sessions, countries, ASNs, plans), none is added.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from proxaro_scrape.sandbox.world import (
    GIB,
    AllowlistEntry,
    Asn,
    Country,
    Order,
    SessionRecord,
    WebhookAttempt,
    WebhookEndpoint,
    World,
    iso,
)

JSON = dict[str, Any]

_SECRET_ALPHABET = string.ascii_letters + string.digits


def new_webhook_secret() -> str:
    """``whsec_test_`` and 32 random letters and digits (the sandbox only has test secrets)."""
    return "whsec_test_" + "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(32))


def account_object(world: World, current_period_end: float) -> JSON:
    """``GET /v1/me``."""
    acct = world.account
    plan = world.plan
    return {
        "object": "account",
        "id": acct.id,
        "email": acct.email,
        "created_at": iso(acct.created_at),
        "plan": {
            "id": plan["id"],
            "name": plan["name"],
            "status": "active",
            "current_period_end": iso(current_period_end),
        },
    }


def order_object(order: Order) -> JSON:
    """An ``order``."""
    return {
        "object": "order",
        "id": order.id,
        "plan_id": order.plan_id,
        "amount_usd": float(order.amount_usd),
        "status": order.status,
        "payment_method": order.payment_method,
        "created_at": iso(order.created_at),
        "paid_at": None if order.paid_at is None else iso(order.paid_at),
    }


def credentials_object(world: World) -> JSON:
    """``GET /v1/credentials``: the gateway address, username, password and bandwidth."""
    cred = world.credentials
    cap = world.plan["bandwidth_gb"]
    return {
        "object": "credentials",
        "id": cred.id,
        "gateway": cred.gateway,
        "port": cred.port,
        "username": cred.username,
        "password": cred.password,
        "bandwidth_gb_cap": cap,
        "bandwidth_gb_used": round(world.used_bytes() / GIB, 2),
        "expires_at": iso(cred.expires_at),
    }


def rotated_credentials_object(world: World) -> JSON:
    """``POST /v1/credentials/rotate``'s answer (after the rotation)."""
    cred = world.credentials
    rotated = cred.rotated_at if cred.rotated_at is not None else world.clock.now()
    return {
        "object": "credentials",
        "id": cred.id,
        "rotated_at": iso(rotated),
        "password": cred.password,
    }


def session_object(rec: SessionRecord) -> JSON:
    """One item of ``GET /v1/sessions``."""
    return {
        "id": rec.id,
        "started_at": iso(rec.started_at),
        "ended_at": iso(rec.ended_at),
        "exit_ip": rec.exit_ip,
        "exit_class": rec.exit_class,
        "exit_country": rec.exit_country,
        "exit_asn": rec.exit_asn,
        "bytes_sent": rec.bytes_sent,
        "bytes_recv": rec.bytes_recv,
    }


def country_object(country: Country) -> JSON:
    """One item of ``GET /v1/countries``, with the additive ``pool_health``.

    A country whose pool is down stays listed, with ``estimated_pool_size`` 0, so that a
    scheduler sees it is dead rather than unknown.
    """
    down = country.pool_health == "down"
    return {
        "code": country.code,
        "name": country.name,
        "continent": country.continent,
        "exit_classes": list(country.exit_classes),
        "cities_available": len(country.cities),
        "estimated_pool_size": 0 if down else country.estimated_pool_size,
        "pool_health": country.pool_health,
    }


def asn_object(country: Country, asn: Asn) -> JSON:
    """One item of ``GET /v1/countries/{code}/asns``; every ASN of a down country is down."""
    health = "down" if country.pool_health == "down" else asn.pool_health
    return {"asn": asn.asn, "org": asn.org, "exit_class": asn.exit_class, "pool_health": health}


def allowlist_entry_object(entry: AllowlistEntry) -> JSON:
    """An ``allowlist_entry``."""
    return {
        "object": "allowlist_entry",
        "id": entry.id,
        "cidr": entry.cidr,
        "label": entry.label,
        "created_at": iso(entry.created_at),
    }


def webhook_object(hook: WebhookEndpoint, *, with_secret: bool = False) -> JSON:
    """A ``webhook``; the secret only on creation and rotation, as the reference says."""
    out: JSON = {
        "object": "webhook",
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "label": hook.label,
    }
    if with_secret:
        out["secret"] = hook.secret
    out["created_at"] = iso(hook.created_at)
    return out


def webhook_attempt_object(att: WebhookAttempt) -> JSON:
    """A ``webhook_attempt`` (a delivery receipt of ``GET /v1/webhooks/{id}/attempts``)."""
    return {
        "object": "webhook_attempt",
        "id": att.id,
        "webhook_id": att.webhook_id,
        "event_id": att.event_id,
        "event_type": att.event_type,
        "attempt": att.attempt,
        "attempted_at": iso(att.attempted_at),
        "status": att.status,
        "ok": att.ok,
        "error": att.error,
        "next_retry_at": None if att.next_retry_at is None else iso(att.next_retry_at),
    }
