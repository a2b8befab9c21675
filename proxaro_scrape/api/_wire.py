"""The REST client's own HTTP/1.1 transport: ``http.client`` under httpx's request and response.

The API is a handful of small JSON calls to one host.  httpx's default transport sends them
through httpcore, which imports h11 and anyio with it: some 25 ms of CPU that every process
using the client paid at start (a Scrapy crawl's whole start-up budget is 50 ms).  This
transport sends the same requests with the standard library's ``http.client``, and owns the
one thing httpcore could only be patched into: **the call's deadline bounds every socket
operation** (connect, TLS handshake, each write, each read), so a server that trickles its
answer a byte at a time cannot stretch a call past its timeout.

- Keep-alive: idle connections are kept per origin (at most :data:`MAX_IDLE` each) and checked
  before reuse; a reused connection the server closed meanwhile is replaced once, before any
  answer was read (the server never saw that request).
- Timeouts come from the request's ``timeout`` extension, as httpx sets it (connect, read,
  write), each clamped to what is left of :func:`~._deadline.deadline_scope`'s deadline.
- Failures are httpx's exceptions (``ConnectTimeout``, ``ReadTimeout``, ``ConnectError``,
  ``RemoteProtocolError``...), so the client maps them as it maps any transport's.
- TLS: ``verify`` as httpx takes it (``True``: certifi's roots, loaded at the first TLS
  connection; an ``ssl.SSLContext``; never ``False`` from this package).
- The body is read whole and handed over raw: the client decodes gzip and the like, once.
"""

from __future__ import annotations

import contextvars
import http.client
import io
import select
import socket
import ssl
import threading
import time
from typing import Any

import httpx

__all__ = ["MAX_IDLE", "DEADLINE", "WireTransport"]

#: Idle keep-alive connections kept per origin.
MAX_IDLE = 8
#: The ``time.monotonic()`` by which the call being sent must end (``None``: no deadline).
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "proxaro_api_deadline", default=None
)

_TIMEOUTS: dict[str, type[httpx.TimeoutException]] = {
    "connect": httpx.ConnectTimeout,
    "write": httpx.WriteTimeout,
    "read": httpx.ReadTimeout,
}
_ERRORS: dict[str, type[httpx.TransportError]] = {
    "connect": httpx.ConnectError,
    "write": httpx.WriteError,
    "read": httpx.ReadError,
}


class _Expired(Exception):
    """The call's deadline passed before a socket operation of ``phase``."""

    def __init__(self, phase: str) -> None:
        super().__init__("the API call's deadline passed")
        self.phase = phase


def _bound(timeout: float | None, phase: str) -> float | None:
    """``timeout`` clamped to what is left of the deadline; :class:`_Expired` when none is."""
    deadline = DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Expired(phase)
    return left if timeout is None else min(timeout, left)


class _Reader(io.RawIOBase):
    """The socket's read side, each ``recv`` bounded by the read timeout and the deadline."""

    def __init__(self, owner: _Socket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        owner = self._owner
        owner.sock.settimeout(_bound(owner.timeouts.get("read"), "read"))
        n = owner.sock.recv_into(buffer)
        owner.received += n
        return n


class _Socket:
    """What ``http.client`` uses of a socket, with every operation bounded (see above)."""

    def __init__(self, sock: socket.socket, timeouts: dict[str, float | None]) -> None:
        self.sock = sock
        self.timeouts = timeouts
        #: Bytes read since the current request was sent.
        self.received = 0

    def sendall(self, data: bytes) -> None:
        self.received = 0
        self.sock.settimeout(_bound(self.timeouts.get("write"), "write"))
        self.sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        assert mode == "rb"
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self.sock.close()


class _Connection(http.client.HTTPConnection):
    """One keep-alive connection to an origin, made and used under the deadline."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port)
        self._tls = tls
        self.timeouts: dict[str, float | None] = {}
        self.used = False

    def connect(self) -> None:
        timeout = _bound(self.timeouts.get("connect"), "connect")
        sock = socket.create_connection((self.host, self.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock.settimeout(_bound(self.timeouts.get("connect"), "connect"))
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _Socket(sock, self.timeouts)

    @property
    def received(self) -> int:
        """Bytes of an answer read since the current request was sent."""
        return self.sock.received if isinstance(self.sock, _Socket) else 0

    def stale(self) -> bool:
        """Whether the idle connection was closed (or written to) by the server meanwhile."""
        wrapped = self.sock
        if not isinstance(wrapped, _Socket):
            return True
        try:
            readable, _, _ = select.select([wrapped.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class WireTransport(httpx.BaseTransport):
    """An httpx transport over ``http.client``: see the module's docstring."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        self._verify = verify
        self._tls: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts: dict[str, float | None] = dict(request.extensions.get("timeout") or {})
        body = request.read()
        target = url.raw_path.decode("ascii")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        while True:
            conn = self._checkout(origin, request)
            reused = conn.used
            conn.timeouts.clear()
            conn.timeouts.update(timeouts)
            phase = "connect" if conn.sock is None else "write"
            try:
                if conn.sock is None:
                    conn.connect()
                    phase = "write"
                conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                phase = "read"
                answer = conn.getresponse()
                content = answer.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                unanswered = conn.received == 0
                conn.close()
                if reused and unanswered:
                    # The server closed it while idle (its close crossed our send): it never
                    # read this request, which goes once more, on a new connection.
                    continue
                raise self._error(exc, phase, request) from exc
            except BaseException as exc:
                conn.close()
                if isinstance(exc, Exception):
                    raise self._error(exc, phase, request) from exc
                raise
            break
        conn.used = True
        if answer.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        return httpx.Response(
            answer.status,
            headers=answer.getheaders(),
            stream=httpx.ByteStream(content),
            extensions={
                "http_version": b"HTTP/1.1" if answer.version == 11 else b"HTTP/1.0",
                "reason_phrase": answer.reason.encode("latin-1", "replace"),
            },
        )

    def _error(self, exc: Exception, phase: str, request: httpx.Request) -> httpx.TransportError:
        if isinstance(exc, _Expired):
            return _TIMEOUTS[exc.phase](str(exc), request=request)
        if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
            return _TIMEOUTS[phase](f"timed out {phase}ing", request=request)
        if isinstance(exc, (http.client.HTTPException, UnicodeError)):
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return httpx.RemoteProtocolError(message, request=request)
        if isinstance(exc, OSError):  # refused, reset, TLS (ssl.SSLError is an OSError)
            return _ERRORS[phase](f"{type(exc).__name__}: {exc}", request=request)
        raise exc

    def _checkout(self, origin: tuple[str, str, int], request: httpx.Request) -> _Connection:
        with self._lock:
            if self._closed:
                raise httpx.ConnectError("the client is closed", request=request)
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                if not conn.stale():
                    return conn
                conn.close()
        scheme, host, port = origin
        return _Connection(host, port, self._tls_context() if scheme == "https" else None)

    def _checkin(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        with self._lock:
            if not self._closed:
                idle = self._idle.setdefault(origin, [])
                if len(idle) < MAX_IDLE:
                    idle.append(conn)
                    return
        conn.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            # httpx's own defaults (certifi's roots), made once, at the first TLS connection.
            self._tls = httpx.create_ssl_context(verify=self._verify)
        return self._tls

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
