"""Outcome classification: what one answer (or failure) through the gateway means.

ONE function, :func:`classify`, turns what a client stack saw (status, headers, exception, body)
into an :class:`Outcome`: its ``kind``, whether to ``retry``, whether to ``refresh`` the
credentials first, the ``error`` to raise otherwise, and the real exit (:class:`ExitInfo`, from
the gateway's ``X-Proxaro-Exit-*`` headers).  It is pure: no I/O, no clock, no state.  The
per-request state machine (``RequestRouting.observe``) refines ``retry`` with the attempt budget
and the credential versions.

The rules (``shared/gateway-protocol.md`` section 3):

========================================  ====================  ======  =======
what came back                             kind                  retry   refresh
========================================  ====================  ======  =======
407 (``auth_failed``)                      stale_credentials     yes     yes
400 ``bad_targeting``                      bad_targeting         never
403 ``source_not_allowed``                 source_not_allowed    never
403 ``scope_required``                     scope_required        never
502 ``no_exit``                            region_dead           yes (failover)
502 ``exit_failed``                        exit_failure          yes (new session)
504 ``target_timeout`` / timeout error     timeout               yes (new session)
target's TLS certificate not verified      tls_error             never
other connection errors                    connection_error      yes (new session)
403/429 from the target, or ``is_ban``     ban                   yes (new session)
anything else from the target              success
========================================  ====================  ======  =======

A 403 *with* ``X-Proxaro-Error`` is the gateway's, never a ban; a 403 without it is the target
site's answer through the exit, and so a ban keyed on the exit IP the headers name.
"""

from __future__ import annotations

import re
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

__all__ = ["KINDS", "ExitInfo", "IsBan", "Outcome", "classify", "header_values"]

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
# A status in a failed CONNECT's message, most explicit form first (never a port or an address).
_STATUS_IN_TEXT = (
    re.compile(r"status['\"]?\s*[:=]\s*([1-5][0-9]{2})\b"),
    re.compile(r"(?<![\d.:])([45][0-9]{2})\s+[A-Z][A-Za-z]"),
    re.compile(r"(?<![\d.:])([45][0-9]{2})(?![\d.:])"),
)


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
    """The gateway's own headers (lower-cased names) from any client stack's header object.

    Accepts a plain dict (any case), ``httpx.Headers``, ``requests``' case-insensitive dict,
    aiohttp's multidict, Scrapy's ``Headers`` (bytes, list values) or a list of pairs.
    """
    if not headers:
        return {}
    items: Any = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for key, value in items:
        name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        name = name.lower()
        if name not in _WANTED:
            continue
        if isinstance(value, (list, tuple)):
            if not value:
                continue
            value = value[-1]
        out[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return out


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


def classify(
    status: int | None = None,
    headers: Any = None,
    exception: BaseException | None = None,
    body: Any = None,
    *,
    ban_status_codes: Collection[int] = (403, 429),
    is_ban: IsBan | None = None,
) -> Outcome:
    """Classify one attempt's answer.  See the module docstring for the table.

    Pass ``status`` and ``headers`` of the answer, or ``exception`` when there was none.  For a
    failed ``CONNECT`` pass the CONNECT answer's status and headers when the stack exposes them;
    otherwise the exception alone is enough: a status in its message ("Tunnel connection failed:
    407 ...") is recognised.
    """
    if status is None:
        if exception is None:
            raise ValueError("classify() needs a status or an exception")
        return _classify_exception(exception)
    values = header_values(headers)
    ex = exit_info(values)
    err = values.get(_ERROR_HEADER)
    if err is not None:
        return _gateway_answer(status, err, ex)
    if status == 407:
        # Only the gateway asks for proxy auth; a 407 without the header is still ours.
        return _gateway_answer(status, protocol.ERROR_AUTH_FAILED, ex)
    if status in ban_status_codes or (is_ban is not None and is_ban(status, headers, body)):
        return Outcome("ban", retry=True, exit=ex, status=status)
    return Outcome("success", exit=ex, status=status)


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


def _status_of(exc: BaseException) -> int | None:
    """The proxy's status carried by a failed-CONNECT exception: an attribute (aiohttp's
    ``ClientHttpProxyError.status``) or the message (httpx, requests, Scrapy)."""
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break classification
        return None
    for pattern in _STATUS_IN_TEXT:
        match = pattern.search(text)
        if match is not None:
            return int(match.group(1))
    return None


def tls_failure(exc: BaseException) -> BaseException | None:
    """The certificate-verification failure in ``exc``'s chain, if any.

    Every exit would present the same certificate, so sending again cannot help: the caller's
    trust store lacks the CA (or the site's certificate is bad).
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(
            cur, ssl.SSLCertVerificationError
        ) or "CERTIFICATE_VERIFY_FAILED" in _safe_str(cur):
            return cur
        stack.extend(
            e
            for e in (cur.__cause__, cur.__context__, getattr(cur, "reason", None))
            if isinstance(e, BaseException)
        )
        stack.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
    return None


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break classification
        return ""


def _classify_exception(exc: BaseException) -> Outcome:
    tls = tls_failure(exc)
    if tls is not None:
        error = ConfigurationError(
            "the target's TLS certificate could not be verified through the gateway "
            f"({type(tls).__name__}); pass the CA bundle that signs it (verify=...) — "
            "retrying through other exits cannot help",
            param="verify",
        )
        error.__cause__ = tls
        return Outcome("tls_error", error=error)
    names = [cls.__name__.lower() for cls in type(exc).__mro__]
    proxy = any("proxy" in n or "tunnel" in n for n in names)
    if proxy:
        # A failed CONNECT: httpx.ProxyError, requests' ProxyError, Scrapy's TunnelError carry
        # the gateway's status in their message but not its headers.
        status = _status_of(exc)
        if status is not None:
            if status == 407:
                return _gateway_answer(status, protocol.ERROR_AUTH_FAILED, None)
            if status == 400:
                return _gateway_answer(status, protocol.ERROR_BAD_TARGETING, None)
            if status == 403:
                out = _gateway_answer(status, protocol.ERROR_SOURCE_NOT_ALLOWED, None)
                return Outcome(
                    out.kind,
                    error=SourceNotAllowedError(
                        "the gateway refused the CONNECT with 403: this machine's address is "
                        "not on the allowlist, or ASN targeting needs the Growth plan",
                        status=403,
                        error=None,
                    ),
                    status=403,
                )
            if status == 504:
                return Outcome("timeout", retry=True, status=status)
            if status >= 500:
                return Outcome("exit_failure", retry=True, status=status)
    if any("timeout" in n for n in names):
        return Outcome("timeout", retry=True)
    return Outcome("connection_error", retry=True)
