"""What a browser page needs of the integration contract, shared by the Playwright helper and
the scrapy-playwright glue.

- **the failure table** (:data:`NET_FAILURES`, :func:`failure_of_playwright`): Playwright
  raises one ``Error`` class whose message carries Chromium's network error code
  (``net::ERR_TUNNEL_CONNECTION_FAILED``); those codes are the stack's vocabulary, stable across
  Chromium releases, so this edge maps each one it knows onto a
  :class:`~proxaro_scrape.gateway.edge.Failure` with one explicit table (the core never reads a
  message).  A code not in the table is the caller's and is raised as it is.
- **what a browser shows of a refused CONNECT**: Chromium keeps the gateway's answer to a
  CONNECT to itself except its status on a 407 (the proxy credentials were refused: the
  navigation's response is that 407, with ``net::ERR_HTTP_RESPONSE_CODE_FAILURE``); a site's
  own 407 inside a tunnel is refused by Chromium as ``net::ERR_UNEXPECTED_PROXY_AUTH`` and
  never shown.  So a 407 navigation response over HTTPS is the gateway's, and nothing else of
  the CONNECT answer is known: over HTTPS the exit is not known (``None``).
- **a page's own requests refused** (:func:`refused_by_gateway`, :func:`observe_refusal`): a
  context carries the credentials it was made with.  After a rotation without grace the gateway
  refuses them, and a page whose navigation was answered before can still have its scripts'
  requests refused (a 407: with the gateway's ``X-Proxaro-Error`` over plain HTTP; over HTTPS
  Chromium shows the CONNECT's 407, then fails the request with
  ``net::ERR_TUNNEL_CONNECTION_FAILED``).  Its render is then incomplete (a product page that
  says "error" on a 200): the attempt is read as the credentials refused, so the page is
  loaded again, in a context with the new ones.
- **context slots** (:class:`ContextSlots`): browser contexts, one per route, at most
  ``maxsize`` alive at any moment, least recently used closed first; one in use is never
  closed under its pages (a new route waits for a slot instead).
- the context's proxy (:func:`context_proxy`), a context's name (:func:`context_name`) and the
  bandwidth saver (:data:`HEAVY_RESOURCE_TYPES`, :func:`is_heavy`).
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import ProxySettings
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from proxaro_scrape.gateway import RequestRouting, Route
from proxaro_scrape.gateway.edge import Failure, failure_of, observe_answer, observe_failure
from proxaro_scrape.gateway.outcome import Outcome

__all__ = [
    "HEAVY_RESOURCE_TYPES",
    "NET_FAILURES",
    "ContextSlots",
    "Slot",
    "context_name",
    "context_proxy",
    "failure_of_playwright",
    "is_heavy",
    "observe_navigation_error",
    "observe_refusal",
    "refused_by_gateway",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Playwright's exception classes → the vocabulary (first match wins); its ``Error`` is then
#: read through :data:`NET_FAILURES`.
FAILURES = ((PlaywrightTimeoutError, Failure.TIMEOUT),)

#: Chromium's network error codes → the vocabulary.  A refused CONNECT shows only as
#: ``ERR_TUNNEL_CONNECTION_FAILED`` (status and ``X-Proxaro-Error`` hidden): a bare refusal,
#: which the core reads as an exit failure (twice in a row on one target: a dead region).
NET_FAILURES: dict[str, Failure] = {
    "ERR_TUNNEL_CONNECTION_FAILED": Failure.TUNNEL_REFUSED,
    "ERR_PROXY_CONNECTION_FAILED": Failure.CONNECTION,
    "ERR_CONNECTION_CLOSED": Failure.CONNECTION,
    "ERR_CONNECTION_RESET": Failure.CONNECTION,
    "ERR_CONNECTION_REFUSED": Failure.CONNECTION,
    "ERR_CONNECTION_ABORTED": Failure.CONNECTION,
    "ERR_CONNECTION_FAILED": Failure.CONNECTION,
    "ERR_EMPTY_RESPONSE": Failure.CONNECTION,
    "ERR_SOCKET_NOT_CONNECTED": Failure.CONNECTION,
    "ERR_INCOMPLETE_CHUNKED_ENCODING": Failure.CONNECTION,
    "ERR_CONTENT_LENGTH_MISMATCH": Failure.CONNECTION,
    "ERR_INVALID_HTTP_RESPONSE": Failure.CONNECTION,
    "ERR_TIMED_OUT": Failure.TIMEOUT,
    "ERR_CONNECTION_TIMED_OUT": Failure.TIMEOUT,
    "ERR_CERT_AUTHORITY_INVALID": Failure.TLS,
    "ERR_CERT_COMMON_NAME_INVALID": Failure.TLS,
    "ERR_CERT_DATE_INVALID": Failure.TLS,
    "ERR_CERT_INVALID": Failure.TLS,
}
#: The navigation failed on a non-2xx answer with an empty body: the site's (a status the
#: navigation response shows) or, through a tunnel, the gateway refusing the credentials (407).
_RESPONSE_CODE_FAILURE = "ERR_HTTP_RESPONSE_CODE_FAILURE"
_NET_CODE = re.compile(r"\bnet::(ERR_[A-Z0-9_]+)")

#: What the bandwidth saver blocks: residential bytes cost money, and a scraper rarely needs
#: pictures, fonts or video to read a page.
HEAVY_RESOURCE_TYPES = frozenset({"image", "font", "media"})


def net_error(exc: BaseException) -> str | None:
    """Chromium's ``ERR_*`` code in a Playwright error, or ``None``."""
    if not isinstance(exc, PlaywrightError):
        return None
    match = _NET_CODE.search(exc.message or "")
    return match.group(1) if match else None


def failure_of_playwright(exc: BaseException) -> Failure | None:
    """The :class:`Failure` a Playwright exception stands for, or ``None`` (the caller's)."""
    failure = failure_of(exc, FAILURES)
    if failure is not None:
        return failure
    code = net_error(exc)
    return NET_FAILURES.get(code) if code is not None else None


def observe_navigation_error(
    rr: RequestRouting,
    exc: BaseException,
    *,
    tunnel: bool,
    status: int | None,
    headers: Any = None,
    body: Any = None,
) -> Outcome | None:
    """Observe a navigation that raised ``exc``; ``None`` when it is the caller's to raise.

    ``status`` and ``headers`` are those of the main frame's navigation response, when one was
    seen before the error (see the module docstring for what a 407 over HTTPS means).
    """
    if net_error(exc) == _RESPONSE_CODE_FAILURE and status is not None:
        if tunnel and status == 407:
            return observe_failure(rr, Failure.TUNNEL_REFUSED, status=407)
        # The site answered, with an empty error page: its answer (a ban, or a plain 404).
        return observe_answer(rr, status, headers or (), tunnel=tunnel, body=body)
    failure = failure_of_playwright(exc)
    if failure is None:
        return None
    return observe_failure(rr, failure)


def refused_by_gateway(status: int, headers: Any, url: str) -> bool:
    """Is this answer to one of a page's own requests the gateway refusing the context's
    credentials?  A 407: over HTTPS always the gateway's (Chromium never shows a site's 407
    inside a tunnel); over plain HTTP only with the gateway's ``X-Proxaro-Error`` (``headers``:
    Playwright's, names lower-cased)."""
    if status != 407:
        return False
    return url[:6].lower() == "https:" or "x-proxaro-error" in (headers or {})


def observe_refusal(rr: RequestRouting, headers: Any, url: str) -> Outcome:
    """Observe an attempt whose page had one of its requests refused (:func:`refused_by_gateway`)
    instead of its navigation's answer: the credentials refused, whatever the page showed."""
    if url[:6].lower() == "https:":
        return observe_failure(rr, Failure.TUNNEL_REFUSED, status=407)
    return observe_answer(rr, 407, headers, tunnel=False)


def context_proxy(route: Route) -> ProxySettings:
    """The ``proxy`` option of a browser context for ``route`` (holds the password: never log
    it).  The browser authenticates to the gateway itself with these credentials, on the
    CONNECT or on each plain-HTTP request: no ``Proxy-Authorization`` request header is set."""
    return {
        "server": route.gateway_url,
        "username": route.username,
        "password": route.password.reveal(),
    }


def context_name(route: Route, generation: int = 0) -> str:
    """A context's name from its route: ``proxaro:<username>:v<credentials version>[:<n>]``.

    The username carries the target and the sticky session, so a new session (a ban, a moved
    session) or new credentials give a new name; ``generation`` makes a new one for the same
    route after a failure retired its context.  No secret in it.
    """
    name = f"proxaro:{route.username}:v{route.credentials_version}"
    return f"{name}:{generation}" if generation else name


def is_heavy(resource_type: str) -> bool:
    """Does the bandwidth saver block this Playwright ``resource_type``?"""
    return resource_type in HEAVY_RESOURCE_TYPES


# ---------------------------------------------------------------------- context slots


class Slot(Generic[K, V]):
    """One live context of :class:`ContextSlots`: its ``key``, its ``value`` once made, and how
    many pages use it."""

    __slots__ = ("key", "value", "users", "retired", "generation", "_ready", "_failed")

    def __init__(self, key: K, generation: int) -> None:
        self.key = key
        self.generation = generation
        self.value: V | None = None
        self.users = 0
        self.retired = False
        self._ready = asyncio.Event()
        self._failed = False

    def __repr__(self) -> str:
        return f"<Slot {self.key!r} gen={self.generation} users={self.users}>"


class ContextSlots(Generic[K, V]):
    """At most ``maxsize`` live contexts, keyed by route, least recently used closed first.

    ``close(value)`` closes a context.  :meth:`acquire` returns the slot of ``key`` counted as
    used, made by its ``create(generation)`` when absent; :meth:`release` uncounts it.
    When every slot is in use and the cap is reached, :meth:`acquire` waits for one to be
    released (a context is never closed under its pages, and the cap is never exceeded: a
    context being closed still counts).  :meth:`retire` takes a key's context out of use (a
    failure was seen through it): the next :meth:`acquire` of that key makes a new one, and
    the old one closes once its last page is done.  One event loop; not thread-safe.
    """

    def __init__(self, maxsize: int, close: Callable[[V], Awaitable[None]]) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError("maxsize must be a whole number of at least 1")
        self.maxsize = maxsize
        self._close = close
        self._slots: OrderedDict[K, Slot[K, V]] = OrderedDict()
        self._generations: dict[K, int] = {}
        #: Contexts made or being made and not yet closed: what the cap bounds.
        self._live = 0
        #: The most contexts alive at once, for tests and stats.
        self.peak = 0
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return self._live

    def keys(self) -> list[K]:
        """The keys of the contexts in use or idle (not retired), oldest first."""
        return list(self._slots)

    async def acquire(self, key: K, create: Callable[[int], Awaitable[V]]) -> Slot[K, V]:
        """The slot of ``key``, counted as used; ``create(generation)`` makes its context when
        there is none (see the class docstring)."""
        while True:
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key)
                slot.users += 1
                await slot._ready.wait()
                if not slot._failed:
                    return slot
                slot.users -= 1
                continue
            if self._live < self.maxsize:
                return await self._make(key, create)
            idle = next((s for s in self._slots.values() if s.users == 0), None)
            if idle is not None:
                del self._slots[idle.key]
                await self._dispose(idle)
                continue
            # Every context is in use: wait for a page to be done with one.
            self._changed.clear()
            await self._changed.wait()

    async def _make(self, key: K, create: Callable[[int], Awaitable[V]]) -> Slot[K, V]:
        generation = self._generations.get(key, 0)
        slot: Slot[K, V] = Slot(key, generation)
        slot.users = 1
        self._slots[key] = slot
        self._live += 1
        self.peak = max(self.peak, self._live)
        try:
            slot.value = await create(generation)
        except BaseException:
            slot._failed = True
            if self._slots.get(key) is slot:
                del self._slots[key]
            self._live -= 1
            self._changed.set()
            raise
        finally:
            slot._ready.set()
        return slot

    async def release(self, slot: Slot[K, V]) -> None:
        """Uncount a user of ``slot``; a retired slot's context closes with its last user."""
        slot.users -= 1
        if slot.users == 0 and slot.retired:
            slot.retired = False  # closed once
            await self._dispose(slot)
        else:
            self._changed.set()

    async def retire(self, slot: Slot[K, V]) -> None:
        """Take ``slot``'s context out of use (a failure was seen through it)."""
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
            self._generations[slot.key] = slot.generation + 1
            slot.retired = True
            if slot.users == 0:
                slot.retired = False
                await self._dispose(slot)

    async def retire_where(self, predicate: Callable[[K], bool]) -> None:
        """Retire every slot whose key matches (old credentials, say)."""
        for slot in [s for k, s in self._slots.items() if predicate(k)]:
            await self.retire(slot)

    async def _dispose(self, slot: Slot[K, V]) -> None:
        try:
            if slot.value is not None:
                await self._close(slot.value)
        finally:
            self._live -= 1
            self._changed.set()

    async def aclose(self) -> None:
        """Close every context, in use or not."""
        slots = list(self._slots.values())
        self._slots.clear()
        for slot in slots:
            slot.retired = False
            await self._dispose(slot)
