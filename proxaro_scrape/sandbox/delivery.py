"""The sandbox's webhook deliverer: every event, to every subscribed endpoint, signed, retried.

What the reference promises, on world time:

- every event emitted in the world (``world.emit``) goes to each endpoint of the main account
  subscribed to its type or to ``"*"`` (the endpoints registered when the event happened);
- as an HTTPS ``POST`` whose body is the compact JSON of ``event.payload()`` (the same bytes on
  every attempt) with ``Content-Type: application/json`` and ``X-NB-Signature``: the lower-case
  hex HMAC-SHA256 of that body under the endpoint's secret *at the time of the attempt* (so a
  retry after ``POST /v1/webhooks/{id}/rotate`` is signed with the new secret);
- at least once: a 2xx answer is a success, anything else (another status, a redirect, a
  refused connection, a TLS failure, a timeout) is retried after 30 s, 1 min, 2 min, ... doubling
  up to 4 h between attempts, for as long as the next attempt falls within 24 h of the event;
- each attempt is recorded in ``world.attempts`` (``GET /v1/webhooks/{id}/attempts``) and
  counted in ``world.counters["webhooks.attempts"]``.

The backoff runs on the world clock, so tests compress it with ``POST /_sandbox/clock``
(``{"advance": 600}`` or ``{"speed": 3600}``).

Safety: the sandbox connects only to loopback.  An endpoint whose host is not a loopback IP
literal or ``localhost`` is accepted by the API, but each of its attempts is recorded as failed
without any connection or DNS lookup; the HTTP client's resolver refuses every other name as a
second line of defence, and redirects are never followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from proxaro_scrape import protocol
from proxaro_scrape.sandbox.world import Event, WebhookAttempt, WebhookEndpoint, World

#: First retry delay, growth factor and largest delay between two attempts (world seconds).
BASE_DELAY = 30.0
BACKOFF_FACTOR = 2.0
MAX_DELAY = 4 * 3600.0
#: No attempt is made later than this after the event (world seconds): the reference's 24 h.
RETRY_HORIZON = 24 * 3600.0
USER_AGENT = "Proxaro-Webhooks/1.0 (sandbox)"


def retry_delay(attempt: int, base: float = BASE_DELAY, maximum: float = MAX_DELAY) -> float:
    """World seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return min(base * BACKOFF_FACTOR ** (attempt - 1), maximum)


def sign(body: bytes, secret: str) -> str:
    """``X-NB-Signature`` for ``body``: the reference's hex HMAC-SHA256."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def encode_event(event: Event) -> bytes:
    """The delivered body: compact JSON of ``event.payload()``."""
    return json.dumps(event.payload(), separators=(",", ":")).encode("utf-8")


def loopback_refusal(url: str) -> str | None:
    """Why the sandbox will not connect to ``url`` (``None``: it will).

    Only ``https`` URLs whose host is a loopback IP literal (127.0.0.0/8, ::1) or ``localhost``
    are connected to; any other name is refused here, before any DNS lookup.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "invalid URL"
    if parts.scheme.lower() != "https":
        return "not an https URL: webhooks are delivered over HTTPS only"
    if not host:
        return "invalid URL: no host"
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return f"destination not allowed: the sandbox delivers only to loopback hosts, not {host!r}"


class _LoopbackResolver(AbstractResolver):
    """Resolves ``localhost`` without asking anyone; refuses every other name."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower().rstrip(".") != "localhost":
            raise OSError(f"the sandbox resolves no name but localhost (asked for {host!r})")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    webhook_id: str = field(compare=False)
    event: Event = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(compare=False, default=1)


class WebhookDeliverer:
    """Delivers the world's events to its webhook endpoints (see the module docstring).

    ``ssl_context`` verifies the receivers' certificates (the runner passes one that trusts
    the sandbox CA).  ``timeout`` is in real seconds per attempt; ``base_delay``,
    ``max_delay`` and ``horizon`` are the backoff in world seconds.
    """

    def __init__(
        self,
        world: World,
        ssl_context: ssl.SSLContext | None = None,
        *,
        timeout: float = 10.0,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        horizon: float = RETRY_HORIZON,
        poll_interval: float = 0.1,
        concurrency: int = 16,
    ) -> None:
        self.world = world
        self.ssl_context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.timeout = timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.horizon = horizon
        self.poll_interval = poll_interval
        self._concurrency = concurrency
        self._queue: list[_Delivery] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._closed = False
        self._subscribed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Subscribe to the world's events and start delivering on the running loop."""
        if self._task is not None:
            raise RuntimeError("the deliverer is already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self._concurrency)
        self._closed = False
        if not self._subscribed:
            # The world has no unsubscribe: after close() the listener just ignores events.
            self.world.on_event(self._on_event)
            self._subscribed = True
        self._task = self._loop.create_task(self._run(), name="proxaro-sandbox-webhooks")

    async def close(self) -> None:
        """Stop: cancel the scheduler and the attempts in flight, close the HTTP client."""
        self._closed = True
        self._queue.clear()
        # Loop: on Python 3.11 asyncio.wait_for can swallow a cancellation that races with its
        # inner wait, so the scheduler may have started one more attempt meanwhile.
        for _ in range(10):
            tasks = [t for t in (self._task, *self._inflight) if t is not None and not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._inflight.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def pending(self) -> int:
        """Deliveries waiting for their (next) attempt, plus attempts in flight."""
        return len(self._queue) + len(self._inflight)

    # ------------------------------------------------------------------ scheduling

    def _on_event(self, event: Event) -> None:
        if self._closed or self._loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            # The world is meant to be touched on its loop only; be safe if it is not.
            self._loop.call_soon_threadsafe(self._enqueue_event, event)
        else:
            self._enqueue_event(event)

    def _enqueue_event(self, event: Event) -> None:
        if self._closed:
            return
        body = encode_event(event)
        now = self.world.clock.now()
        for endpoint in self.world.webhooks:
            if endpoint.account_id != self.world.account.id:
                continue
            if "*" not in endpoint.events and event.type not in endpoint.events:
                continue
            heapq.heappush(self._queue, _Delivery(now, next(self._seq), endpoint.id, event, body))
        self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            now = self.world.clock.now()
            while self._queue and self._queue[0].due <= now:
                delivery = heapq.heappop(self._queue)
                task = asyncio.get_running_loop().create_task(self._attempt(delivery))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if self._queue:
                # World time may be advanced at any moment, so poll while retries wait.
                wait = max(
                    0.0,
                    min(
                        self.poll_interval,
                        self.world.clock.real_seconds(self._queue[0].due - now),
                    ),
                )
            else:
                wait = None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ one attempt

    def _endpoint(self, webhook_id: str) -> WebhookEndpoint | None:
        for endpoint in self.world.webhooks:
            if endpoint.id == webhook_id:
                return endpoint
        return None

    async def _attempt(self, delivery: _Delivery) -> None:
        assert self._semaphore is not None
        async with self._semaphore:
            if self._closed:
                return
            endpoint = self._endpoint(delivery.webhook_id)
            if endpoint is None:
                # Deleted since: nothing to deliver to any more.
                self.world.note("webhook_dropped", webhook_id=delivery.webhook_id)
                return
            attempted_at = self.world.clock.now()
            self.world.counters["webhooks.attempts"] += 1
            status, error = await self._post(endpoint, delivery.body)
            ok = status is not None and 200 <= status < 300
            next_retry_at: float | None = None
            if not ok:
                retry = attempted_at + retry_delay(
                    delivery.attempt, self.base_delay, self.max_delay
                )
                if retry <= delivery.event.created_at + self.horizon:
                    next_retry_at = retry
            self.world.attempts.append(
                WebhookAttempt(
                    id=self.world.new_id("whatt"),
                    webhook_id=endpoint.id,
                    event_id=delivery.event.id,
                    event_type=delivery.event.type,
                    attempt=delivery.attempt,
                    attempted_at=attempted_at,
                    status=status,
                    ok=ok,
                    error=error,
                    next_retry_at=next_retry_at,
                )
            )
            self.world.note(
                "webhook_attempt",
                webhook_id=endpoint.id,
                event_id=delivery.event.id,
                attempt=delivery.attempt,
                status=status,
                ok=ok,
                error=error,
            )
            if ok:
                self.world.counters["webhooks.delivered"] += 1
            elif next_retry_at is None:
                self.world.counters["webhooks.abandoned"] += 1
                self.world.note(
                    "webhook_abandoned", webhook_id=endpoint.id, event_id=delivery.event.id
                )
            else:
                heapq.heappush(
                    self._queue,
                    _Delivery(
                        next_retry_at,
                        next(self._seq),
                        delivery.webhook_id,
                        delivery.event,
                        delivery.body,
                        delivery.attempt + 1,
                    ),
                )
                self._wakeup()

    async def _post(self, endpoint: WebhookEndpoint, body: bytes) -> tuple[int | None, str | None]:
        refusal = loopback_refusal(endpoint.url)
        if refusal is not None:
            return None, refusal
        headers = {
            "Content-Type": "application/json",
            protocol.SIGNATURE_HEADER: sign(body, endpoint.secret),
            "User-Agent": USER_AGENT,
        }
        try:
            session = self._client()
            async with session.post(
                endpoint.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                await resp.content.read(65536)  # drain a little; the answer's body is unused
                status = resp.status
        except asyncio.TimeoutError:
            return None, f"timeout after {self.timeout:g} s"
        except aiohttp.ClientConnectorCertificateError as exc:
            return None, f"TLS certificate not trusted: {exc.certificate_error}"
        except aiohttp.ClientSSLError as exc:
            return None, f"TLS error: {_short(exc)}"
        except aiohttp.ClientConnectorError as exc:
            return None, f"connection failed: {_short(exc.os_error)}"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {_short(exc)}"
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise aiohttp.ClientError("the deliverer is closed")
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self.ssl_context,
                resolver=_LoopbackResolver(),
                limit=self._concurrency,
                force_close=True,  # receivers come and go in tests; never reuse a dead socket
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False
            )
        return self._session


def _short(exc: Any) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
