"""The sandbox world: a deterministic synthetic Proxaro account, pool and gateway state.

One :class:`World` is shared by the sandbox's API emulator, its gateway and its demo site.
Everything in it is generated from a seed (:mod:`proxaro_scrape.sandbox._generate`), so two
sandboxes with the same seed agree on every country, ASN, exit, order and credential.  Time is
read from a :class:`Clock` (:mod:`proxaro_scrape.sandbox._clock`) that tests and demos may
speed up or advance, so that grace periods, sticky-session lifetimes and webhook backoff never
make a test sleep for real minutes.  The records it holds are the plain dataclasses of
:mod:`proxaro_scrape.sandbox._model`, re-exported here.

The world is mutated only on the sandbox's event loop (the API controls, the gateway and the
site all run there), so it needs no locks.
"""

from __future__ import annotations

import hmac
import ipaddress
import random
import string
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone

from proxaro_scrape import protocol
from proxaro_scrape.sandbox._clock import Clock, iso
from proxaro_scrape.sandbox._generate import generate_orders, generate_pool, generate_usage
from proxaro_scrape.sandbox._model import (
    ASN_PLANS,
    GIB,
    HEALTH_VALUES,
    KEY_SCOPES,
    PLAN_IDS,
    PLANS,
    RATE_LIMITS,
    Account,
    AllowlistEntry,
    ApiKey,
    Asn,
    Country,
    Credentials,
    Event,
    Exit,
    Happening,
    Knobs,
    Order,
    SessionRecord,
    WebhookAttempt,
    WebhookEndpoint,
    slug,
)

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
    "Clock",
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
    "World",
    "iso",
    "slug",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


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
        pool = generate_pool(seed, exits_per_asn)
        self.countries: dict[str, Country] = pool.countries
        self.asns: dict[str, list[Asn]] = pool.asns
        self.exits: list[Exit] = pool.exits
        self.exits_by_bind: dict[str, Exit] = pool.exits_by_bind
        self.orders: list[Order] = generate_orders(
            seed, self.account, self.other_account, now, self.new_id
        )
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
        self.usage: dict[str, dict[tuple[str, str], int]] = generate_usage(
            seed, start, self.cap_bytes()
        )
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
        """A gateway password: three groups of five letters or digits joined by ``-``, plus one."""
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

    # ---------------------------------------------------------------- plan and account

    @property
    def plan(self) -> dict[str, object]:
        """The account's plan, as ``GET /v1/plans`` lists it."""
        return next(p for p in PLANS if p["id"] == self.account.plan_id)

    def set_plan(self, plan_id: str) -> None:
        """Move the account to another plan (a control; ``ValueError`` for an unknown one)."""
        if plan_id not in PLAN_IDS:
            raise ValueError(f"unknown plan {plan_id!r}; expected one of {', '.join(PLAN_IDS)}")
        self.account.plan_id = plan_id
        self.note("plan_changed", plan=plan_id)

    def asn_allowed(self) -> bool:
        """ASN targeting and listing need Growth or above."""
        return self.account.plan_id in ASN_PLANS

    def cap_bytes(self) -> int | None:
        """The plan's monthly bandwidth in bytes (``None``: no cap, the Network plan)."""
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
        """Take a country's whole pool down, or bring it back (``healthy`` / ``down``)."""
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
        """Set one ASN's ``pool_health`` (``healthy``, ``degraded`` or ``down``)."""
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
        """An ASN's ``pool_health``; an unknown ASN is ``down``."""
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
        """The billing period (``YYYY-MM``) of ``ts``, by default of world time now."""
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
        """Bytes used in ``period`` (``YYYY-MM``, by default the current one)."""
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
        """Record a webhook event and hand it to every listener (``ValueError`` if unknown)."""
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
        """The sandbox log, oldest first, only of ``kinds`` when given."""
        wanted = set(kinds) if kinds is not None else None
        return [h for h in self.log if wanted is None or h.kind in wanted]
