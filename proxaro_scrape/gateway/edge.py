"""The integration contract: what every client stack's edge does, written once.

An integration (httpx, requests, aiohttp, Scrapy, a browser...) is a thin edge on this module.
It knows how to send one attempt through a :class:`~proxaro_scrape.gateway.Route` on its stack
and how to read what came back; everything else is here:

- **the trust rule** (:func:`observe_answer`): on plain HTTP the gateway strips the site's
  ``X-Proxaro-*`` headers and adds its own, so the answer's are the gateway's; inside a
  CONNECT tunnel the gateway never sees the site's answers, so only the CONNECT answer's
  headers count, and a site's headers reach routing only through the user's ``is_ban`` hook.
  A 407 or an ``X-Proxaro-Error`` is the gateway's only when the gateway sent it;
- **the failure vocabulary** (:class:`Failure`, :func:`failure_of`): each stack maps its own
  exceptions onto four kinds with ONE explicit table (as httpx maps httpcore's exceptions), so
  the core never guesses from class names or messages;
- **what next** (:func:`decide`): return the answer, retry (refreshing the credentials first
  when the gateway refused them), or raise the one error that says why;
- **the attempt loop**, once per concurrency model (:func:`run_sync`, :func:`run_async`), the
  way tenacity splits a decision from its driver.

A stack's whole edge, in outline::

    FAILURES = ((MyStack.Timeout, Failure.TIMEOUT), (MyStack.NetworkError, Failure.CONNECTION))

    def attempt(route):
        try:
            response = send(request, proxy=route.proxy_url)
        except Exception as exc:
            failure = failure_of(exc, FAILURES)
            if failure is None:
                raise                                  # the caller's mistake, not the gateway's
            return None, observe_failure(rr, failure), exc
        outcome = observe_answer(rr, response.status, response.headers, tunnel=False)
        if outcome.ok:
            return response, outcome, None
        response.close()                               # a ban page, a gateway error: not the page
        return None, outcome, None

    rr = manager.request(url, target, session_key)
    response = run_sync(manager, rr, attempt, method="GET", url=url)

Nothing here does I/O but the drivers' one call to refresh the credentials.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from proxaro_scrape.errors import ProxaroError, RequestNotReplayableError, TargetError
from proxaro_scrape.gateway import RequestRouting, Route
from proxaro_scrape.gateway.outcome import (
    ExitInfo,
    Failure,
    Outcome,
    cause_in_chain,
    classify_answer,
    classify_failure,
    header_values,
)
from proxaro_scrape.gateway.target import Target

__all__ = [
    "DRAIN_LIMIT",
    "EXIT_KEY",
    "PROXY_AUTHORIZATION",
    "UNSET",
    "ExitInfo",
    "Failure",
    "FailureTable",
    "Next",
    "PoolLRU",
    "check_spec",
    "decide",
    "failure_of",
    "gateway_pairs",
    "observe_answer",
    "observe_failure",
    "run_async",
    "run_sync",
    "short_url",
]

R = TypeVar("R")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

PROXY_AUTHORIZATION = "Proxy-Authorization"
#: Where every stack exposes the :class:`ExitInfo` of an answer (an attribute, a meta key or
#: an extension of this name).
EXIT_KEY = "proxaro_exit"
#: The body of an answer that will be retried (a ban page, a gateway error) is read, so that
#: its keep-alive connection can carry the next attempt, only up to this many bytes; a larger
#: or unknown-length body is dropped with its connection instead of being buffered.
DRAIN_LIMIT = 64 * 1024

_PREFIXES = ("x-proxaro-", b"x-proxaro-")


class _Unset:
    """Sentinel: "not given" (``None`` means "the default target" and ``False`` "no proxy")."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()

# ---------------------------------------------------------------------- failures

#: ``((exception types, Failure), ...)``, first match wins: a stack's exceptions → vocabulary.
FailureTable = Sequence[tuple["type[BaseException] | tuple[type[BaseException], ...]", Failure]]


def failure_of(
    exc: BaseException,
    table: FailureTable,
    *,
    tls: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Failure | None:
    """The :class:`Failure` that ``exc`` stands for, by ``table``; ``None`` when no row
    matches (the caller's own mistake, to be raised as it is).

    A certificate-verification failure anywhere in the exception's chain
    (:class:`ssl.SSLCertVerificationError`, or the stack's own ``tls`` types) is
    :attr:`Failure.TLS` whatever the outer exception: every exit would show the same
    certificate, so trying another cannot help.
    """
    import ssl

    if cause_in_chain(exc, (ssl.SSLCertVerificationError, *_as_tuple(tls))) is not None:
        return Failure.TLS
    for types, failure in table:
        if isinstance(exc, types):
            return failure
    return None


def _as_tuple(
    types: type[BaseException] | tuple[type[BaseException], ...],
) -> tuple[type[BaseException], ...]:
    return types if isinstance(types, tuple) else (types,)


# ---------------------------------------------------------------------- observing


def gateway_pairs(headers: Any) -> list[tuple[Any, Any]]:
    """Only the ``X-Proxaro-*`` pairs of ``(name, value)`` pairs (names str or bytes)."""
    out = []
    for pair in headers:
        name = pair[0]
        if len(name) > 10 and name[:10].lower() in _PREFIXES:
            out.append(pair)
    return out


def observe_answer(
    rr: RequestRouting,
    status: int,
    headers: Any,
    *,
    tunnel: bool,
    connect_headers: Any = None,
    body: Any = None,
) -> Outcome:
    """Observe an answer to the last route of ``rr``, under the trust rule.

    ``headers`` are the answer's (any stack's header object).  ``tunnel``: the request went
    through a CONNECT tunnel (HTTPS), so ``headers`` are all the site's, and the gateway's are
    only ``connect_headers`` (the CONNECT answer's, or ``None`` when the stack cannot show
    them).  ``body`` matters only to the user's ``is_ban`` hook, which gets the site's
    headers; read it only when ``rr.is_ban`` is set.
    """
    gateway = header_values(connect_headers if tunnel else headers)
    outcome = classify_answer(
        status,
        gateway,
        site_headers=headers,
        body=body,
        ban_status_codes=rr.ban_status_codes,
        is_ban=rr.is_ban,
    )
    return rr.observe_outcome(outcome)


def observe_failure(
    rr: RequestRouting, failure: Failure, *, status: int | None = None, headers: Any = None
) -> Outcome:
    """Observe an attempt of ``rr`` that got no answer.

    For :attr:`Failure.TUNNEL_REFUSED` pass the CONNECT answer's ``status`` and, when the stack
    shows them, its ``headers``: the answer to a CONNECT is always the gateway's.
    """
    gateway = header_values(headers) if headers is not None else None
    return rr.observe_outcome(classify_failure(failure, status=status, gateway=gateway))


# ---------------------------------------------------------------------- deciding


@dataclass(frozen=True, slots=True)
class Next:
    """What to do after an observed attempt (see :func:`decide`)."""

    action: Literal["return", "retry", "raise"]
    #: With ``retry``: refresh the credentials first (``manager.refresh_credentials(
    #: route.credentials_version)`` or its async twin).
    refresh: bool = False
    #: With ``raise``: the error that says why.
    error: ProxaroError | None = None


_RETURN = Next("return")
_RETRY = Next("retry")
_REFRESH = Next("retry", refresh=True)


def decide(
    outcome: Outcome,
    *,
    replayable: bool | Callable[[], bool] = True,
    method: str = "GET",
    url: str = "",
) -> Next:
    """Return the answer, retry, or raise.

    ``replayable``: the request body can be sent again (bytes, a form, JSON; not a one-shot
    stream), or a callable that tells, asked only when a retry is due.  ``method`` and ``url``
    only word the error of a retry that cannot be made.
    """
    if outcome.ok:
        return _RETURN
    if not outcome.retry:
        error = outcome.error
        if error is None:  # the core always sets one; never raise None
            error = ProxaroError(f"the attempt failed ({outcome.kind}) and will not be retried")
        return Next("raise", error=error)
    if not (replayable() if callable(replayable) else replayable):
        return Next(
            "raise",
            error=RequestNotReplayableError(
                f"{method} {short_url(url)}: the attempt failed ({outcome.kind}) and must be "
                f"sent again, but the request body was a one-shot stream (a generator or a file "
                f"being read); give the body as bytes so it can be resent",
                kind=outcome.kind,
            ),
        )
    return _REFRESH if outcome.refresh else _RETRY


def run_sync(
    manager: Any,
    rr: RequestRouting,
    attempt: Callable[[Route], tuple[R | None, Outcome, BaseException | None]],
    *,
    replayable: bool | Callable[[], bool] = True,
    method: str = "GET",
) -> R:
    """The attempt loop for threads: route, attempt, decide, until an answer or an error.

    ``attempt(route)`` sends once and returns ``(answer, outcome, exception)``: the answer only
    when ``outcome.ok``, the stack's exception when there was one (it becomes the raised
    error's ``__cause__``).  ``replayable`` says whether the body can be sent again: a bool, or
    a callable asked after a failed attempt (a stream is known to be spent only once sent).
    """
    while True:
        route = rr.next_route()
        answer, outcome, exc = attempt(route)
        step = decide(outcome, replayable=replayable, method=method, url=rr.url)
        if step.action == "return":
            assert answer is not None
            return answer
        if step.action == "raise":
            if exc is not None and outcome.kind == "tls_error":
                raise exc  # the caller's trust store: the stack's own certificate error
            assert step.error is not None
            raise step.error from exc
        if step.refresh:
            manager.refresh_credentials(route.credentials_version)


async def run_async(
    manager: Any,
    rr: RequestRouting,
    attempt: Callable[[Route], Awaitable[tuple[R | None, Outcome, BaseException | None]]],
    *,
    replayable: bool | Callable[[], bool] = True,
    method: str = "GET",
    first: tuple[Route, R | None, Outcome, BaseException | None] | None = None,
) -> R:
    """The attempt loop for asyncio: :func:`run_sync` with ``await``.

    ``first`` is an attempt the caller already made (its route and what ``attempt`` returned):
    the loop decides on it before routing again.  A stack makes its first attempt itself and
    calls the loop only when that one did not succeed, which spares the common case the loop's
    closures and coroutine frames.
    """
    while True:
        if first is not None:
            route, answer, outcome, exc = first
            first = None
        else:
            route = rr.next_route()
            answer, outcome, exc = await attempt(route)
        step = decide(outcome, replayable=replayable, method=method, url=rr.url)
        if step.action == "return":
            assert answer is not None
            return answer
        if step.action == "raise":
            if exc is not None and outcome.kind == "tls_error":
                raise exc  # the caller's trust store: the stack's own certificate error
            assert step.error is not None
            raise step.error from exc
        if step.refresh:
            await manager.arefresh_credentials(route.credentials_version)


# ---------------------------------------------------------------------- arguments


def check_spec(value: Any, param: str = "target") -> Any:
    """Check a per-request target where it is given: a Target, a dict, ``None``, ``False``
    (send direct) or :data:`UNSET`.  A dict comes back as the :class:`Target` it spells, so a
    typo fails where it was written, before anything is sent."""
    if value is UNSET or value is None or value is False or isinstance(value, Target):
        return value
    if isinstance(value, Mapping):
        return Target.coerce(value)
    raise TargetError(
        f"a per-request target is a Target, a dict, None or False (no proxy), "
        f"not {type(value).__name__}",
        param=param,
    )


def short_url(url: str) -> str:
    """``url`` without userinfo: safe for a message."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


# ---------------------------------------------------------------------- pools


class _Entry(Generic[V]):
    __slots__ = ("value", "users", "retired")

    def __init__(self, value: V) -> None:
        self.value = value
        self.users = 0
        self.retired = False


class PoolLRU(Generic[K, V]):
    """A bounded LRU of connection pools, each closed once evicted AND no request uses it.

    Tunnels are authenticated once, by their CONNECT, so a stack pools them per gateway
    username; sticky keys make usernames many, and this bounds the pools.  ``acquire`` counts a
    user; ``release`` uncounts it.  An evicted pool still carrying a request (a response being
    streamed, say) is closed when its last user releases it, so an eviction never cuts a
    request short.  Methods return the pools now due to be closed; the caller closes them
    (sync or async, outside the lock).  Thread-safe.
    """

    def __init__(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError("maxsize must be a whole number of at least 1")
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
