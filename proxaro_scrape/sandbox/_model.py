"""The sandbox world's data model: plans, the account, its keys, credentials, pool and records.

Plain dataclasses and the constants of the reference (plans, rate limits, scopes), with no
behaviour beyond rendering: :class:`~proxaro_scrape.sandbox.world.World` owns and changes them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from proxaro_scrape.sandbox._clock import iso

__all__ = [
    "ASN_PLANS",
    "GIB",
    "HEALTH_VALUES",
    "KEY_SCOPES",
    "PLANS",
    "PLAN_IDS",
    "RATE_LIMITS",
    "Account",
    "AllowlistEntry",
    "ApiKey",
    "Asn",
    "Country",
    "Credentials",
    "Event",
    "Exit",
    "Happening",
    "Knobs",
    "Order",
    "SessionRecord",
    "WebhookAttempt",
    "WebhookEndpoint",
    "slug",
]

PLANS: list[dict[str, object]] = [
    {"id": "starter", "name": "Starter", "price_usd": 29, "bandwidth_gb": 5},
    {"id": "growth", "name": "Growth", "price_usd": 99, "bandwidth_gb": 25},
    {"id": "scale", "name": "Scale", "price_usd": 299, "bandwidth_gb": 100},
    {"id": "network", "name": "Network", "price_usd": None, "bandwidth_gb": None},
]
PLAN_IDS = tuple(str(p["id"]) for p in PLANS)

#: Requests per minute and burst per plan (reference, "Rate limits").  Network is "custom":
#: the sandbox gives it the Scale figures times four.
RATE_LIMITS: dict[str, tuple[int, int]] = {
    "starter": (60, 120),
    "growth": (300, 600),
    "scale": (1200, 2400),
    "network": (4800, 9600),
}

#: Plans on which ASN targeting is allowed.
ASN_PLANS = frozenset({"growth", "scale", "network"})

KEY_SCOPES = ("read_only", "read_write", "admin")
HEALTH_VALUES = ("healthy", "degraded", "down")

GIB = 1024**3


def slug(city: str) -> str:
    """A city name as the username grammar writes it: ``New York`` → ``new_york``."""
    return "".join(c if c.isalnum() else "_" for c in city.lower()).strip("_")


@dataclass
class Account:
    """The account the API key belongs to, with its plan and billing period."""

    id: str
    email: str
    created_at: float
    plan_id: str
    period_start: float
    period_end: float


@dataclass
class ApiKey:
    """An API key of an account and its scope (``read_only``, ``read_write``, ``admin``)."""

    # The key and the passwords are secrets: kept out of every repr.
    key: str = field(repr=False)
    account_id: str
    scope: str = "admin"


@dataclass
class Credentials:
    """The gateway credentials of ``GET /v1/credentials``, and the passwords in grace."""

    id: str
    gateway: str
    port: int
    username: str
    password: str = field(repr=False)
    expires_at: float
    rotated_at: float | None = None
    #: (password, accepted until) for passwords replaced by a rotation.
    previous: list[tuple[str, float]] = field(default_factory=list, repr=False)


@dataclass
class Asn:
    """One ASN of a country's pool, with the exit class it serves and its health."""

    asn: str  # "AS7922"
    org: str
    exit_class: str
    pool_health: str = "healthy"


@dataclass
class Country:
    """One country of the pool, as ``GET /v1/countries`` lists it."""

    code: str
    name: str
    continent: str
    exit_classes: list[str]
    cities: list[str]
    estimated_pool_size: int
    pool_health: str = "healthy"

    @property
    def city_slugs(self) -> list[str]:
        """The cities as the username grammar writes them (``new_york``)."""
        return [slug(c) for c in self.cities]


@dataclass(frozen=True)
class Exit:
    """One exit of the pool: what the world reports, and the loopback address it binds."""

    ip: str  # public-looking, reported in X-Proxaro-Exit-IP and /ip
    bind: str  # 127.x.y.z: the source address of the gateway's outgoing connection
    country: str
    asn: str
    exit_class: str
    city: str  # slug


@dataclass
class Order:
    """One order of ``GET /v1/orders``."""

    id: str
    plan_id: str
    amount_usd: float
    status: str
    payment_method: str
    created_at: float
    paid_at: float | None
    account_id: str


@dataclass
class SessionRecord:
    """One gateway session of ``GET /v1/sessions``: its exit and its bytes."""

    id: str
    started_at: float
    ended_at: float
    exit_ip: str
    exit_class: str
    exit_country: str
    exit_asn: str
    bytes_sent: int
    bytes_recv: int


@dataclass
class AllowlistEntry:
    """One source CIDR on an account's allowlist."""

    id: str
    cidr: str
    label: str | None
    created_at: float
    account_id: str


@dataclass
class Event:
    """A webhook event: the payload the sandbox delivers (see README, "Webhook payload")."""

    id: str
    type: str
    created_at: float
    data: dict[str, object]

    def payload(self) -> dict[str, object]:
        """The JSON object delivered to webhook endpoints."""
        return {
            "object": "event",
            "id": self.id,
            "type": self.type,
            "created_at": iso(self.created_at),
            "data": self.data,
        }


@dataclass
class WebhookEndpoint:
    """A registered webhook endpoint and its signing secret."""

    id: str
    url: str
    events: list[str]
    label: str | None
    secret: str = field(repr=False)
    created_at: float
    account_id: str


@dataclass
class WebhookAttempt:
    """One delivery attempt of an event to an endpoint."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    attempt: int
    attempted_at: float
    status: int | None  # HTTP status, or None when no answer came
    ok: bool
    error: str | None
    next_retry_at: float | None


@dataclass
class Knobs:
    """Behaviour switches that the controls (``/_sandbox/...``) turn for tests and demos."""

    #: Seconds the gateway waits for a target before answering 504 target_timeout.
    target_timeout: float = 10.0
    #: Fraction of requests whose exit drops the connection (502 exit_failed), seeded.
    exit_drop_rate: float = 0.0
    #: Demo site: requests one client address may make within ``site_ban_window`` seconds
    #: before it gets 429s, then 403 "banned" pages for ``site_ban_seconds``.
    site_budget: int = 1_000_000
    site_ban_window: float = 60.0
    site_ban_seconds: float = 30.0
    #: Demo site: extra latency (ms) for paths starting with any of ``site_slow_paths``.
    site_slow_ms: int = 0
    site_slow_paths: list[str] = field(default_factory=list)
    #: API: added latency (ms) and a queue of forced error statuses for the next requests.
    api_latency_ms: int = 0
    api_fault_queue: deque[int] = field(default_factory=deque)


@dataclass
class Happening:
    """One line of the sandbox's own log (``GET /_sandbox/log``): what happened, when."""

    at: float
    kind: str
    detail: dict[str, object]
