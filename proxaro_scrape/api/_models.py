"""The objects the API returns, as read-only models with attribute access.

A model is built from the JSON object the API sent.  Its declared fields (class annotations)
are converted by type: timestamps become aware ``datetime`` objects, secrets (a gateway
``password``, a webhook ``secret``) become :class:`~proxaro_scrape._secrets.Secret`, nested
objects become models.  The reference promises additive changes only within v1, so a field this
version does not know is never an error: it is kept in :attr:`Model.extra` and reachable as an
attribute too (``country.new_field`` or ``country.extra["new_field"]``); its value never shows
in ``repr`` (only its name), and a string under a secret-sounding name is a :class:`Secret`.
A declared field the API left out reads as ``None``.

>>> usage = Usage.from_dict({"total_bytes": 12, "period_start": "2026-04-01T00:00:00Z"})
>>> usage.total_bytes, usage.period_start.tzinfo is not None
(12, True)
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar, Generic, TypeVar, Union

from proxaro_scrape._secrets import Secret

T = TypeVar("T")
M = TypeVar("M", bound="Model")
Converter = Callable[[Any], Any]


def parse_datetime(value: Any) -> datetime | Any:
    """``2026-04-22T14:30:00Z`` (or a UNIX timestamp) → an aware UTC ``datetime``.

    A value that is not a timestamp is returned unchanged rather than failing the whole object:
    one odd field must not make ``credentials.get()`` unusable.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return value
    if isinstance(value, str):
        text = value.strip()
        # Python 3.10's fromisoformat does not read the "Z" suffix.
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return value


#: Names of fields that hold a secret, whatever object they come in.
_SECRET_NAME = re.compile(r"secret|passw(or)?d|token|api_?key|private_?key", re.IGNORECASE)


def guard_unknown(name: str, value: Any) -> Any:
    """An unknown field's value, with any string under a secret-sounding name (``password``,
    ``signing_secret``, ``api_key``, ``token``...) wrapped as a :class:`Secret`, nested objects
    included: a field added to the API after this version must not print a secret."""
    if isinstance(value, str):
        return Secret(value) if _SECRET_NAME.search(name) else value
    if isinstance(value, Mapping):
        return {str(k): guard_unknown(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [guard_unknown(name, v) for v in value]
    return value


def _identity(value: Any) -> Any:
    return value


def _to_float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _to_secret(value: Any) -> Any:
    return Secret(value) if isinstance(value, str) else value


def _converter(hint: Any) -> Converter:
    """How to turn a JSON value into the declared type ``hint`` (tolerantly)."""
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _converter(args[0]) if len(args) == 1 else _identity
        return lambda v: None if v is None else inner(v)
    if origin is list:
        (arg,) = typing.get_args(hint) or (Any,)
        item = _converter(arg)
        return lambda v: [item(x) for x in v] if isinstance(v, list) else v
    if hint is datetime:
        return parse_datetime
    if hint is Secret:
        return _to_secret
    if hint is float:
        return _to_float
    if isinstance(hint, type) and issubclass(hint, Model):
        model = hint
        return lambda v: model.from_dict(v) if isinstance(v, Mapping) else v
    return _identity


class Model:
    """Base of every API object: read-only, attribute access, unknown fields kept.

    ``extra`` holds the fields this version of proxaro-scrape does not declare;
    :meth:`to_dict` gives back everything the API sent (secrets stay :class:`Secret`).
    """

    extra: dict[str, Any]
    _fields: ClassVar[dict[str, Converter] | None] = None

    def __init__(self, **fields: Any) -> None:
        conv = type(self)._field_converters()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in fields.items():
            if name in conv:
                values[name] = conv[name](value)
            else:
                extra[name] = guard_unknown(name, value)
        for name in conv:
            object.__setattr__(self, name, values.get(name))
        object.__setattr__(self, "extra", extra)
        # The raw object, in the API's order, with secrets already wrapped.
        self.__dict__["_raw"] = {
            k: (values[k] if isinstance(values.get(k), Secret) else extra.get(k, v))
            for k, v in fields.items()
        }

    @classmethod
    def _field_converters(cls) -> dict[str, Converter]:
        # Resolved lazily (on first use) so that annotations may name models defined later.
        found = cls.__dict__.get("_fields")
        if found is None:
            hints = typing.get_type_hints(cls)
            found = {
                name: _converter(hint)
                for name, hint in hints.items()
                if not name.startswith("_")
                and name != "extra"
                and typing.get_origin(hint) is not ClassVar
            }
            cls._fields = found
        return found

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any]) -> M:
        """Build the model from a JSON object as the API sent it."""
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__} is built from a JSON object, not {type(data)}")
        return cls(**{str(k): v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """Every field the API sent (declared and unknown), secrets as :class:`Secret`."""
        return dict(self.__dict__["_raw"])

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup failed: fields the API added after this version.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} objects are read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} objects are read-only")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("extra", {})))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(self.__dict__["_raw"] == other.__dict__["_raw"])

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # Secrets are Secret objects here, whose repr is masked.
        conv = type(self)._field_converters()
        raw = self.__dict__["_raw"]
        parts = [f"{name}={getattr(self, name)!r}" for name in conv if name in raw]
        if self.extra:
            # Names only: a field this version does not know may hold anything.
            parts.append(f"extra_fields={tuple(self.extra)!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# ---------------------------------------------------------------------------- account


class AccountPlan(Model):
    """The plan block of ``GET /v1/me``."""

    id: str
    name: str
    status: str
    current_period_end: datetime | None


class Account(Model):
    """``GET /v1/me``: the account tied to the key, with its active plan."""

    object: str
    id: str
    email: str
    created_at: datetime
    plan: AccountPlan | None


class UsageBreakdown(Model):
    """One row of a usage breakdown: by ``exit_class`` or by ``country`` (per ``group_by``)."""

    exit_class: str | None
    country: str | None
    bytes: int


class Usage(Model):
    """``GET /v1/usage``: bandwidth in bytes for a billing period."""

    object: str
    period_start: datetime
    period_end: datetime
    total_bytes: int
    cap_bytes: int | None
    breakdown: list[UsageBreakdown]

    @property
    def fraction_used(self) -> float | None:
        """``total_bytes / cap_bytes`` (``None`` without a cap)."""
        if not self.cap_bytes or self.total_bytes is None:
            return None
        return self.total_bytes / self.cap_bytes


class Order(Model):
    """An order from ``GET /v1/orders``."""

    object: str
    id: str
    plan_id: str
    amount_usd: float
    status: str
    payment_method: str
    created_at: datetime
    paid_at: datetime | None


class Plan(Model):
    """A plan of the public catalog (``GET /v1/plans``); ``None`` prices mean "custom"."""

    id: str
    name: str
    price_usd: float | None
    bandwidth_gb: float | None


# ---------------------------------------------------------------------------- gateway


class Credentials(Model):
    """``GET /v1/credentials``: what scrapers use to connect to the gateway.

    ``password`` is a :class:`Secret`: ``credentials.password.reveal()`` gives the value.
    """

    object: str
    id: str
    gateway: str
    port: int
    username: str
    password: Secret
    bandwidth_gb_cap: float | None
    bandwidth_gb_used: float | None
    expires_at: datetime | None
    rotated_at: datetime | None


class RotatedCredentials(Model):
    """``POST /v1/credentials/rotate``: the new password; the old one lapses within 60 s."""

    object: str
    id: str
    rotated_at: datetime
    password: Secret


class GatewaySession(Model):
    """One gateway session from ``GET /v1/sessions`` (observability, not billing)."""

    object: str
    id: str
    started_at: datetime
    ended_at: datetime | None
    exit_ip: str
    exit_class: str
    exit_country: str
    exit_asn: str
    bytes_sent: int
    bytes_recv: int


# ---------------------------------------------------------------------------- network


class Country(Model):
    """A country with live coverage (``GET /v1/countries``).

    ``pool_health`` is an additive field the sandbox sends (``"healthy"`` or ``"down"``); it
    reads ``None`` when the API does not send it.
    """

    object: str
    code: str
    name: str
    continent: str
    exit_classes: list[str]
    cities_available: int
    estimated_pool_size: int
    pool_health: str | None


class Asn(Model):
    """An ASN of a country (``GET /v1/countries/{code}/asns``)."""

    object: str
    asn: str
    org: str
    exit_class: str
    pool_health: str | None


# ---------------------------------------------------------------------------- allowlist


class AllowlistEntry(Model):
    """A source IP or CIDR allowed to authenticate against the gateway."""

    object: str
    id: str
    cidr: str
    label: str | None
    created_at: datetime


class Deleted(Model):
    """The answer to a delete: ``{"object": ..., "id": ..., "deleted": true}``."""

    object: str
    id: str
    deleted: bool


# ---------------------------------------------------------------------------- webhooks


class Webhook(Model):
    """A webhook endpoint.  ``secret`` (a :class:`Secret`) is only sent on creation and rotation."""

    object: str
    id: str
    url: str
    events: list[str]
    label: str | None
    secret: Secret | None
    created_at: datetime


class WebhookAttempt(Model):
    """One delivery attempt of an event to a webhook (``GET /v1/webhooks/{id}/attempts``)."""

    object: str
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    attempt: int
    attempted_at: datetime
    status: int | None
    ok: bool
    error: str | None
    next_retry_at: datetime | None


class APIStatus(Model):
    """``GET /v1/status``: the API is healthy when it answers 200."""

    object: str
    status: str


# ---------------------------------------------------------------------------- pages


class Page(Generic[T]):
    """One page of a paginated list: ``data``, ``has_more``, ``next_cursor``.

    Iterating a page gives its items; ``extra`` keeps list-level fields this version does not
    know.
    """

    __slots__ = ("data", "extra", "has_more", "next_cursor")

    def __init__(
        self,
        data: list[T],
        has_more: bool = False,
        next_cursor: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.data = data
        self.has_more = has_more
        self.next_cursor = next_cursor
        self.extra = extra or {}

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> T:
        return self.data[index]

    def __repr__(self) -> str:
        return (
            f"Page(len={len(self.data)}, has_more={self.has_more}, "
            f"next_cursor={self.next_cursor!r})"
        )
