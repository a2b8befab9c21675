"""Outcome classification: what one attempt's answer (or its absence) means.

Pure functions over plain data, no I/O, no clock, no state:

- :func:`classify_answer` takes the answer's status, the gateway's OWN headers (already
  chosen by the trust rule of :mod:`proxaro_scrape.gateway.edge`: on plain HTTP the answer's
  ``X-Proxaro-*``, through a tunnel only the CONNECT answer's), and, for the user's ``is_ban``
  hook only, the site's headers and body;
- :func:`classify_failure` takes an attempt that got no answer, in the small vocabulary of
  :class:`Failure` each integration maps its stack's exceptions onto (one explicit table per
  stack: the core never guesses from class names or messages).

The rules (``shared/gateway-protocol.md`` section 3):

==========================================  ====================  ======  =======
what came back                               kind                  retry   refresh
==========================================  ====================  ======  =======
407 ``auth_failed`` (or a bare 407 CONNECT)  stale_credentials     yes     yes
400 ``bad_targeting``                        bad_targeting         never
403 ``source_not_allowed``                   source_not_allowed    never
403 ``scope_required``                       scope_required        never
502 ``no_exit``                              region_dead           yes (failover)
502 ``exit_failed``                          exit_failure          yes (new session)
504 ``target_timeout``, ``Failure.TIMEOUT``  timeout               yes (new session)
``Failure.TLS`` (target's certificate)       tls_error             never
``Failure.CONNECTION``                       connection_error      yes (new session)
the site's 403/429, or ``is_ban``            ban                   yes (new session)
anything else from the site                  success
==========================================  ====================  ======  =======

A status without the gateway's ``X-Proxaro-Error`` is the site's answer, a 407 included: only
the gateway's own header (or the answer to a CONNECT, which only the gateway gives) makes an
answer the gateway's.  A 403 *with* ``X-Proxaro-Error`` is the gateway's, never a ban.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from proxaro_scrape import protocol
from proxaro_scrape.errors import (
    BadTargetingError,
    ConfigurationError,
    GatewayError,
    ProxaroError,
    ScopeRequiredError,
    SourceNotAllowedError,
)

__all__ = [
    "KINDS",
    "ExitInfo",
    "Failure",
    "IsBan",
    "Outcome",
    "classify",
    "classify_answer",
    "classify_failure",
    "header_values",
]

#: Every ``Outcome.kind``.
KINDS: tuple[str, ...] = (
    "success",
    "stale_credentials",
    "bad_targeting",
    "source_not_allowed",
    "scope_required",
    "region_dead",
    "exit_failure",
    "timeout",
    "ban",
    "connection_error",
    "tls_error",
)
#: Kinds after which sending again (with a new session) may help.
RETRYABLE_KINDS = frozenset(
    {"stale_credentials", "region_dead", "exit_failure", "timeout", "ban", "connection_error"}
)

#: ``is_ban(status, headers, body) -> bool``: a user hook that recognises a ban page that
#: answers 200 (a captcha, an "access denied" body...).
IsBan = Callable[[int, Any, Any], bool]

_LOWER_EXIT = {h.lower(): h for h in protocol.EXIT_HEADERS}
_ERROR_HEADER = protocol.HEADER_ERROR.lower()
_WANTED = frozenset(_LOWER_EXIT) | {_ERROR_HEADER}
_CANONICAL = tuple((h, h.lower()) for h in (protocol.HEADER_ERROR, *protocol.EXIT_HEADERS))
# The spellings stacks hand over (the protocol's, lower case, and ``title()`` as Scrapy's Headers
# store them; str and bytes) → the lower-cased name: one dict lookup per header instead of a
# decode and a lower() on the per-answer path.  Other spellings take the general way.
_KNOWN_NAMES: dict[Any, str] = {
    form: lower
    for h, lower in _CANONICAL
    for spelling in (h, lower, h.title())
    for form in (spelling, spelling.encode("latin-1"))
}


class Failure(enum.Enum):
    """An attempt that got no answer, as an integration's exception table names it."""

    #: Connect, read or write timed out (the gateway, the exit or the target).
    TIMEOUT = "timeout"
    #: Refused, reset, closed early, or a broken HTTP exchange.
    CONNECTION = "connection_error"
    #: The target's TLS certificate failed verification: no exit can fix that.
    TLS = "tls_error"
    #: The gateway answered the CONNECT with a non-2xx status (pass it, and its headers).
    TUNNEL_REFUSED = "tunnel_refused"


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """The exit that carried a request, as the gateway reported it (section 4)."""

    ip: str | None = None
    country: str | None = None
    asn: str | None = None
    exit_class: str | None = None
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt's answer means and what to do next.

    ``kind`` is one of :data:`KINDS`.  ``retry``: call ``rr.next_route()`` and send again.
    ``refresh``: refresh the credentials first (``mgr.refresh_credentials(version)`` or its
    async twin).  ``error``: the failure to raise when the outcome is neither a success nor a
    retry.  ``exit``: the real exit (``None`` when the answer had no exit headers).
    """

    kind: str
    retry: bool = False
    refresh: bool = False
    error: ProxaroError | None = None
    exit: ExitInfo | None = None
    status: int | None = None
    gateway_error: str | None = None

    @property
    def ok(self) -> bool:
        """True for a success (the target's answer, whatever its status, that is not a ban)."""
        return self.kind == "success"


def header_values(headers: Any) -> dict[str, str]:
    """The gateway's headers (lower-cased names, str values) out of any stack's header object.

    A list or tuple of ``(name, value)`` pairs and a plain ``dict`` (any case) are walked once;
    ``httpx.Headers`` through its raw byte pairs; any other map (``requests``' and aiohttp's
    case-insensitive maps, Scrapy's ``Headers``) is asked for the six names, which costs less
    than a walk over every header.  Names and values may be bytes.
    """
    if not headers:
        return {}
    if isinstance(headers, (list, tuple)):
        items: Any = headers
    elif type(headers) is dict:
        items = headers.items()
    else:
        raw = getattr(headers, "raw", None)
        if isinstance(raw, list):
            items = raw
        else:
            return _looked_up(headers)
    out: dict[str, str] = {}
    known = _KNOWN_NAMES
    for key, value in items:
        name = known.get(key)
        if name is None:
            name = (key.decode("latin-1") if isinstance(key, bytes) else str(key)).lower()
            if name not in _WANTED:
                continue
        out[name] = _text(value)
    return out


def _looked_up(headers: Any) -> dict[str, str]:
    get = headers.get
    out: dict[str, str] = {}
    for name, lower in _CANONICAL:
        value = get(name)
        if value is not None:
            out[lower] = _text(value)
    return out


def _text(value: Any) -> str:
    if type(value) is list and value:  # Scrapy's Headers: a list of bytes
        value = value[-1]
    elif isinstance(value, (list, tuple)):
        value = value[-1] if value else ""
    if type(value) is str:
        return value
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def exit_info(values: Mapping[str, str]) -> ExitInfo | None:
    """:class:`ExitInfo` from :func:`header_values` output, or ``None`` without exit headers."""
    ip = values.get("x-proxaro-exit-ip")
    country = values.get("x-proxaro-exit-country")
    asn = values.get("x-proxaro-exit-asn")
    cls = values.get("x-proxaro-exit-class")
    session = values.get("x-proxaro-session")
    if ip is None and country is None and asn is None and cls is None and session is None:
        return None
    return ExitInfo(ip=ip, country=country, asn=asn, exit_class=cls, session=session)


def classify_answer(
    status: int,
    gateway: Mapping[str, str],
    *,
    site_headers: Any = None,
    body: Any = None,
    ban_status_codes: Collection[int] = (403, 429),
    is_ban: IsBan | None = None,
) -> Outcome:
    """Classify an answer.  ``gateway`` holds the gateway's own headers, lower-cased
    (:func:`header_values` of what the trust rule lets through); ``site_headers`` and ``body``
    reach only the ``is_ban`` hook."""
    ex = exit_info(gateway) if gateway else None
    err = gateway.get(_ERROR_HEADER) if gateway else None
    if err is not None:
        return _gateway_answer(status, err, ex)
    if status in ban_status_codes or (is_ban is not None and is_ban(status, site_headers, body)):
        return Outcome("ban", retry=True, exit=ex, status=status)
    return Outcome("success", exit=ex, status=status)


def classify_failure(
    failure: Failure, *, status: int | None = None, gateway: Mapping[str, str] | None = None
) -> Outcome:
    """Classify an attempt with no answer.  For :attr:`Failure.TUNNEL_REFUSED` pass the
    CONNECT answer's ``status`` and, when the stack shows them, its headers (``gateway``,
    lower-cased): a CONNECT answer is always the gateway's."""
    if failure is Failure.TUNNEL_REFUSED:
        err = gateway.get(_ERROR_HEADER) if gateway else None
        if status is not None and err is not None:
            return _gateway_answer(status, err, None)
        return _bare_connect_answer(status)
    if failure is Failure.TIMEOUT:
        return Outcome("timeout", retry=True)
    if failure is Failure.TLS:
        return Outcome(
            "tls_error",
            error=ConfigurationError(
                "the target's TLS certificate could not be verified through the gateway; "
                "pass the CA bundle that signs it (verify=...): retrying through other exits "
                "cannot help",
                param="verify",
            ),
        )
    return Outcome("connection_error", retry=True)


def _bare_connect_answer(status: int | None) -> Outcome:
    """A refused CONNECT whose ``X-Proxaro-Error`` the stack did not show: its status alone."""
    if status == 407:
        return _gateway_answer(status, protocol.ERROR_AUTH_FAILED, None)
    if status == 400:
        return _gateway_answer(status, protocol.ERROR_BAD_TARGETING, None)
    if status == 403:
        return Outcome(
            "source_not_allowed",
            error=SourceNotAllowedError(
                "the gateway refused the CONNECT with 403: this machine's address is not on the "
                "allowlist, or ASN targeting needs the Growth plan",
                status=403,
                error=None,
            ),
            status=403,
        )
    if status == 504:
        return Outcome("timeout", retry=True, status=status)
    # A bare 502 (no_exit or exit_failed, the header lost), another 5xx, or no status at all.
    return Outcome("exit_failure", retry=True, status=status)


def classify(
    status: int | None = None,
    headers: Any = None,
    exception: BaseException | None = None,
    body: Any = None,
    *,
    ban_status_codes: Collection[int] = (403, 429),
    is_ban: IsBan | None = None,
) -> Outcome:
    """Classify a plain-HTTP answer (``status`` and its ``headers``, whose ``X-Proxaro-*``
    are the gateway's) or, failing that, an ``exception`` of the standard library.

    Integrations use :mod:`proxaro_scrape.gateway.edge` instead, which applies the trust rule
    for tunnels and maps each stack's exceptions by an explicit table.  Here only the standard
    library's exceptions are known: ``TimeoutError`` is a timeout, a certificate-verification
    failure in the chain is ``tls_error``, anything else a connection error.
    """
    if status is None:
        if exception is None:
            raise ValueError("classify() needs a status or an exception")
        return classify_failure(stdlib_failure(exception))
    return classify_answer(
        status,
        header_values(headers),
        site_headers=headers,
        body=body,
        ban_status_codes=ban_status_codes,
        is_ban=is_ban,
    )


def stdlib_failure(exc: BaseException) -> Failure:
    """:class:`Failure` of a standard-library exception (a certificate failure in the chain
    first, then ``TimeoutError``, else a connection error)."""
    if cause_in_chain(exc, ssl.SSLCertVerificationError) is not None:
        return Failure.TLS
    # asyncio.TimeoutError is TimeoutError from Python 3.11 on, a class of its own before.
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return Failure.TIMEOUT
    return Failure.CONNECTION


def cause_in_chain(
    exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s chain: ``__cause__``, ``__context__``,
    and the wrappers' usual attributes (``reason``, ``original_error``, exception ``args``)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, types):
            return cur
        for linked in (
            cur.__cause__,
            cur.__context__,
            getattr(cur, "reason", None),
            getattr(cur, "original_error", None),
            *getattr(cur, "args", ()),
        ):
            if isinstance(linked, BaseException):
                stack.append(linked)
    return None


def _gateway_answer(status: int, err: str, ex: ExitInfo | None) -> Outcome:
    where = f"the gateway answered {status} {err}"
    if err == protocol.ERROR_AUTH_FAILED:
        return Outcome(
            "stale_credentials", retry=True, refresh=True, exit=ex, status=status, gateway_error=err
        )
    if err == protocol.ERROR_NO_EXIT:
        return Outcome("region_dead", retry=True, exit=ex, status=status, gateway_error=err)
    if err == protocol.ERROR_EXIT_FAILED:
        return Outcome("exit_failure", retry=True, exit=ex, status=status, gateway_error=err)
    if err == protocol.ERROR_TARGET_TIMEOUT:
        return Outcome("timeout", retry=True, exit=ex, status=status, gateway_error=err)
    error: ProxaroError
    if err == protocol.ERROR_BAD_TARGETING:
        kind = "bad_targeting"
        error = BadTargetingError(
            f"{where}: the targeting in the username is malformed or unknown (a bug; not retried)",
            status=status,
            error=err,
        )
    elif err == protocol.ERROR_SOURCE_NOT_ALLOWED:
        kind = "source_not_allowed"
        error = SourceNotAllowedError(
            f"{where}: this machine's address is not on the account's allowlist; add it with "
            f"client.allowlist.add(...) or the dashboard",
            status=status,
            error=err,
        )
    elif err == protocol.ERROR_SCOPE_REQUIRED:
        kind = "scope_required"
        error = ScopeRequiredError(
            f"{where}: ASN targeting needs the Growth plan or above", status=status, error=err
        )
    elif err == protocol.ERROR_TARGET_NOT_ALLOWED:
        kind = "bad_targeting"
        error = GatewayError(
            f"{where}: the sandbox gateway only reaches loopback targets", status=status, error=err
        )
    elif status >= 500:
        # An error code this client does not know yet: a server-side failure is worth a retry.
        return Outcome("exit_failure", retry=True, exit=ex, status=status, gateway_error=err)
    else:
        kind = "bad_targeting"
        error = GatewayError(f"{where}", status=status, error=err)
    return Outcome(kind, error=error, exit=ex, status=status, gateway_error=err)
