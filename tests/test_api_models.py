"""The API models: attribute access, aware datetimes, fields added later kept, secrets masked;
and the public surface of ``proxaro_scrape.api``, pinned."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import datetime, timezone

import pytest

import proxaro_scrape
import proxaro_scrape.api as api_module
from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import (
    Account,
    Asn,
    Country,
    Credentials,
    Model,
    Order,
    Page,
    Plan,
    Usage,
    Webhook,
)
from proxaro_scrape.api._models import parse_datetime

PASSWORD = "tN3Jx9-PeQ4sVWuM"
SECRET = "whsec_live_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"


def test_reference_examples_read_as_typed_models() -> None:
    account = Account.from_dict(
        {
            "object": "account",
            "id": "acct_01HVQ8",
            "email": "ops@example.com",
            "created_at": "2025-04-12T10:14:22Z",
            "plan": {
                "id": "growth",
                "name": "Growth",
                "status": "active",
                "current_period_end": "2026-05-12T10:14:22Z",
            },
        }
    )
    assert account.created_at == datetime(2025, 4, 12, 10, 14, 22, tzinfo=timezone.utc)
    assert account.plan.current_period_end.tzinfo is not None
    assert account.plan.name == "Growth"

    usage = Usage.from_dict(
        {
            "object": "usage",
            "period_start": "2026-04-01T00:00:00Z",
            "period_end": "2026-04-30T23:59:59Z",
            "total_bytes": 84122983241,
            "cap_bytes": 107374182400,
            "breakdown": [{"exit_class": "residential", "bytes": 52110000000}],
        }
    )
    assert usage.total_bytes == 84122983241
    assert usage.breakdown[0].exit_class == "residential"
    assert usage.breakdown[0].bytes == 52110000000
    assert usage.fraction_used == pytest.approx(0.7835, abs=1e-4)

    order = Order.from_dict({"amount_usd": 99, "paid_at": None, "status": "paid"})
    assert order.amount_usd == 99.0 and isinstance(order.amount_usd, float)
    assert order.paid_at is None
    assert order.id is None  # declared but not sent: None, never an AttributeError


def test_fields_added_later_are_kept_and_reachable() -> None:
    data = {
        "code": "us",
        "name": "United States",
        "continent": "North America",
        "exit_classes": ["residential"],
        "cities_available": 47,
        "estimated_pool_size": 8200000,
        "pool_health": "healthy",
        "median_latency_ms": 84,  # a field this version does not know
        "regions": [{"id": "us-east"}],
        "with-dash": True,
    }
    country = Country.from_dict(data)
    assert country.extra == {
        "median_latency_ms": 84,
        "regions": [{"id": "us-east"}],
        "with-dash": True,
    }
    assert country.median_latency_ms == 84  # attribute access too
    assert country.extra["with-dash"] is True
    assert "median_latency_ms" in dir(country)
    assert country.to_dict() == data
    assert "median_latency_ms" in repr(country)
    with pytest.raises(AttributeError):
        _ = country.no_such_field
    # Without the additive pool_health (the real API's reference shape): None.
    assert Country.from_dict({"code": "de"}).pool_health is None
    assert Asn.from_dict({"asn": "AS7922", "pool_health": "degraded"}).pool_health == "degraded"


def test_models_are_read_only_and_compare_by_content() -> None:
    plan = Plan.from_dict({"id": "growth", "price_usd": 99, "bandwidth_gb": 25})
    with pytest.raises(AttributeError):
        plan.id = "scale"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del plan.id
    assert plan == Plan.from_dict({"id": "growth", "price_usd": 99, "bandwidth_gb": 25})
    assert plan != Plan.from_dict({"id": "scale"})
    with pytest.raises(TypeError):
        Plan.from_dict(["not", "an", "object"])  # type: ignore[arg-type]


def test_secrets_are_masked_everywhere_but_reveal() -> None:
    cred = Credentials.from_dict(
        {"object": "credentials", "username": "nb_growth_a1b2c3d4", "password": PASSWORD}
    )
    assert isinstance(cred.password, Secret)
    assert cred.password.reveal() == PASSWORD and cred.password == PASSWORD
    for text in (repr(cred), str(cred), f"{cred.password}", repr(cred.to_dict())):
        assert PASSWORD not in text
    with pytest.raises(TypeError):
        pickle.dumps(cred)

    hook = Webhook.from_dict({"id": "wh_1", "secret": SECRET, "events": ["*"]})
    assert isinstance(hook.secret, Secret) and hook.secret.reveal() == SECRET
    assert SECRET not in repr(hook) and SECRET[:-4] not in repr(hook)
    assert Webhook.from_dict({"id": "wh_1"}).secret is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-04-22T14:30:00Z", datetime(2026, 4, 22, 14, 30, tzinfo=timezone.utc)),
        ("2026-04-22T14:30:00.250Z", datetime(2026, 4, 22, 14, 30, 0, 250000, timezone.utc)),
        ("2026-04-22T16:30:00+02:00", datetime(2026, 4, 22, 14, 30, tzinfo=timezone.utc)),
        ("2026-04-22T14:30:00", datetime(2026, 4, 22, 14, 30, tzinfo=timezone.utc)),
        (1714938000, datetime(2024, 5, 5, 19, 40, tzinfo=timezone.utc)),
        ("not a date", "not a date"),  # kept as sent rather than failing the whole object
        (True, True),
    ],
)
def test_parse_datetime(raw: object, expected: object) -> None:
    got = parse_datetime(raw)
    assert got == expected
    if isinstance(got, datetime):
        assert got.utcoffset() is not None


def test_page() -> None:
    page: Page[int] = Page([1, 2, 3], has_more=True, next_cursor="c_1")
    assert list(page) == [1, 2, 3] and len(page) == 3 and page[0] == 1
    assert "has_more=True" in repr(page)


# ---------------------------------------------------------------------------- the public surface

API_ALL = [
    "APIStatus",
    "Account",
    "AccountPlan",
    "AllowlistEntry",
    "Asn",
    "AsyncPaginator",
    "AsyncProxaro",
    "Country",
    "Credentials",
    "Deleted",
    "GatewaySession",
    "Model",
    "Order",
    "Pacer",
    "Page",
    "Plan",
    "Proxaro",
    "RateLimit",
    "RetryPolicy",
    "RotatedCredentials",
    "SyncPaginator",
    "Usage",
    "UsageBreakdown",
    "Webhook",
    "WebhookAttempt",
]


def test_public_api_is_pinned() -> None:
    assert api_module.__all__ == API_ALL
    assert all(issubclass(getattr(api_module, n), Model) for n in ("Account", "Webhook"))


def test_package_exports_the_client() -> None:
    assert proxaro_scrape.__all__ == sorted(proxaro_scrape.__all__)
    for name in ("Proxaro", "AsyncProxaro", "Pacer", "RateLimit", "RetryPolicy", "Usage"):
        assert name in proxaro_scrape.__all__
        assert getattr(proxaro_scrape, name) is getattr(api_module, name)


def test_client_imports_no_framework_and_does_no_io() -> None:
    code = (
        "import sys, socket\n"
        "def refuse(*a, **k): raise AssertionError('I/O at import')\n"
        "socket.socket.connect = refuse\n"
        "import proxaro_scrape.api\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('scrapy', 'twisted', 'requests', 'aiohttp')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
