"""Proxaro webhooks: verify the signature, parse the event, drop duplicates, receive and dispatch.

Proxaro delivers every event at least once, with exponential backoff for up to 24 hours, as an
HTTPS ``POST`` whose body is one JSON event and whose ``X-NB-Signature`` header is the hex
HMAC-SHA256 of the raw body under the endpoint's secret::

    {
      "object": "event",
      "id": "evt_01HVQ...",
      "type": "credentials.rotated",
      "created_at": "2026-04-22T14:30:00Z",
      "data": {"object": "credentials", "id": "cred_01HVQ...", "rotated_at": "2026-04-22T14:30:00Z"}
    }

``data`` is the object concerned (an order, the credentials, the usage, an allowlist entry);
a gateway password never appears in an event.

The pieces, from the smallest:

- :func:`verify_signature` is exactly the reference's Node snippet (constant-time comparison of
  lower-case hex digests), returning ``False`` for anything that does not match.
- :func:`parse_event` turns a body into a :class:`WebhookEvent`; :func:`verify_event` does both.
- :class:`EventDeduplicator` remembers the last event ids (bounded, LRU), since at-least-once
  delivery means the same event can arrive twice.
- :class:`WebhookReceiver` is an ``aiohttp.web`` application (and an ASGI callable) that does
  all of the above, answers at once, and runs the handlers after the answer.
  :meth:`WebhookReceiver.attach` wires it to a :class:`~proxaro_scrape.GatewayManager`.
- :func:`listen` runs a receiver until interrupted (``proxaro-scrape webhooks listen``).

Example::

    receiver = WebhookReceiver(os.environ["PROXARO_WEBHOOK_SECRET"])
    receiver.attach(manager)                      # rotation, usage thresholds, allowlist

    @receiver.on("order.paid")
    async def paid(event: WebhookEvent) -> None:
        print("paid:", event.order.id if event.order else event.data)

    await receiver.start("0.0.0.0", 8443, ssl_context=ctx)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import inspect
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import ConfigurationError, WebhookPayloadError, WebhookSignatureError

if TYPE_CHECKING:
    import ssl

    from aiohttp import web

__all__ = [
    "MANAGER_EVENTS",
    "SIGNATURE_HEADER",
    "WEBHOOK_EVENTS",
    "AllowlistChange",
    "CredentialsRotated",
    "EventDeduplicator",
    "OrderChange",
    "UsageThreshold",
    "WebhookEvent",
    "WebhookReceiver",
    "alisten",
    "compute_signature",
    "listen",
    "parse_event",
    "verify_event",
    "verify_signature",
]

logger = logging.getLogger("proxaro_scrape.webhooks")

#: The header that carries the signature.
SIGNATURE_HEADER = protocol.SIGNATURE_HEADER
#: Every event type of the reference's table.
WEBHOOK_EVENTS = protocol.WEBHOOK_EVENTS
#: The event types a :class:`~proxaro_scrape.GatewayManager` acts on (see
#: :meth:`WebhookReceiver.attach`).
MANAGER_EVENTS: tuple[str, ...] = (
    "credentials.rotated",
    "usage.threshold.80",
    "usage.threshold.100",
    "allowlist.updated",
)

#: Largest body the receiver reads; a Proxaro event is a few hundred bytes.
MAX_BODY_BYTES = 1024 * 1024

SecretLike = str | Secret
#: A handler takes the event; it may be a plain function or a coroutine function.
Handler = Callable[["WebhookEvent"], Any]


# ---------------------------------------------------------------------------- signatures


def _secret_bytes(secret: object) -> bytes | None:
    if isinstance(secret, Secret):
        secret = secret.reveal()
    if not isinstance(secret, str) or not secret:
        return None
    return secret.encode("utf-8")


def compute_signature(body: bytes, secret: SecretLike) -> str:
    """The ``X-NB-Signature`` value for ``body``: lower-case hex HMAC-SHA256 under ``secret``.

    What Proxaro sends; useful to sign test deliveries.  Raises :class:`ConfigurationError` for
    an empty secret.
    """
    key = _secret_bytes(secret)
    if key is None:
        raise ConfigurationError("a webhook secret is a non-empty str", param="secret")
    return hmac.new(key, bytes(body), hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str, secret: SecretLike) -> bool:
    """Does ``header`` sign ``body`` under ``secret``?  Exactly the reference's Node snippet.

    The expected value is the lower-case hex HMAC-SHA256 of the raw body, compared with the
    header byte for byte in constant time.  So an upper-case hex header does *not* verify (the
    snippet compares the two strings, not the digests), nor does one with a ``sha256=`` prefix
    or surrounding spaces.  Returns ``False``, never raises, for any mismatch or bad input:
    an empty, short, long, non-hex, non-ASCII or non-``str`` header, a non-bytes body, an empty
    or non-``str`` secret.

    >>> verify_signature(b"{}", compute_signature(b"{}", "whsec_test_x"), "whsec_test_x")
    True
    """
    try:
        if not isinstance(header, str) or not header:
            return False
        if isinstance(body, str):
            body = body.encode("utf-8")  # Node's update(string) hashes the UTF-8 bytes too
        if not isinstance(body, (bytes, bytearray, memoryview)):
            return False
        key = _secret_bytes(secret)
        if key is None:
            return False
        expected = hmac.new(key, bytes(body), hashlib.sha256).hexdigest().encode("ascii")
        # Compare bytes, not str: compare_digest refuses non-ASCII str, and a header with
        # non-ASCII characters must simply not match.
        given = header.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(expected, given)
    except Exception:  # noqa: BLE001 - the contract is "False, never raises"
        return False


# ---------------------------------------------------------------------------- events


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True)
class CredentialsRotated:
    """``data`` of ``credentials.rotated``: which credentials, and when.  Never the password."""

    id: str | None
    rotated_at: datetime | None


@dataclass(frozen=True)
class UsageThreshold:
    """``data`` of ``usage.threshold.80`` / ``.100``: the percentage crossed and the usage."""

    threshold: int
    period: str | None
    total_bytes: int | None
    cap_bytes: int | None


@dataclass(frozen=True)
class OrderChange:
    """``data`` of ``order.paid`` / ``order.expired``: the order as ``GET /v1/orders`` shows it."""

    id: str | None
    status: str | None
    plan_id: str | None
    amount_usd: float | None
    payment_method: str | None
    created_at: datetime | None
    paid_at: datetime | None


@dataclass(frozen=True)
class AllowlistChange:
    """``data`` of ``allowlist.updated``: the entry, and whether it was added or removed."""

    id: str | None
    cidr: str | None
    label: str | None
    action: str | None  # "added" | "removed" when the sender says
    deleted: bool


@dataclass(frozen=True)
class WebhookEvent:
    """One Proxaro event, parsed.

    ``id``, ``type``, ``created_at`` (aware UTC datetime) and ``data`` (the object concerned,
    a dict) are always there.  ``known`` is ``False`` for a type this version does not know:
    such events are still delivered to handlers (the API only ever adds), but flagged and
    logged.  ``payload`` is the whole decoded body.  Typed views of ``data``: :attr:`order`,
    :attr:`credentials`, :attr:`usage`, :attr:`allowlist` (``None`` for other types).
    """

    id: str
    type: str
    created_at: datetime
    data: Mapping[str, Any]
    payload: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def known(self) -> bool:
        """Is ``type`` one of the reference's event types?"""
        return self.type in WEBHOOK_EVENTS

    @property
    def credentials(self) -> CredentialsRotated | None:
        """The rotated credentials, for ``credentials.rotated``."""
        if self.type != "credentials.rotated":
            return None
        return CredentialsRotated(_str(self.data, "id"), _parse_time(self.data.get("rotated_at")))

    @property
    def usage(self) -> UsageThreshold | None:
        """The threshold crossed and the usage, for ``usage.threshold.*``."""
        prefix = "usage.threshold."
        if not self.type.startswith(prefix):
            return None
        # The type is authoritative for the percentage; data may repeat it.
        suffix = self.type[len(prefix) :]
        threshold = int(suffix) if suffix.isdigit() else (_int(self.data, "threshold") or 0)
        return UsageThreshold(
            threshold,
            _str(self.data, "period"),
            _int(self.data, "total_bytes"),
            _int(self.data, "cap_bytes"),
        )

    @property
    def order(self) -> OrderChange | None:
        """The order, for ``order.paid`` and ``order.expired``."""
        if not self.type.startswith("order."):
            return None
        d = self.data
        return OrderChange(
            _str(d, "id"),
            _str(d, "status"),
            _str(d, "plan_id"),
            _float(d, "amount_usd"),
            _str(d, "payment_method"),
            _parse_time(d.get("created_at")),
            _parse_time(d.get("paid_at")),
        )

    @property
    def allowlist(self) -> AllowlistChange | None:
        """The allowlist entry added or removed, for ``allowlist.updated``."""
        if self.type != "allowlist.updated":
            return None
        d = self.data
        action = _str(d, "action")
        deleted = d.get("deleted") is True or action == "removed"
        return AllowlistChange(_str(d, "id"), _str(d, "cidr"), _str(d, "label"), action, deleted)


def parse_event(body: bytes | str | Mapping[str, Any]) -> WebhookEvent:
    """A :class:`WebhookEvent` from a raw body (or an already decoded dict).

    Does not verify anything: use :func:`verify_event` on untrusted input.  Raises
    :class:`~proxaro_scrape.errors.WebhookPayloadError` when the body is not JSON, not an
    object, or lacks a non-empty ``id``/``type``, an ISO-8601 ``created_at`` or an object
    ``data``.  Unknown keys are kept in ``payload`` and otherwise ignored.
    """
    if isinstance(body, Mapping):
        payload: Any = body
    else:
        try:
            payload = json.loads(body)
        except (ValueError, TypeError) as exc:
            raise WebhookPayloadError(f"the body is not JSON: {exc}") from None
    if not isinstance(payload, Mapping):
        raise WebhookPayloadError("the body is not a JSON object")
    obj = payload.get("object", "event")
    if obj != "event":
        raise WebhookPayloadError(f"object is {obj!r}, not 'event'")
    event_id, type_ = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookPayloadError("the event has no id")
    if not isinstance(type_, str) or not type_:
        raise WebhookPayloadError("the event has no type")
    created_at = _parse_time(payload.get("created_at"))
    if created_at is None:
        raise WebhookPayloadError("created_at is not an ISO-8601 time")
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise WebhookPayloadError("data is not an object")
    return WebhookEvent(event_id, type_, created_at, data, payload)


def verify_event(
    body: bytes, header: str | None, secret: SecretLike | Iterable[SecretLike]
) -> WebhookEvent:
    """Verify ``header`` against ``body``, then parse it: for receivers in other frameworks.

    ``secret`` may be several secrets (during a rotation, old and new): any one verifies.
    Raises :class:`~proxaro_scrape.errors.WebhookSignatureError` (missing or bad signature) or
    :class:`~proxaro_scrape.errors.WebhookPayloadError`.
    """
    if not header:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} header")
    if not any(verify_signature(body, header, s) for s in _secrets(secret)):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body")
    return parse_event(body)


def _secrets(secret: SecretLike | Iterable[SecretLike]) -> tuple[Secret, ...]:
    items = [secret] if isinstance(secret, (str, Secret)) else list(secret)
    out = []
    for item in items:
        if not isinstance(item, (str, Secret)) or not item:
            raise ConfigurationError("a webhook secret is a non-empty str", param="secret")
        out.append(item if isinstance(item, Secret) else Secret(item))
    if not out:
        raise ConfigurationError("at least one webhook secret is needed", param="secret")
    return tuple(out)


# ---------------------------------------------------------------------------- deduplication


class EventDeduplicator:
    """Remembers the last ``maxsize`` event ids (least recently seen forgotten first).

    Delivery is at least once, so the same event may arrive more than once (a lost answer, a
    retry racing a slow answer).  Thread-safe.

    >>> d = EventDeduplicator(maxsize=2)
    >>> d.seen("evt_1"), d.seen("evt_1")
    (False, True)
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError("maxsize must be a positive int", param="maxsize")
        self.maxsize = maxsize
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, event_id: str) -> bool:
        """``True`` if ``event_id`` was seen before; otherwise remember it and return ``False``."""
        with self._lock:
            if event_id in self._ids:
                self._ids.move_to_end(event_id)
                return True
            self._ids[event_id] = None
            if len(self._ids) > self.maxsize:
                self._ids.popitem(last=False)
            return False

    def forget(self, event_id: str) -> None:
        """Forget ``event_id`` (so that a redelivery is handled again)."""
        with self._lock:
            self._ids.pop(event_id, None)

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            return event_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __repr__(self) -> str:
        return f"<EventDeduplicator {len(self)}/{self.maxsize}>"


# ---------------------------------------------------------------------------- receiver


@dataclass(frozen=True)
class _Verdict:
    status: int
    body: dict[str, Any]
    event: WebhookEvent | None = None


@dataclass(frozen=True)
class _Registration:
    fn: Handler
    mode: str  # "async" | "thread" | "inline"


class WebhookReceiver:
    """Receives Proxaro webhooks: verify, deduplicate, answer at once, then dispatch.

    ``secret`` is the endpoint's secret, or several (old and new while you roll a rotation
    out): a delivery verified by any of them is accepted.  It is held as a
    :class:`~proxaro_scrape._secrets.Secret`.

    For every ``POST`` (any path, unless ``path`` is given):

    - no ``X-NB-Signature`` → 400 ``missing_signature``; a signature that does not match the
      raw body → 400 ``invalid_signature``.  No handler runs.
    - a verified body that is not an event → 400 ``invalid_payload``.
    - an event id seen before (the last ``dedupe_size`` ids) → 200 ``{"duplicate": true}``,
      no handler runs again.
    - otherwise → 200, and the event goes to the handlers in a task of its own, off the
      response path: the answer never waits for a handler, and an exception in a handler is
      logged, never turned into a retry.

    Handlers (:meth:`on`) take the :class:`WebhookEvent`; an event's handlers run one after
    the other, in registration order.  Coroutine functions run on the receiver's loop; plain
    functions run in one worker thread (one at a time), so a slow or blocking handler never
    stalls the loop; ``inline=True`` handlers are called on the loop directly (they must not
    block).  Events are not ordered: Proxaro's deliveries are concurrent and retried anyway.

    Serve it with :meth:`start` / :meth:`close` (or ``async with receiver.serve(...)``), mount
    :attr:`app` in your own ``aiohttp`` server, or hand :meth:`asgi` to an ASGI server.
    """

    def __init__(
        self,
        secret: SecretLike | Iterable[SecretLike],
        handlers: Mapping[str, Handler | Iterable[Handler]] | None = None,
        *,
        path: str | None = None,
        dedupe_size: int = 10_000,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._secrets = _secrets(secret)
        self.path = path
        self.max_body_bytes = max_body_bytes
        self.dedupe = EventDeduplicator(dedupe_size)
        self._handlers: dict[str, list[_Registration]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None
        self._warned_types: set[str] = set()
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "received",
                "accepted",
                "duplicates",
                "missing_signature",
                "invalid_signature",
                "invalid_payload",
                "unknown_types",
                "handled",
                "handler_errors",
            ),
            0,
        )
        self.url: str | None = None
        self.port: int | None = None
        for type_, fns in (handlers or {}).items():
            for fn in [fns] if callable(fns) else list(fns):
                self.on(type_, fn)

    def __repr__(self) -> str:
        where = self.url or "not serving"
        return (
            f"<WebhookReceiver {where} secrets={len(self._secrets)} types={sorted(self._handlers)}>"
        )

    # ------------------------------------------------------------------ handlers

    def on(self, event_type: str, handler: Handler | None = None, *, inline: bool = False) -> Any:
        """Call ``handler(event)`` for every new event of ``event_type`` (``"*"``: all events).

        Usable as a decorator: ``@receiver.on("order.paid")``.  Returns the handler.
        """
        if not isinstance(event_type, str) or not event_type:
            raise ConfigurationError("event_type is an event name or '*'", param="event_type")

        def register(fn: Handler) -> Handler:
            if not callable(fn):
                raise ConfigurationError("a handler is callable", param="handler")
            if inspect.iscoroutinefunction(fn):
                mode = "async"
            else:
                mode = "inline" if inline else "thread"
            self._handlers.setdefault(event_type, []).append(_Registration(fn, mode))
            return fn

        return register if handler is None else register(handler)

    def attach(self, manager: Any) -> None:
        """Drive ``manager`` (a :class:`~proxaro_scrape.GatewayManager`) with its events.

        ``credentials.rotated`` makes it fetch the new credentials at once (instead of at the
        next poll or the next 407), ``usage.threshold.80``/``.100`` feed its usage guard and
        ``allowlist.updated`` is logged: each is passed to ``manager.handle_event(event)``,
        which is non-blocking, so it is called on the receiver's loop without a thread hop.
        """
        handle = getattr(manager, "handle_event", None)
        if not callable(handle):
            raise ConfigurationError("the manager has no handle_event(event)", param="manager")

        def to_manager(event: WebhookEvent) -> Any:
            return handle(event)

        for type_ in MANAGER_EVENTS:
            self.on(type_, to_manager, inline=True)

    def secrets_count(self) -> int:
        """How many secrets verify (the secrets themselves are never exposed)."""
        return len(self._secrets)

    def set_secrets(self, secret: SecretLike | Iterable[SecretLike]) -> None:
        """Replace the accepted secrets (after ``POST /v1/webhooks/{id}/rotate``)."""
        self._secrets = _secrets(secret)

    def stats(self) -> dict[str, int]:
        """Counts: ``received``, ``accepted``, ``duplicates``, ``missing_signature``,
        ``invalid_signature``, ``invalid_payload``, ``unknown_types``, ``handled``,
        ``handler_errors``."""
        return dict(self._stats)

    # ------------------------------------------------------------------ the decision

    def accept(self, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        """Decide on one delivery and schedule its handlers; returns ``(status, json body)``.

        The framework-independent core of the receiver, for mounting it elsewhere: call it
        from a coroutine on the loop the handlers should run on.
        """
        verdict = self._decide(body, signature)
        if verdict.event is not None:
            self._schedule(verdict.event)
        return verdict.status, verdict.body

    def _decide(self, body: bytes, signature: str | None) -> _Verdict:
        self._stats["received"] += 1
        if not signature:
            self._stats["missing_signature"] += 1
            logger.warning("webhook rejected: no %s header", SIGNATURE_HEADER)
            return _Verdict(400, {"error": "missing_signature"})
        if not any(verify_signature(body, signature, s) for s in self._secrets):
            self._stats["invalid_signature"] += 1
            logger.warning("webhook rejected: %s does not match the body", SIGNATURE_HEADER)
            return _Verdict(400, {"error": "invalid_signature"})
        try:
            event = parse_event(body)
        except WebhookPayloadError as exc:
            self._stats["invalid_payload"] += 1
            logger.warning("webhook rejected: %s", exc)
            return _Verdict(400, {"error": "invalid_payload", "message": str(exc)})
        # Only verified events reach the cache, so forged requests cannot evict real ids.
        if self.dedupe.seen(event.id):
            self._stats["duplicates"] += 1
            logger.debug("webhook %s (%s) is a duplicate", event.id, event.type)
            return _Verdict(200, {"received": True, "id": event.id, "duplicate": True})
        self._stats["accepted"] += 1
        if not event.known:
            self._stats["unknown_types"] += 1
            if event.type not in self._warned_types and len(self._warned_types) < 100:
                self._warned_types.add(event.type)
                logger.warning("webhook event of unknown type %r (delivered anyway)", event.type)
        logger.debug("webhook %s (%s) accepted", event.id, event.type)
        return _Verdict(200, {"received": True, "id": event.id, "duplicate": False}, event)

    def _schedule(self, event: WebhookEvent) -> None:
        regs = self._handlers.get(event.type, []) + self._handlers.get("*", [])
        if not regs:
            return
        task = asyncio.get_running_loop().create_task(self._dispatch(event, regs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, event: WebhookEvent, regs: list[_Registration]) -> None:
        loop = asyncio.get_running_loop()
        for reg in regs:
            try:
                if reg.mode == "thread":
                    if self._worker is None:
                        self._worker = concurrent.futures.ThreadPoolExecutor(
                            max_workers=1, thread_name_prefix="proxaro-webhooks"
                        )
                    result = await loop.run_in_executor(self._worker, reg.fn, event)
                else:
                    result = reg.fn(event)
                if inspect.isawaitable(result):
                    await result
                self._stats["handled"] += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self._stats["handler_errors"] += 1
                logger.exception(
                    "webhook handler %s failed on %s (%s)",
                    getattr(reg.fn, "__qualname__", reg.fn),
                    event.id,
                    event.type,
                )

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every handler scheduled so far has finished (or ``timeout`` passes)."""
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    # ------------------------------------------------------------------ aiohttp

    @property
    def app(self) -> web.Application:
        """The receiver as an ``aiohttp.web.Application`` (built once)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A new ``aiohttp.web.Application`` serving this receiver."""
        from aiohttp import web

        app = web.Application(client_max_size=self.max_body_bytes)
        if self.path is None:
            app.router.add_route("POST", "/{tail:.*}", self._aiohttp_handler)
        else:
            app.router.add_route("POST", self.path, self._aiohttp_handler)
        return app

    async def _aiohttp_handler(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = await request.read()  # raises 413 beyond client_max_size
        status, payload = self.accept(body, request.headers.get(SIGNATURE_HEADER))
        return web.json_response(payload, status=status)

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> str:
        """Serve on ``host:port`` (``port=0``: a free port) and return the URL.

        Proxaro delivers over HTTPS only: pass ``ssl_context`` unless TLS ends in front of
        this process.  ``.url`` and ``.port`` are set once it listens.
        """
        from aiohttp import web

        if self._runner is not None:
            raise RuntimeError("the receiver is already serving")
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.port = int(bound[1])
        scheme = "https" if ssl_context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}{self.path or '/'}"
        logger.info("webhook receiver listening on %s", self.url)
        return self.url

    async def close(self, timeout: float = 10.0) -> None:
        """Stop serving, let running handlers finish (up to ``timeout``), then cancel them."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.url = None
        await self.drain(timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=False)

    @contextlib.asynccontextmanager
    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncIterator[WebhookReceiver]:
        """``async with receiver.serve(host, port, ssl_context=ctx):`` start, then close."""
        await self.start(host, port, ssl_context=ssl_context)
        try:
            yield self
        finally:
            await self.close()

    # ------------------------------------------------------------------ ASGI

    async def asgi(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Mapping[str, Any]], Awaitable[None]],
    ) -> None:
        """The receiver as an ASGI 3 application (``uvicorn mod:receiver.asgi``)."""
        kind = scope.get("type")
        if kind == "lifespan":
            while True:
                message = await receive()
                if message.get("type") == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message.get("type") == "lifespan.shutdown":
                    await self.drain(10.0)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        if scope.get("method") != "POST" or (
            self.path is not None and scope.get("path") != self.path
        ):
            status = 405 if scope.get("method") != "POST" else 404
            await _asgi_json(
                send, status, {"error": "method_not_allowed" if status == 405 else "not_found"}
            )
            return
        header: str | None = None
        wanted = SIGNATURE_HEADER.lower().encode("latin-1")
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() == wanted:
                header = bytes(value).decode("latin-1")
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _asgi_json(send, 413, {"error": "body_too_large"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        status, payload = self.accept(b"".join(chunks), header)
        await _asgi_json(send, status, payload)


async def _asgi_json(
    send: Callable[[Mapping[str, Any]], Awaitable[None]], status: int, payload: Mapping[str, Any]
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------- listen (CLI)


async def alisten(
    secret: SecretLike | Iterable[SecretLike],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    on_event: Handler | None = None,
    on_ready: Callable[[str], Any] | None = None,
    stop: asyncio.Event | threading.Event | None = None,
    path: str | None = None,
) -> None:
    """Serve a receiver until ``stop`` is set (or the task is cancelled).

    ``on_event(event)`` runs for every verified, new event (in the receiver's worker thread
    if it is a plain function); ``on_ready(url)`` once it listens.
    """
    receiver = WebhookReceiver(secret, path=path)
    if on_event is not None:
        receiver.on("*", on_event)
    async with receiver.serve(host, port, ssl_context=ssl_context):
        if on_ready is not None:
            on_ready(receiver.url or "")
        while True:
            if isinstance(stop, asyncio.Event):
                await stop.wait()
                return
            if stop is not None and stop.is_set():
                return
            await asyncio.sleep(0.2)


def listen(
    secret: SecretLike | Iterable[SecretLike],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    on_event: Handler | None = None,
    on_ready: Callable[[str], Any] | None = None,
    stop: threading.Event | None = None,
    path: str | None = None,
) -> None:
    """Run a receiver in the foreground until Ctrl+C (or ``stop`` is set).

    What ``proxaro-scrape webhooks listen`` calls: for example
    ``listen(secret, port=8443, ssl_context=ctx, on_event=lambda e: print(e.id, e.type))``.
    """
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            alisten(
                secret,
                host=host,
                port=port,
                ssl_context=ssl_context,
                on_event=on_event,
                on_ready=on_ready,
                stop=stop,
                path=path,
            )
        )
