"""What the client-stack integrations share (private): request options, pool LRU, helpers.

Every integration drives the gateway manager's sans-I/O per-request API the same way (see
:mod:`proxaro_scrape.gateway.manager`); what differs per stack is only how a request is sent
and how its answer is read.  The pieces here are the ones that do not depend on the stack.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from proxaro_scrape import protocol
from proxaro_scrape.errors import ProxaroError, RequestNotReplayableError, TargetError
from proxaro_scrape.gateway import Outcome, Target
from proxaro_scrape.gateway.outcome import tls_failure

__all__ = [
    "DRAIN_LIMIT",
    "PROXY_AUTHORIZATION",
    "UNSET",
    "PoolLRU",
    "cert_failure",
    "check_spec",
    "final_error",
    "GATEWAY_HEADERS",
    "gateway_pairs",
    "lookup_gateway_pairs",
    "not_replayable",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

PROXY_AUTHORIZATION = "Proxy-Authorization"

#: The body of an answer that will be retried (a ban page, a gateway error) is read, so that
#: its keep-alive connection can carry the next attempt, only up to this many bytes; a larger
#: or unknown-length body is dropped with its connection instead of being buffered.
DRAIN_LIMIT = 64 * 1024

_PREFIX = b"x-proxaro-"
_SPREFIX = "x-proxaro-"


class _Unset:
    """Sentinel: "not given" (``None`` means "the default target" and ``False`` "no proxy")."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


def check_spec(value: Any, param: str = "target") -> Any:
    """Validate a per-request target spec early: a Target, a dict, ``None``, ``False``, UNSET.

    A dict is validated syntactically (:meth:`Target.coerce`) and returned as the Target, so a
    typo fails where it was written, before anything is sent.
    """
    if value is UNSET or value is None or value is False or isinstance(value, Target):
        return value
    if isinstance(value, Mapping):
        return Target.coerce(value)
    raise TargetError(
        f"a per-request target is a Target, a dict, None or False (no proxy), "
        f"not {type(value).__name__}",
        param=param,
    )


def gateway_pairs(raw: Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Only the gateway's own headers (``X-Proxaro-*``) out of ``(name, value)`` pairs.

    The manager's classifier needs nothing else, and handing it a dozen headers it skips one by
    one costs more than this filter (it is on the per-request path).  Names may be bytes or str.
    """
    out = []
    for pair in raw:
        name = pair[0]
        if len(name) > 10:
            head = name[:10].lower()
            if head == _PREFIX or head == _SPREFIX:
                out.append(pair)
    return out


#: Every header the gateway adds of its own (the only ones the manager's classifier reads).
GATEWAY_HEADERS: tuple[str, ...] = (protocol.HEADER_ERROR, *protocol.EXIT_HEADERS)


def lookup_gateway_pairs(headers: Any) -> list[tuple[str, str]]:
    """:func:`gateway_pairs` by lookup, for header maps whose ``get`` is cheap (a dict, or
    aiohttp's C multidict): six lookups instead of a walk over every header."""
    get = headers.get
    out = []
    for name in GATEWAY_HEADERS:
        value = get(name)
        if value is not None:
            out.append((name, value))
    return out


def final_error(outcome: Outcome) -> ProxaroError:
    """The error to raise for an outcome that is neither a success nor a retry."""
    if outcome.error is not None:
        return outcome.error
    # The manager always sets one; this only keeps a broken invariant from raising None.
    return ProxaroError(f"the attempt failed ({outcome.kind}) and will not be retried")


def not_replayable(method: str, url: str, outcome: Outcome) -> RequestNotReplayableError:
    """The error for a retry whose request body was a one-shot stream."""
    return RequestNotReplayableError(
        f"{method} {_short(url)}: the attempt failed ({outcome.kind}) and must be sent again, "
        f"but the request body was a one-shot stream (a generator or a file being read); give "
        f"the body as bytes so it can be resent",
        kind=outcome.kind,
    )


def _short(url: str) -> str:
    # A URL may carry userinfo; never put it in a message.
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def cert_failure(exc: BaseException) -> bool:
    """Is a TLS certificate check failure somewhere in ``exc``'s chain?

    Such a failure is the caller's trust store or the target's certificate, never the gateway's
    or the exit's: it is raised at once instead of being retried through other exits.  The
    core's classification decides it (kind ``tls_error``), so every stack agrees.
    """
    return tls_failure(exc) is not None


class _Entry(Generic[V]):
    __slots__ = ("value", "users", "retired")

    def __init__(self, value: V) -> None:
        self.value = value
        self.users = 0
        self.retired = False


class PoolLRU(Generic[K, V]):
    """A bounded LRU of connection pools, each closed once evicted AND no request uses it.

    ``acquire`` counts a user; ``release`` uncounts it.  An evicted pool still carrying a
    request (a response being streamed, say) is closed when its last user releases it, so an
    eviction never cuts a request short.  Methods return the pools that are now due to be
    closed; the caller closes them (sync or async, outside the lock).  Thread-safe.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def acquire(self, key: K, create: Callable[[], V]) -> tuple[_Entry[V], list[V]]:
        """The entry for ``key`` (made by ``create()`` if absent), counted as used."""
        closing: list[V] = []
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                entry = self._items[key] = _Entry(create())
                while len(self._items) > self.maxsize:
                    _, old = self._items.popitem(last=False)
                    old.retired = True
                    if old.users == 0:
                        closing.append(old.value)
            else:
                self._items.move_to_end(key)
            entry.users += 1
        return entry, closing

    def release(self, entry: _Entry[V]) -> V | None:
        """Uncount a user; the pool if it is now due to be closed."""
        with self._lock:
            entry.users -= 1
            if entry.retired and entry.users == 0:
                entry.retired = False  # closed once
                return entry.value
        return None

    def retire(self, predicate: Callable[[K], bool]) -> list[V]:
        """Evict every pool whose key matches; the idle ones are returned for closing."""
        closing: list[V] = []
        with self._lock:
            for key in [k for k in self._items if predicate(k)]:
                entry = self._items.pop(key)
                entry.retired = True
                if entry.users == 0:
                    entry.retired = False
                    closing.append(entry.value)
        return closing

    def drain(self) -> list[V]:
        """Forget every pool and return them all (for close: in use or not)."""
        with self._lock:
            values = [e.value for e in self._items.values()]
            for e in self._items.values():
                e.retired = False  # a later release must not close it twice
            self._items.clear()
        return values
