"""Scrapy's and Twisted's download exceptions, mapped onto the core's failure vocabulary.

ONE table, read top to bottom (the first row whose types match wins), as httpx maps
httpcore's exceptions: the core never guesses from a class name or a message.  An exception no
row matches (a cancelled download, ``DOWNLOAD_MAXSIZE`` exceeded, a bug in a callback...) is
not the gateway's business and is left to Scrapy.

============================================  =====================  ==========================
exception                                      failure                why
============================================  =====================  ==========================
:class:`ProxaroTunnelError` / ``TunnelError``  ``TUNNEL_REFUSED``     the gateway refused the
                                                                      CONNECT (status, headers
                                                                      when our handler read it)
a certificate-verification failure (below)     ``TLS``                no exit can fix it
``DownloadTimeoutError``, Twisted's            ``TIMEOUT``            gateway, exit or site slow
``TimeoutError``, ``defer.TimeoutError``,
``TCPTimedOutError``
``DownloadConnectionRefusedError``,            ``CONNECTION``         refused, reset, closed
``DownloadFailedError``, ``ResponseFailed``,                          early or a broken answer
``ResponseDataLossError``,
``CannotResolveHostError``, ``ConnectError``,
``ConnectionLost``, ``ConnectionDone``
============================================  =====================  ==========================

A certificate-verification failure, by type along the chain (``__cause__``, ``__context__``
and the ``reasons`` of Twisted's ``ResponseFailed``): ``ssl.SSLCertVerificationError``,
``service_identity``'s ``VerificationError`` (the name does not match), or an
``OpenSSL.SSL.Error`` whose OpenSSL reason is ``certificate verify failed`` (pyOpenSSL has no
subclass for it; the reason is OpenSSL's error code text, not a message meant for people).
Scrapy verifies certificates only with ``DOWNLOAD_VERIFY_CERTIFICATES = True``.
"""

from __future__ import annotations

import ssl
from typing import Any

from scrapy.core.downloader.handlers.http11 import TunnelError
from twisted.internet import defer
from twisted.internet import error as tx_error
from twisted.web.client import ResponseFailed

from proxaro_scrape.gateway.edge import Failure, FailureTable, failure_of

from ._handler import ProxaroTunnelError

__all__ = ["FAILURES", "TLS_VERIFY_REASON", "failure_of_scrapy", "tunnel_answer"]


def _scrapy_exceptions(*names: str) -> tuple[type[BaseException], ...]:
    # Scrapy >= 2.14 wraps Twisted's exceptions in its own; 2.13 raises Twisted's directly.
    import scrapy.exceptions

    return tuple(getattr(scrapy.exceptions, n) for n in names if hasattr(scrapy.exceptions, n))


#: The table (see the module docstring).
FAILURES: FailureTable = (
    (TunnelError, Failure.TUNNEL_REFUSED),
    (
        (
            *_scrapy_exceptions("DownloadTimeoutError"),
            tx_error.TimeoutError,
            defer.TimeoutError,
            tx_error.TCPTimedOutError,
        ),
        Failure.TIMEOUT,
    ),
    (
        (
            *_scrapy_exceptions(
                "DownloadConnectionRefusedError",
                "DownloadFailedError",
                "ResponseDataLossError",
                "CannotResolveHostError",
            ),
            ResponseFailed,
            tx_error.ConnectError,
            tx_error.ConnectionLost,
            tx_error.ConnectionDone,
        ),
        Failure.CONNECTION,
    ),
)

#: pyOpenSSL's reason text for OpenSSL's ``X509_V_*`` verification failure.
TLS_VERIFY_REASON = "certificate verify failed"


def _tls_verify_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ssl.SSLCertVerificationError]
    try:
        from service_identity.exceptions import VerificationError
    except ImportError:  # pragma: no cover - a Twisted without TLS extras
        pass
    else:
        types.append(VerificationError)
    return tuple(types)


_TLS_TYPES = _tls_verify_types()


def _openssl_error() -> type[BaseException] | None:
    try:
        from OpenSSL.SSL import Error
    except ImportError:  # pragma: no cover - a Twisted without TLS extras
        return None
    return Error  # type: ignore[no-any-return]


_OPENSSL_ERROR = _openssl_error()


def _is_tls_verify_failure(exc: BaseException) -> bool:
    if isinstance(exc, _TLS_TYPES):
        return True
    if _OPENSSL_ERROR is not None and isinstance(exc, _OPENSSL_ERROR):
        # args[0]: [(library, function, reason), ...] as pyOpenSSL reports OpenSSL's queue.
        queue = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        return any(
            isinstance(entry, tuple) and len(entry) == 3 and entry[2] == TLS_VERIFY_REASON
            for entry in queue
        )
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception linked to it, Twisted's ``ResponseFailed.reasons`` too."""
    out: list[BaseException] = []
    seen: set[int] = set()
    stack = [exc]
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        out.append(cur)
        linked: list[Any] = [cur.__cause__, cur.__context__]
        if isinstance(cur, ResponseFailed):
            linked.extend(getattr(reason, "value", None) for reason in cur.reasons)
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return out


def failure_of_scrapy(exc: BaseException) -> Failure | None:
    """The :class:`~proxaro_scrape.gateway.edge.Failure` that ``exc`` stands for, or ``None``
    when it is not the gateway's business (see the module docstring)."""
    if any(_is_tls_verify_failure(e) for e in _chain(exc)):
        return Failure.TLS
    return failure_of(exc, FAILURES)


def tunnel_answer(exc: BaseException) -> tuple[int | None, Any]:
    """The refused CONNECT's status and gateway headers, when the handler read them."""
    if isinstance(exc, ProxaroTunnelError):
        return exc.status, exc.headers
    return None, None
