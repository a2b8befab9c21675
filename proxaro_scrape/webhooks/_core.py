"""The receiver's core: decide on a delivery, register handlers, dispatch, drive a manager.

No web framework here.  :class:`ReceiverCore` takes a raw body and the signature header and
answers ``(status, json body)``; whatever serves HTTP (the aiohttp server, the ASGI adapter,
a user's own framework) only reads the request and writes that answer back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxaro_scrape.errors import ConfigurationError, WebhookBodyError, WebhookPayloadError
from proxaro_scrape.webhooks._body import MAX_BODY_BYTES, check_size
from proxaro_scrape.webhooks._dedupe import EventDeduplicator
from proxaro_scrape.webhooks._events import WebhookEvent, parse_event
from proxaro_scrape.webhooks._signature import (
    SIGNATURE_HEADER,
    SecretLike,
    as_secrets,
    verify_signature,
)

__all__ = ["MANAGER_EVENTS", "MAX_BODY_BYTES", "Handler", "ReceiverCore"]

logger = logging.getLogger("proxaro_scrape.webhooks")

#: The event types a :class:`~proxaro_scrape.GatewayManager` acts on (see
#: :meth:`ReceiverCore.attach`).
MANAGER_EVENTS: tuple[str, ...] = (
    "credentials.rotated",
    "usage.threshold.80",
    "usage.threshold.100",
    "allowlist.updated",
)

#: A handler takes the event; it may be a plain function or a coroutine function.
Handler = Callable[[WebhookEvent], Any]

_STAT_KEYS = (
    "received",
    "accepted",
    "duplicates",
    "missing_signature",
    "invalid_signature",
    "invalid_payload",
    "unknown_types",
    "handled",
    "handler_errors",
)


@dataclass(frozen=True)
class _Verdict:
    status: int
    body: dict[str, Any]
    event: WebhookEvent | None = None


@dataclass(frozen=True)
class _Registration:
    fn: Handler
    mode: str  # "async" | "thread" | "inline"


class ReceiverCore:
    """The framework-free part of :class:`~proxaro_scrape.webhooks.WebhookReceiver`.

    Everything but serving HTTP: the secrets, the decision on one delivery (:meth:`accept`),
    deduplication, handler registration (:meth:`on`, :meth:`attach`), dispatch off the
    response path, :meth:`drain` and :meth:`close`, and the counters (:meth:`stats`).  See
    :class:`~proxaro_scrape.webhooks.WebhookReceiver` for the behaviour as a whole.
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
        self._secrets = as_secrets(secret)
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigurationError("path is None or a str that starts with '/'", param="path")
        if (
            not isinstance(max_body_bytes, int)
            or isinstance(max_body_bytes, bool)
            or max_body_bytes < 1
        ):
            raise ConfigurationError(
                "max_body_bytes is a positive int (bytes)", param="max_body_bytes"
            )
        if not isinstance(dedupe_size, int) or isinstance(dedupe_size, bool) or dedupe_size < 1:
            raise ConfigurationError("dedupe_size is a positive int", param="dedupe_size")
        if handlers is not None and not isinstance(handlers, Mapping):
            raise ConfigurationError("handlers maps event types to handlers", param="handlers")
        #: Only ``POST`` requests to this path are served (``None``: any path).
        self.path = path
        #: The body size cap: a longer body is answered 400 ``too_large`` unread past it.
        self.max_body_bytes = max_body_bytes
        self.dedupe = EventDeduplicator(dedupe_size)
        self._handlers: dict[str, list[_Registration]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._warned_types: set[str] = set()
        self._stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        #: Where the receiver listens, once a server has started it (``None`` otherwise).
        self.url: str | None = None
        #: The bound port, once a server has started it.
        self.port: int | None = None
        for type_, fns in (handlers or {}).items():
            if not callable(fns) and not isinstance(fns, Iterable):
                raise ConfigurationError(
                    "handlers maps each event type to a handler or a list of them",
                    param="handlers",
                )
            for fn in [fns] if callable(fns) else list(fns):
                self.on(type_, fn)

    def __repr__(self) -> str:
        where = self.url or "not serving"
        return (
            f"<{type(self).__name__} {where} secrets={len(self._secrets)}"
            f" types={sorted(self._handlers)}>"
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
        self._secrets = as_secrets(secret)

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
        try:
            # Before the signature: a huge body costs no HMAC and is never parsed.
            check_size(body, self.max_body_bytes)
        except WebhookBodyError as exc:
            return self._refused(exc)
        if not signature:
            self._stats["missing_signature"] += 1
            logger.warning("webhook rejected: no %s header", SIGNATURE_HEADER)
            return _Verdict(400, {"error": "missing_signature"})
        if not any(verify_signature(body, signature, s) for s in self._secrets):
            self._stats["invalid_signature"] += 1
            logger.warning("webhook rejected: %s does not match the body", SIGNATURE_HEADER)
            return _Verdict(400, {"error": "invalid_signature"})
        try:
            event = parse_event(body, max_bytes=self.max_body_bytes)
        except WebhookPayloadError as exc:
            return self._refused(exc)
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

    def _refused(self, exc: WebhookPayloadError) -> _Verdict:
        self._stats["invalid_payload"] += 1
        reason = exc.reason if isinstance(exc, WebhookBodyError) else "bad_event"
        logger.warning("webhook rejected (%s): %s", reason, exc)
        return _Verdict(400, {"error": "invalid_payload", "reason": reason, "message": str(exc)})

    # ------------------------------------------------------------------ dispatch

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

    async def close(self, timeout: float = 10.0) -> None:
        """Let running handlers finish (up to ``timeout``), then cancel them; stop the worker."""
        await self.drain(timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=False)
