"""The sandbox world: a deterministic synthetic Proxaro account, pool and gateway state.

One :class:`World` is shared by the sandbox's API emulator, its gateway and its demo site.
Everything in it is generated from a seed, so two sandboxes with the same seed agree on every
country, ASN, exit, order and credential.  Time is read from a :class:`Clock` that tests and
demos may speed up or advance, so that grace periods, sticky-session lifetimes and webhook
backoff never make a test sleep for real minutes.

The world is mutated only on the sandbox's event loop (the API controls, the gateway and the
site all run there), so it needs no locks.
"""

from __future__ import annotations

import ipaddress
import random
import string
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from proxaro_scrape import protocol
from proxaro_scrape.sandbox import _data

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

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
GIB = 1024**3


class Clock:
    """World time: real time, optionally sped up, plus any manual advances.

    ``speed`` is world seconds per real second (60 = a minute passes every second).
    """

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        self._real0 = time.monotonic()
        self._world0 = time.time() if start is None else start
        self._speed = speed
        self._offset = 0.0

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        if value <= 0:
            raise ValueError("clock speed must be positive")
        # Re-anchor so that changing the speed does not jump the clock.
        now = self.now()
        self._real0 = time.monotonic()
        self._world0 = now
        self._offset = 0.0
        self._speed = value

    def now(self) -> float:
        """World time as a UNIX timestamp."""
        return self._world0 + (time.monotonic() - self._real0) * self._speed + self._offset

    def advance(self, seconds: float) -> None:
        """Move world time forward by ``seconds`` at once."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds

    def real_seconds(self, world_seconds: float) -> float:
        """How many real seconds ``world_seconds`` of world time take at the current speed."""
        return world_seconds / self._speed

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), tz=timezone.utc)


def iso(ts: float) -> str:
    """A UNIX timestamp as the API writes it: ``2026-04-22T14:30:00Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def slug(city: str) -> str:
    """A city name as the username grammar writes it: ``New York`` → ``new_york``."""
    return "".join(c if c.isalnum() else "_" for c in city.lower()).strip("_")


@dataclass
class Account:
    id: str
    email: str
    created_at: float
    plan_id: str
    period_start: float
    period_end: float


@dataclass
class ApiKey:
    key: str
    account_id: str
    scope: str = "admin"


@dataclass
class Credentials:
    id: str
    gateway: str
    port: int
    username: str
    password: str
    expires_at: float
    rotated_at: float | None = None
    #: (password, accepted until) for passwords replaced by a rotation.
    previous: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Asn:
    asn: str  # "AS7922"
    org: str
    exit_class: str
    pool_health: str = "healthy"


@dataclass
class Country:
    code: str
    name: str
    continent: str
    exit_classes: list[str]
    cities: list[str]
    estimated_pool_size: int
    pool_health: str = "healthy"

    @property
    def city_slugs(self) -> list[str]:
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
        return {
            "object": "event",
            "id": self.id,
            "type": self.type,
            "created_at": iso(self.created_at),
            "data": self.data,
        }


@dataclass
class WebhookEndpoint:
    id: str
    url: str
    events: list[str]
    label: str | None
    secret: str
    created_at: float
    account_id: str


@dataclass
class WebhookAttempt:
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


class World:
    """The whole state of one sandbox.  See the module docstring."""

    def __init__(
        self,
        seed: int = 0,
        *,
        plan: str = "growth",
        gateway_host: str = "127.0.0.1",
        gateway_port: int = 0,
        grace_seconds: float = protocol.ROTATION_GRACE_SECONDS,
        clock: Clock | None = None,
        exits_per_asn: int = 6,
    ) -> None:
        if plan not in PLAN_IDS:
            raise ValueError(f"unknown plan {plan!r}; expected one of {', '.join(PLAN_IDS)}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = clock or Clock()
        self.grace_seconds = grace_seconds
        #: Fraction of requests through a degraded ASN that fail with 502 exit_failed.
        self.degraded_failure_rate = 0.3
        #: Seeded randomness for the gateway's own choices (exits, degraded failures).
        self.gateway_rng = random.Random(seed + 1)
        self.log: deque[Happening] = deque(maxlen=10_000)
        self.knobs = Knobs()
        #: Counters the benchmarks and fault tests read: "api.requests", "api.requests:/v1/me",
        #: "gateway.connections", "gateway.requests", "gateway.tunnels", "site.requests", ...
        self.counters: Counter[str] = Counter()
        self._listeners: list[Callable[[Event], None]] = []
        self._id_counter = 0

        now = self.clock.now()
        start = datetime.fromtimestamp(now, tz=timezone.utc)
        period_start = datetime(start.year, start.month, 1, tzinfo=timezone.utc).timestamp()
        nxt = (
            datetime(start.year + 1, 1, 1, tzinfo=timezone.utc)
            if start.month == 12
            else datetime(start.year, start.month + 1, 1, tzinfo=timezone.utc)
        )
        period_end = nxt.timestamp() - 1

        self.account = Account(
            id=self.new_id("acct"),
            email="ops@example.com",
            created_at=now - 400 * 86400,
            plan_id=plan,
            period_start=period_start,
            period_end=period_end,
        )
        #: A second account, so that "another account's id" answers 404 as the reference says.
        self.other_account = Account(
            id=self.new_id("acct"),
            email="someone-else@example.org",
            created_at=now - 100 * 86400,
            plan_id="starter",
            period_start=period_start,
            period_end=period_end,
        )
        self.keys: dict[str, ApiKey] = {}
        self.credentials = Credentials(
            id=self.new_id("cred"),
            gateway=gateway_host,
            port=gateway_port,
            username=f"nb_{plan}_{self._hex(8)}",
            password=self.new_password(),
            expires_at=period_end,
        )
        self.countries: dict[str, Country] = {}
        self.asns: dict[str, list[Asn]] = {}
        self.exits: list[Exit] = []
        self.exits_by_bind: dict[str, Exit] = {}
        self._generate_pool(exits_per_asn)
        self.orders: list[Order] = self._generate_orders(now)
        self.sessions: deque[SessionRecord] = deque(maxlen=5000)
        self.allowlist: list[AllowlistEntry] = [
            # Another account's entry: never visible to, nor removable by, the main account.
            AllowlistEntry(
                self.new_id("al"), "203.0.113.7/32", "theirs", now, self.other_account.id
            )
        ]
        self.webhooks: list[WebhookEndpoint] = []
        self.attempts: list[WebhookAttempt] = []
        self.events: list[Event] = []
        # usage[period "YYYY-MM"][("class"|"country", value)] = bytes
        self.usage: dict[str, dict[tuple[str, str], int]] = {}
        self._seed_usage(start)
        self._thresholds_fired: set[str] = set()

    # ---------------------------------------------------------------- ids and secrets

    def new_id(self, prefix: str) -> str:
        """A ULID-shaped id with the reference's prefixes (``acct_01HV...``)."""
        self._id_counter += 1
        ms = int(self.clock.now() * 1000)
        head = ""
        for _ in range(10):
            head = _CROCKFORD[ms % 32] + head
            ms //= 32
        tail = "".join(self.rng.choice(_CROCKFORD) for _ in range(16))
        return f"{prefix}_{head}{tail}"

    def _hex(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    def new_password(self) -> str:
        alphabet = string.ascii_letters + string.digits
        parts = ["".join(self.rng.choice(alphabet) for _ in range(5)) for _ in range(3)]
        return "-".join(parts) + self.rng.choice(alphabet)

    def issue_key(self, scope: str = "admin", account_id: str | None = None) -> str:
        """A fresh ``proxaro_test_`` key for the main account (or ``account_id``)."""
        if scope not in KEY_SCOPES:
            raise ValueError(f"unknown scope {scope!r}; expected one of {', '.join(KEY_SCOPES)}")
        key = "proxaro_test_" + "".join(
            random.SystemRandom().choice("0123456789abcdef") for _ in range(32)
        )
        self.keys[key] = ApiKey(key, account_id or self.account.id, scope)
        return key

    # ---------------------------------------------------------------- generation

    def _generate_pool(self, exits_per_asn: int) -> None:
        rng = random.Random(self.seed * 7919 + 17)
        for ci, (code, name, continent, classes, cities, pool_k) in enumerate(_data.COUNTRIES):
            country = Country(
                code=code,
                name=name,
                continent=continent,
                exit_classes=list(classes),
                cities=list(cities),
                estimated_pool_size=pool_k * 1000 + rng.randrange(1000),
            )
            self.countries[code] = country
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
            self.asns[code] = asns
            for ai, a in enumerate(asns):
                for ei in range(exits_per_asn):
                    bind = f"127.{ci + 1}.{ai + 1}.{ei + 1}"
                    ip = self._public_ip(rng)
                    city = slug(cities[(ai + ei) % len(cities)])
                    ex = Exit(
                        ip=ip,
                        bind=bind,
                        country=code,
                        asn=a.asn,
                        exit_class=a.exit_class,
                        city=city,
                    )
                    self.exits.append(ex)
                    self.exits_by_bind[bind] = ex
            # Every country exit class must have an exit, so that class targeting can succeed.
            missing = [c for c in classes if c not in {a.exit_class for a in asns}]
            for cls in missing:
                a = Asn(f"AS{rng.randrange(10_000, 270_000)}", f"{name} {cls.title()}", cls)
                asns.append(a)
                ai = len(asns) - 1
                for ei in range(exits_per_asn):
                    bind = f"127.{ci + 1}.{ai + 1}.{ei + 1}"
                    ex = Exit(
                        self._public_ip(rng), bind, code, a.asn, cls, slug(cities[ei % len(cities)])
                    )
                    self.exits.append(ex)
                    self.exits_by_bind[bind] = ex

    @staticmethod
    def _public_ip(rng: random.Random) -> str:
        while True:
            addr = ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24))
            if addr.is_global:
                return str(addr)

    def _generate_orders(self, now: float) -> list[Order]:
        rng = random.Random(self.seed * 31 + 5)
        prices = {"starter": 29.0, "growth": 99.0, "scale": 299.0}
        orders = []
        t = self.account.created_at
        statuses = ["paid"] * 8 + ["cancelled", "expired"]
        while t < now - 86400:
            status = rng.choice(statuses)
            plan = self.account.plan_id if self.account.plan_id in prices else "growth"
            created = t + rng.randrange(3600)
            orders.append(
                Order(
                    id=self.new_id("ord"),
                    plan_id=plan,
                    amount_usd=prices[plan],
                    status=status,
                    payment_method=rng.choice(["card_c2c", "card", "wire"]),
                    created_at=created,
                    paid_at=created + rng.randrange(10, 300) if status == "paid" else None,
                    account_id=self.account.id,
                )
            )
            t += 30 * 86400 / 3  # a few orders a month: long enough history to paginate
        orders.append(
            Order(
                self.new_id("ord"),
                "scale",
                299.0,
                "pending",
                "card",
                now - 3600,
                None,
                self.account.id,
            )
        )
        orders.append(
            Order(
                self.new_id("ord"),
                "starter",
                29.0,
                "paid",
                "card",
                now - 7200,
                now - 7100,
                self.other_account.id,
            )
        )
        orders.sort(key=lambda o: o.created_at, reverse=True)
        return orders

    def _seed_usage(self, start: datetime) -> None:
        rng = random.Random(self.seed * 13 + 3)
        cap = self.cap_bytes() or 25 * GIB
        for months_back, fraction in ((1, 0.71), (0, 0.19)):
            y, m = start.year, start.month - months_back
            if m <= 0:
                y, m = y - 1, m + 12
            period = f"{y:04d}-{m:02d}"
            total = int(cap * fraction)
            split = {"residential": 0.62, "isp": 0.26, "mobile_4g": 0.09, "mobile_5g": 0.03}
            bucket = self.usage.setdefault(period, {})
            for cls, share in split.items():
                bucket[("class", cls)] = int(total * share)
            countries = ["us", "gb", "de", "fr", "jp"]
            weights = [rng.random() + 0.2 for _ in countries]
            for code, w in zip(countries, weights):
                bucket[("country", code)] = int(total * w / sum(weights))

    # ---------------------------------------------------------------- plan and account

    @property
    def plan(self) -> dict[str, object]:
        return next(p for p in PLANS if p["id"] == self.account.plan_id)

    def set_plan(self, plan_id: str) -> None:
        if plan_id not in PLAN_IDS:
            raise ValueError(f"unknown plan {plan_id!r}; expected one of {', '.join(PLAN_IDS)}")
        self.account.plan_id = plan_id
        self.note("plan_changed", plan=plan_id)

    def asn_allowed(self) -> bool:
        """ASN targeting and listing need Growth or above."""
        return self.account.plan_id in ASN_PLANS

    def cap_bytes(self) -> int | None:
        gb = self.plan["bandwidth_gb"]
        return None if gb is None else int(gb) * GIB  # type: ignore[call-overload]

    # ---------------------------------------------------------------- credentials

    def rotate_credentials(self) -> Credentials:
        """New password; the old one stays accepted for ``grace_seconds`` of world time."""
        now = self.clock.now()
        cred = self.credentials
        cred.previous = [(p, until) for p, until in cred.previous if until > now]
        cred.previous.append((cred.password, now + self.grace_seconds))
        cred.password = self.new_password()
        cred.rotated_at = now
        self.note("credentials_rotated", id=cred.id)
        self.emit(
            "credentials.rotated", {"object": "credentials", "id": cred.id, "rotated_at": iso(now)}
        )
        return cred

    def check_gateway_auth(self, username_base: str, password: str) -> bool:
        """Is this (base username, password) accepted by the gateway right now?"""
        import hmac

        cred = self.credentials
        if not hmac.compare_digest(username_base.encode(), cred.username.encode()):
            return False
        if self.clock.now() >= cred.expires_at:
            return False
        if hmac.compare_digest(password.encode(), cred.password.encode()):
            return True
        now = self.clock.now()
        return any(
            hmac.compare_digest(password.encode(), p.encode()) and now < until
            for p, until in cred.previous
        )

    # ---------------------------------------------------------------- pool

    def set_country_health(self, code: str, health: str) -> None:
        if code not in self.countries:
            raise KeyError(code)
        if health not in ("healthy", "down"):
            raise ValueError("a country is healthy or down")
        self.countries[code].pool_health = health
        self.note("country_health", country=code, health=health)

    def find_asn(self, asn: str) -> tuple[Country, Asn] | None:
        """``asn`` as "AS7922" or "7922"."""
        want = asn if asn.upper().startswith("AS") else f"AS{asn}"
        for code, asns in self.asns.items():
            for a in asns:
                if a.asn == want.upper():
                    return self.countries[code], a
        return None

    def set_asn_health(self, asn: str, health: str) -> None:
        found = self.find_asn(asn)
        if found is None:
            raise KeyError(asn)
        if health not in HEALTH_VALUES:
            raise ValueError(f"pool_health is one of {', '.join(HEALTH_VALUES)}")
        found[1].pool_health = health
        self.note("asn_health", asn=found[1].asn, health=health)

    def live_exits(
        self,
        country: str | None = None,
        city: str | None = None,
        asn: str | None = None,
        exit_class: str | None = None,
    ) -> list[Exit]:
        """Exits matching a targeting, leaving out down countries and down ASNs."""
        health = {a.asn: a.pool_health for asns in self.asns.values() for a in asns}
        out = []
        for ex in self.exits:
            if self.countries[ex.country].pool_health == "down":
                continue
            if health[ex.asn] == "down":
                continue
            if country is not None and ex.country != country:
                continue
            if city is not None and ex.city != city:
                continue
            if asn is not None and ex.asn != (asn if asn.startswith("AS") else f"AS{asn}"):
                continue
            if exit_class is not None and ex.exit_class != exit_class:
                continue
            out.append(ex)
        return out

    def asn_health(self, asn: str) -> str:
        found = self.find_asn(asn)
        return found[1].pool_health if found else "down"

    def exit_for_address(self, address: str) -> Exit | None:
        """The exit whose bind address a connection came from (the demo site's ``/ip``)."""
        return self.exits_by_bind.get(address)

    # ---------------------------------------------------------------- allowlist

    def source_allowed(self, address: str) -> bool:
        """An empty allowlist lets everyone in (credentials-only auth)."""
        mine = [e for e in self.allowlist if e.account_id == self.account.id]
        if not mine:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(e.cidr, strict=False) for e in mine)

    # ---------------------------------------------------------------- accounting

    def period_key(self, ts: float | None = None) -> str:
        d = datetime.fromtimestamp(self.clock.now() if ts is None else ts, tz=timezone.utc)
        return f"{d.year:04d}-{d.month:02d}"

    def add_usage(self, exit_class: str, country: str, nbytes: int) -> None:
        """Count bytes against the current period, and fire the 80 % / 100 % thresholds."""
        bucket = self.usage.setdefault(self.period_key(), {})
        bucket[("class", exit_class)] = bucket.get(("class", exit_class), 0) + nbytes
        bucket[("country", country)] = bucket.get(("country", country), 0) + nbytes
        self._check_thresholds()

    def add_usage_batch(self, amounts: Mapping[tuple[str, str], int]) -> None:
        """:meth:`add_usage` for many ``(exit_class, country) -> bytes`` at once, with one
        period lookup and one threshold check (the gateway's once-per-loop-turn flush)."""
        if not amounts:
            return
        bucket = self.usage.setdefault(self.period_key(), {})
        for (exit_class, country), nbytes in amounts.items():
            bucket[("class", exit_class)] = bucket.get(("class", exit_class), 0) + nbytes
            bucket[("country", country)] = bucket.get(("country", country), 0) + nbytes
        self._check_thresholds()

    def used_bytes(self, period: str | None = None) -> int:
        bucket = self.usage.get(period or self.period_key(), {})
        return sum(v for (kind, _), v in bucket.items() if kind == "class")

    def _check_thresholds(self) -> None:
        cap = self.cap_bytes()
        if not cap:
            return
        used = self.used_bytes()
        period = self.period_key()
        for pct in (80, 100):
            tag = f"{period}:{pct}"
            if used >= cap * pct / 100 and tag not in self._thresholds_fired:
                self._thresholds_fired.add(tag)
                self.emit(
                    f"usage.threshold.{pct}",
                    {
                        "object": "usage",
                        "period": period,
                        "total_bytes": used,
                        "cap_bytes": cap,
                        "threshold": pct,
                    },
                )

    def record_session(
        self,
        exit: Exit,
        started_at: float,
        ended_at: float,
        bytes_sent: int,
        bytes_recv: int,
        *,
        session_id: str | None = None,
        count_usage: bool = True,
    ) -> SessionRecord:
        """Record one finished gateway session (and, unless told not to, its bytes as usage).

        The gateway, which records one per request, passes a ``session_id`` of its own making
        (``new_id`` is too slow for its hot path) and ``count_usage=False`` when it batches
        the usage itself.
        """
        rec = SessionRecord(
            id=session_id or self.new_id("sess"),
            started_at=started_at,
            ended_at=ended_at,
            exit_ip=exit.ip,
            exit_class=exit.exit_class,
            exit_country=exit.country,
            exit_asn=exit.asn,
            bytes_sent=bytes_sent,
            bytes_recv=bytes_recv,
        )
        self.sessions.append(rec)
        if count_usage:
            self.add_usage(exit.exit_class, exit.country, bytes_sent + bytes_recv)
        return rec

    def recent_sessions(self) -> list[SessionRecord]:
        """Newest first, within the rolling 24 h window."""
        cutoff = self.clock.now() - 86400
        return [s for s in reversed(self.sessions) if s.ended_at >= cutoff]

    # ---------------------------------------------------------------- events

    def on_event(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` for every event emitted (the webhook deliverer subscribes)."""
        self._listeners.append(listener)

    def emit(self, type_: str, data: dict[str, object]) -> Event:
        if type_ not in protocol.WEBHOOK_EVENTS:
            raise ValueError(f"unknown event type {type_!r}")
        ev = Event(self.new_id("evt"), type_, self.clock.now(), data)
        self.events.append(ev)
        self.note("event", id=ev.id, type=type_)
        for listener in list(self._listeners):
            listener(ev)
        return ev

    def note(self, kind: str, **detail: object) -> None:
        """Record a line of the sandbox log."""
        self.log.append(Happening(self.clock.now(), kind, dict(detail)))

    def happenings(self, kinds: Iterable[str] | None = None) -> list[Happening]:
        wanted = set(kinds) if kinds is not None else None
        return [h for h in self.log if wanted is None or h.kind in wanted]
