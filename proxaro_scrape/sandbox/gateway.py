"""The sandbox gateway: a real HTTP forward proxy on loopback, on asyncio streams.

It speaks the Proxaro gateway protocol (``shared/gateway-protocol.md``) as the real gateway
would, against the sandbox :class:`~proxaro_scrape.sandbox.world.World`:

- plain-HTTP forward proxying of absolute-form requests, keep-alive on both sides (an idle pool
  of upstream connections per exit and target), ``Content-Length``, chunked and read-until-close
  bodies relayed as they stream, in both directions; ``CONNECT`` tunnels for HTTPS;
- ``Proxy-Authorization: Basic`` checked on every plain request and at the start of every
  tunnel, so that one client connection may carry several usernames (targetings);
- targeting decoded by :mod:`proxaro_scrape.sandbox.targeting` (the one decoder), exits chosen
  among the world's live exits with the world's seeded ``gateway_rng``, the outgoing
  connection bound to the exit's ``127.x.y.z`` address so the target sees one client address
  per exit, sticky sessions kept for ``sesstime`` minutes of world time;
- every answer of its own carries ``X-Proxaro-Error`` (protocol section 3); proxied responses
  and ``200 Connection established`` carry ``X-Proxaro-Exit-*`` (section 4);
- bytes of each request / tunnel go to ``world.record_session`` (usage and ``/v1/sessions``);
- safety: only loopback targets are reached.  Any other host is refused at once with 403
  ``target_not_allowed``, decided from the literal host: the gateway never resolves a name.

Choices the protocol leaves open, made here:

- Order of checks: source allowlist (403), auth (407), targeting (400), ASN scope (403),
  target host (403), exit (502 ``no_exit``), exit failures (502 ``exit_failed``), target
  (504 ``target_timeout`` after ``world.knobs.target_timeout`` real seconds, covering the
  connect and the wait for the response head; a CONNECT times out on the connect only).
- Degraded ASNs: a request whose targeting names no ASN is served by healthy exits when any
  match, as a real pool routes around trouble; degraded exits serve it only when nothing healthy
  matches, or when the targeting names the ASN.  A degraded exit fails
  ``world.degraded_failure_rate`` of its requests with 502 ``exit_failed``.
- A sticky session keeps its exit for ``sesstime`` minutes from its first request.  If that exit
  dies (its country or ASN goes down) the session answers 502 ``exit_failed`` once and is
  forgotten, so the next request with the same id gets a new exit (or ``no_exit``).
- A target that refuses the connection or drops it before answering: 502 ``exit_failed``.
- ``gateway.requests`` counts every plain-HTTP request received (errors included);
  ``gateway.tunnels`` counts tunnels established (``200 Connection established`` sent);
  ``gateway.connections_closed`` counts client connections ended (``gateway.connections``
  minus it: the connections open now).
- Malformed HTTP from a client (not a Proxaro answer): 400 with ``X-Proxaro-Error:
  bad_request``, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import logging
import operator
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from proxaro_scrape import protocol
from proxaro_scrape.sandbox.targeting import (
    Targeting,
    TargetingError,
    base_username,
    check_against_pool,
    parse_username,
)
from proxaro_scrape.sandbox.world import Asn, Country, Exit, SessionRecord, World

__all__ = ["GatewayServer"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_POOL_HEALTH = operator.attrgetter("pool_health")
#: Two Crockford base32 digits per 10 bits: a 26-digit (130-bit) id in 13 lookups.
_CROCKFORD_PAIRS = [
    a + b for a in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" for b in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
]
_PAIR_SHIFTS = tuple(range(120, -1, -10))

#: Sandbox-only answer to HTTP that cannot be parsed (never produced by a real client library).
ERROR_BAD_REQUEST = "bad_request"

_HEAD_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024
#: Bodies up to this size are read whole and written with their head in one go.
_SMALL_BODY = 64 * 1024
#: Idle upstream connections: kept this many real seconds, so many per (exit, target), and in
#: all at most this many, or a quarter of the process's file-descriptor limit if that is lower
#: (the demo site, in the same process, holds the other end of each).
_IDLE_SECONDS = 15.0
_IDLE_PER_KEY = 64
_IDLE_TOTAL = 2048
#: Sticky sessions remembered at most (the oldest are forgotten first beyond this).
_STICKY_MAX = 200_000
_USERNAME_CACHE_MAX = 4096
#: Linux's IP_BIND_ADDRESS_NO_PORT (absent elsewhere).
_BIND_NO_PORT: int | None = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)

# Hop-by-hop headers (RFC 9110, 7.6.1) and the proxy's own: never forwarded either way.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}

_MESSAGES = {
    protocol.ERROR_AUTH_FAILED: "wrong, missing or expired gateway credentials",
    protocol.ERROR_SOURCE_NOT_ALLOWED: "the source address is not on the account's allowlist",
    protocol.ERROR_SCOPE_REQUIRED: "ASN targeting needs the Growth plan or above",
    protocol.ERROR_NO_EXIT: "no live exit for this targeting",
    protocol.ERROR_EXIT_FAILED: "the exit dropped the connection",
    protocol.ERROR_TARGET_TIMEOUT: "the target did not answer in time",
    protocol.ERROR_TARGET_NOT_ALLOWED: "the sandbox gateway only reaches loopback targets",
    ERROR_BAD_REQUEST: "malformed HTTP request",
}

_STATUS = dict(protocol.GATEWAY_ERROR_STATUS)
_STATUS[ERROR_BAD_REQUEST] = 400


class _BadRequest(Exception):
    """The client sent HTTP the gateway cannot parse."""


class _Refusal(Exception):
    """The gateway answers with an ``X-Proxaro-Error`` of its own."""

    def __init__(self, code: str, message: str | None = None, choice: _Choice | None = None):
        super().__init__(code)
        self.code = code
        self.message = message or _MESSAGES[code]
        self.choice = choice


class _UpstreamGone(Exception):
    """A pooled upstream connection turned out closed before answering (safe to retry)."""


if sys.version_info >= (3, 11):

    async def _within(delay: float, aw: Awaitable[T]) -> T:
        async with asyncio.timeout(delay):
            return await aw

else:  # pragma: no cover - Python 3.10

    async def _within(delay: float, aw: Awaitable[T]) -> T:
        return await asyncio.wait_for(aw, delay)


class _Head:
    """A parsed request or response head: first line's parts and headers as received."""

    __slots__ = ("first", "headers", "index")

    def __init__(
        self,
        first: tuple[bytes, bytes, bytes],
        headers: list[tuple[bytes, bytes, bytes]],
        index: dict[bytes, bytes],
    ) -> None:
        self.first = first
        #: (name as sent, lower-case name, value), in order.
        self.headers = headers
        #: Lower-case name -> value (repeated names joined with ", ").
        self.index = index

    def get(self, name: bytes) -> bytes | None:
        return self.index.get(name)

    def tokens(self, name: bytes) -> set[bytes]:
        value = self.index.get(name)
        if not value:
            return set()
        return {t.strip().lower() for t in value.split(b",")}


def _parse_head(raw: bytes) -> _Head:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) == 2 and parts[0].startswith(b"HTTP/"):
        parts.append(b"")  # a status line may leave the reason out
    if len(parts) != 3:
        raise _BadRequest("bad first line")
    headers: list[tuple[bytes, bytes, bytes]] = []
    index: dict[bytes, bytes] = {}
    for line in lines[1:]:
        i = line.find(b":")
        # No empty name, and no whitespace before the colon (RFC 9112, 5.1: reject).
        if i <= 0 or line[i - 1] in b" \t":
            raise _BadRequest("bad header line")
        name = line[:i]
        value = line[i + 1 :].strip()
        low = name.lower()
        headers.append((name, low, value))
        if low in index:
            index[low] += b", " + value
        else:
            index[low] = value
    return _Head((parts[0], parts[1], parts[2]), headers, index)


@dataclass
class _Choice:
    """The exit serving one request or tunnel, and its sticky session if any."""

    exit: Exit
    sticky: _Sticky | None = None

    def header_lines(self) -> list[bytes]:
        lines = _exit_header_lines(self.exit)
        if self.sticky is not None:
            return [*lines, b"%s: %s" % (_SESSION_HEADER, self.sticky.id.encode())]
        return lines

    def header_block(self) -> bytes:
        """:meth:`header_lines` as they go into a head: each line ended by CRLF."""
        block = _exit_header_block(self.exit)
        if self.sticky is not None:
            return block + b"%s: %s\r\n" % (_SESSION_HEADER, self.sticky.id.encode())
        return block


_SESSION_HEADER = protocol.HEADER_SESSION.encode()
_EXIT_HEADER_CACHE: dict[Exit, list[bytes]] = {}


def _exit_header_lines(ex: Exit) -> list[bytes]:
    """The ``X-Proxaro-Exit-*`` lines of an exit (built once per exit: exits never change)."""
    lines = _EXIT_HEADER_CACHE.get(ex)
    if lines is None:
        lines = [
            b"%s: %s" % (protocol.HEADER_EXIT_IP.encode(), ex.ip.encode()),
            b"%s: %s" % (protocol.HEADER_EXIT_COUNTRY.encode(), ex.country.encode()),
            b"%s: %s" % (protocol.HEADER_EXIT_ASN.encode(), ex.asn.encode()),
            b"%s: %s" % (protocol.HEADER_EXIT_CLASS.encode(), ex.exit_class.encode()),
        ]
        if len(_EXIT_HEADER_CACHE) < 100_000:
            _EXIT_HEADER_CACHE[ex] = lines
    return lines


_EXIT_BLOCK_CACHE: dict[Exit, bytes] = {}


def _exit_header_block(ex: Exit) -> bytes:
    block = _EXIT_BLOCK_CACHE.get(ex)
    if block is None:
        block = b"".join(line + b"\r\n" for line in _exit_header_lines(ex))
        if len(_EXIT_BLOCK_CACHE) < 100_000:
            _EXIT_BLOCK_CACHE[ex] = block
    return block


#: A response head holding any of these needs the full treatment (strip or reframe).
_NOT_PLAIN = (
    b"\r\nproxy-",
    b"\r\nx-proxaro-",
    b"\r\nconnection:",
    b"\r\nkeep-alive:",
    b"\r\ntransfer-encoding:",
    b"\r\nte:",
    b"\r\ntrailer:",
    b"\r\nupgrade:",
)


def _plain_length(raw: bytes) -> int | None:
    """The Content-Length of a response head that can be relayed as it is, else ``None``.

    Plain: HTTP/1.1, a final status other than 101, exactly one valid Content-Length, and no
    header the gateway must strip (hop-by-hop, ``Proxy-*``, ``X-Proxaro-*``).
    """
    if not raw.startswith(b"HTTP/1.1 ") or raw[9:12] == b"101":
        return None
    low = raw.lower()
    for marker in _NOT_PLAIN:
        if marker in low:
            return None
    i = low.find(b"\r\ncontent-length:")
    if i < 0 or low.find(b"\r\ncontent-length:", i + 17) >= 0:
        return None
    value = raw[i + 17 : raw.index(b"\r\n", i + 2)].strip()
    return int(value) if value.isdigit() else None


@dataclass
class _Sticky:
    """A live sticky session: its exit until ``expires_at`` (world time)."""

    id: str
    exit: Exit
    expires_at: float
    record: SessionRecord | None = None


class _Upstream:
    """One connection from an exit's bind address to a target."""

    __slots__ = ("key", "reader", "writer", "idle_since", "expired")

    def __init__(
        self, key: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.expired = False

    def expire(self) -> None:
        """The target took too long: drop the connection (the waiting read then fails)."""
        self.expired = True
        self.writer.transport.abort()

    def usable(self, now: float) -> bool:
        return (
            now - self.idle_since < _IDLE_SECONDS
            and not self.reader.at_eof()
            and not self.writer.transport.is_closing()
        )

    def close(self) -> None:
        self.writer.transport.abort()


_LOOPBACK_CACHE: dict[str, str | None] = {}


def _loopback_host(host: str) -> str | None:
    """The IP literal to connect to, or ``None`` when ``host`` is not loopback.

    Decided from the literal alone: ``localhost`` is 127.0.0.1, an IP literal must be in
    127.0.0.0/8 or be ::1, and any other name is refused without being resolved.
    """
    if host in _LOOPBACK_CACHE:
        return _LOOPBACK_CACHE[host]
    low = host.lower()
    result: str | None
    if low == "localhost":
        result = "127.0.0.1"
    else:
        try:
            addr = ipaddress.ip_address(low)
        except ValueError:
            result = None
        else:
            result = str(addr) if addr.is_loopback else None
    if len(_LOOPBACK_CACHE) >= 4096:
        _LOOPBACK_CACHE.clear()
    _LOOPBACK_CACHE[host] = result
    return result


def _decode_basic(value: bytes) -> tuple[str, str] | str:
    """``Basic base64(user:pass)`` -> (user, pass), or a message saying what is wrong."""
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"basic":
        return "only Basic proxy auth is supported"
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "malformed Basic credentials"
    username, sep, password = decoded.partition(":")
    if not sep:
        return "malformed Basic credentials"
    return username, password


def _split_authority(authority: bytes, default_port: int) -> tuple[str, int]:
    """``host[:port]`` / ``[v6]:port`` -> (host, port); userinfo is dropped."""
    text = authority.decode("latin-1").rpartition("@")[2]
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _BadRequest("bad IPv6 authority")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _BadRequest("bad authority")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _BadRequest("empty host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _BadRequest("bad port")
    return host, int(port_text)


class GatewayServer:
    """The sandbox's forward proxy.  See the module docstring.

    >>> gw = GatewayServer(world)            # doctest: +SKIP
    >>> await gw.start(); print(gw.port)     # doctest: +SKIP
    >>> await gw.close()                     # doctest: +SKIP

    It touches the world only from its own event loop (the sandbox's loop).
    """

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0) -> None:
        self.world = world
        self.host = host
        self._port = port
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: dict[tuple[str, str, int], list[_Upstream]] = {}
        self._idle_count = 0
        self._sticky: dict[tuple[object, ...], _Sticky] = {}
        self._usernames: dict[str, Targeting | TargetingError] = {}
        #: Proxy-Authorization value -> (username, password), or why it is malformed.
        self._auth_cache: dict[bytes, tuple[str, str] | str] = {}
        self._exit_classes = {code: list(c.exit_classes) for code, c in world.countries.items()}
        # Pool view cache, rebuilt whenever the world's health fingerprint changes.
        self._fingerprint: list[str] = []
        self._health_of: list[Country | Asn] = []
        self._health_shape: tuple[int, int] = (-1, -1)
        self._down_countries: set[str] = set()
        self._asn_health: dict[str, str] = {}
        self._live: dict[tuple[str | None, ...], list[Exit]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._bind_ok = True
        self._pending_usage: dict[tuple[str, str], int] = {}
        self._turn_scheduled = False
        self._view_checked = False
        # Session ids draw from their own generator: the gateway_rng sequence (exit choices,
        # failures) stays the same whatever the accounting does.
        self._id_rng = random.Random(world.seed * 65537 + 3)
        self._idle_total = _IDLE_TOTAL
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft != resource.RLIM_INFINITY:
                self._idle_total = max(16, min(_IDLE_TOTAL, soft // 4))
        except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
            pass

    @property
    def port(self) -> int:
        """The port bound (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen on ``host:port`` (0 = a free port)."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=_HEAD_LIMIT, backlog=1024
        )
        self._port = self.port
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Stop listening and end every client connection, tunnel and upstream connection."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._flush_usage()
        self._idle_count = 0
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ pool view

    def _refresh_pool_view(self) -> None:
        """Rebuild the cached pool view if any country's or ASN's health changed.

        The health of every country and ASN is read once per loop turn that serves requests
        (whoever changed it, the controls or a test poking the world), in one C-level pass.
        Once per turn is enough: a client that saw a change answered cannot get a request in
        before the next turn.
        """
        if self._view_checked:
            return
        self._view_checked = True
        self._end_of_turn()
        world = self.world
        shape = (len(world.exits), len(world.countries))
        if shape != self._health_shape:
            self._health_shape = shape
            self._health_of = [*world.countries.values()]
            self._health_of += [a for asns in world.asns.values() for a in asns]
        fingerprint = list(map(_POOL_HEALTH, self._health_of))
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        self._down_countries = {
            code for code, c in world.countries.items() if c.pool_health == "down"
        }
        self._asn_health = {a.asn: a.pool_health for asns in world.asns.values() for a in asns}
        self._live.clear()

    def _live_exits(self, t: Targeting) -> list[Exit]:
        key = t.pool_key
        exits = self._live.get(key)
        if exits is None:
            exits = self.world.live_exits(t.country, t.city, t.asn_label, t.exit_class)
            if t.asn is None:
                healthy = [e for e in exits if self._asn_health.get(e.asn) == "healthy"]
                if healthy:
                    exits = healthy
            self._live[key] = exits
        return exits

    def _exit_alive(self, ex: Exit) -> bool:
        return ex.country not in self._down_countries and self._asn_health.get(ex.asn) != "down"

    def _choose(self, t: Targeting) -> _Choice:
        """Pick the exit for one request or tunnel (raises :class:`_Refusal`)."""
        self._refresh_pool_view()
        world = self.world
        rng = world.gateway_rng
        if t.session is None:
            exits = self._live_exits(t)
            if not exits:
                raise _Refusal(protocol.ERROR_NO_EXIT)
            choice = _Choice(exits[int(rng.random() * len(exits))])
        else:
            key = (t.base, t.session, t.pool_key)
            now = world.clock.now()
            sticky = self._sticky.get(key)
            if sticky is not None and sticky.expires_at <= now:
                del self._sticky[key]
                sticky = None
            if sticky is not None and not self._exit_alive(sticky.exit):
                del self._sticky[key]
                raise _Refusal(
                    protocol.ERROR_EXIT_FAILED, "the session's exit went offline; start a new one"
                )
            if sticky is None:
                exits = self._live_exits(t)
                if not exits:
                    raise _Refusal(protocol.ERROR_NO_EXIT)
                sticky = _Sticky(
                    t.session,
                    exits[int(rng.random() * len(exits))],
                    now + t.session_minutes * 60.0,
                )
                if len(self._sticky) >= _STICKY_MAX:
                    self._forget_sessions(now)
                self._sticky[key] = sticky
            choice = _Choice(sticky.exit, sticky)
        # The exit's own failures, drawn from the seeded gateway rng (deterministic per seed).
        if self._asn_health.get(choice.exit.asn) == "degraded":
            if rng.random() < world.degraded_failure_rate:
                raise _Refusal(protocol.ERROR_EXIT_FAILED, choice=choice)
        drop = world.knobs.exit_drop_rate
        if drop > 0 and rng.random() < drop:
            raise _Refusal(protocol.ERROR_EXIT_FAILED, choice=choice)
        return choice

    def _forget_sessions(self, now: float) -> None:
        expired = [k for k, s in self._sticky.items() if s.expires_at <= now]
        for k in expired:
            del self._sticky[k]
        while len(self._sticky) >= _STICKY_MAX:
            del self._sticky[next(iter(self._sticky))]

    # ------------------------------------------------------------------ checks

    def _targeting(self, username: str) -> Targeting:
        cached = self._usernames.get(username)
        if cached is None:
            try:
                cached = parse_username(username)
                # Countries' exit classes are static, so this check can be cached with it.
                check_against_pool(cached, self._exit_classes)
            except TargetingError as exc:
                cached = exc
            if len(self._usernames) >= _USERNAME_CACHE_MAX:
                self._usernames.clear()
            self._usernames[username] = cached
        if isinstance(cached, TargetingError):
            raise _Refusal(protocol.ERROR_BAD_TARGETING, f"{cached.param}: {cached}")
        return cached

    def _admit(self, peer: str, head: _Head) -> Targeting:
        """Source, auth, targeting and scope checks shared by requests and tunnels."""
        world = self.world
        if not world.source_allowed(peer):
            raise _Refusal(protocol.ERROR_SOURCE_NOT_ALLOWED)
        auth = head.get(b"proxy-authorization")
        if auth is None:
            raise _Refusal(protocol.ERROR_AUTH_FAILED, "Proxy-Authorization is missing")
        pair = self._auth_cache.get(auth)
        if pair is None:
            pair = _decode_basic(auth)
            if len(self._auth_cache) >= _USERNAME_CACHE_MAX:
                self._auth_cache.clear()
            self._auth_cache[auth] = pair
        if isinstance(pair, str):
            raise _Refusal(protocol.ERROR_AUTH_FAILED, pair)
        username, password = pair
        # Checked on every request: the password may have been rotated out a moment ago.
        if not world.check_gateway_auth(base_username(username), password):
            raise _Refusal(protocol.ERROR_AUTH_FAILED)
        t = self._targeting(username)
        if t.asn is not None and not world.asn_allowed():
            raise _Refusal(protocol.ERROR_SCOPE_REQUIRED)
        return t

    # ------------------------------------------------------------------ answers

    def _refusal_bytes(self, refusal: _Refusal, *, head_only: bool, close: bool) -> bytes:
        code = refusal.code
        status = _STATUS[code]
        self.world.counters[f"gateway.errors:{code}"] += 1
        self.world.note("gateway_error", error=code, status=status, message=refusal.message)
        body = f"{status} {code}: {refusal.message}\n".encode()
        lines = [
            b"HTTP/1.1 %d %s" % (status, _REASONS[status].encode()),
            b"%s: %s" % (protocol.HEADER_ERROR.encode(), code.encode()),
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: %d" % len(body),
        ]
        if code == protocol.ERROR_AUTH_FAILED:
            lines.append(b"Proxy-Authenticate: " + protocol.PROXY_AUTHENTICATE_VALUE.encode())
        if refusal.choice is not None:
            lines.extend(refusal.choice.header_lines())
        if close:
            lines.append(b"Connection: close")
        out = b"\r\n".join(lines) + b"\r\n\r\n"
        return out if head_only else out + body

    # ------------------------------------------------------------------ connections

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.world.counters["gateway.connections"] += 1
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed between requests
                except asyncio.LimitOverrunError:
                    writer.write(
                        self._refusal_bytes(
                            _Refusal(ERROR_BAD_REQUEST, "request head too large"),
                            head_only=False,
                            close=True,
                        )
                    )
                    return
                try:
                    head = _parse_head(raw)
                except _BadRequest as exc:
                    writer.write(
                        self._refusal_bytes(
                            _Refusal(ERROR_BAD_REQUEST, f"malformed HTTP request: {exc}"),
                            head_only=False,
                            close=True,
                        )
                    )
                    return
                if head.first[0] == b"CONNECT":
                    if not await self._tunnel(peer, head, reader, writer):
                        return
                elif not await self._forward(peer, head, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError, _BadRequest):
            pass  # a peer went away or broke the framing mid-body: nothing left to answer
        except asyncio.CancelledError:
            pass  # close(): end the connection
        except Exception:  # noqa: BLE001 - one bad connection must not kill the gateway
            log.exception("sandbox gateway: connection failed")
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            # With gateway.connections: how many client connections are open right now.
            self.world.counters["gateway.connections_closed"] += 1
            writer.close()

    # ------------------------------------------------------------------ plain HTTP

    async def _forward(
        self,
        peer: str,
        head: _Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Proxy one plain-HTTP request; return whether the client connection stays open."""
        world = self.world
        world.counters["gateway.requests"] += 1
        method, target, version = head.first
        is_head = method == b"HEAD"
        conn_tokens = head.tokens(b"connection") | head.tokens(b"proxy-connection")
        if version == b"HTTP/1.1":
            keep_client = b"close" not in conn_tokens
        else:
            keep_client = b"keep-alive" in conn_tokens

        # Request body framing, needed even to refuse (an unread body poisons keep-alive).
        te = head.get(b"transfer-encoding")
        chunked = False
        length = 0
        if te is not None:
            if te.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                return self._fail(writer, _Refusal(ERROR_BAD_REQUEST, "unsupported TE"), True)
            chunked = True
        else:
            cl = head.get(b"content-length")
            if cl is not None:
                values = {v.strip() for v in cl.split(b",")}
                if len(values) != 1 or not next(iter(values)).isdigit():
                    return self._fail(
                        writer, _Refusal(ERROR_BAD_REQUEST, "bad Content-Length"), True
                    )
                length = int(next(iter(values)))
        has_body = chunked or length > 0

        try:
            if not target.lower().startswith(b"http://"):
                if target.lower().startswith(b"https://"):
                    msg = "send https:// URLs through CONNECT"
                else:
                    msg = "the gateway needs an absolute http:// URL"
                raise _Refusal(protocol.ERROR_TARGET_NOT_ALLOWED, msg)
            rest = target[7:]
            cut = len(rest)
            for sep in (b"/", b"?", b"#"):
                pos = rest.find(sep)
                if 0 <= pos < cut:
                    cut = pos
            authority, path = rest[:cut], rest[cut:]
            path = path.partition(b"#")[0]
            if not path.startswith(b"/"):
                path = b"/" + path
            try:
                host, port = _split_authority(authority, 80)
            except _BadRequest as exc:
                raise _Refusal(ERROR_BAD_REQUEST, str(exc)) from None
            t = self._admit(peer, head)
            ip = _loopback_host(host)
            if ip is None:
                raise _Refusal(
                    protocol.ERROR_TARGET_NOT_ALLOWED,
                    f"{host!r} is not a loopback address; the sandbox never leaves loopback",
                )
            choice = self._choose(t)
        except _Refusal as refusal:
            return self._fail(writer, refusal, has_body or not keep_client, head_only=is_head)

        # The request head as the target gets it: origin-form, no hop-by-hop or Proxy-*.
        drop = _HOP_BY_HOP | conn_tokens
        out = [b"%s %s HTTP/1.1" % (method, path)]
        host_value = authority.rpartition(b"@")[2]
        out.append(b"Host: " + host_value)
        expect_continue = False
        for name, low, value in head.headers:
            if low in drop or low.startswith(b"proxy-") or low == b"host":
                continue
            if low == b"expect":
                # The gateway answers 100 itself, so the target never needs to.
                expect_continue = b"100-continue" in value.lower()
                continue
            out.append(name + b": " + value)
        if chunked:
            out.append(b"Transfer-Encoding: chunked")
        request_head = b"\r\n".join(out) + b"\r\n\r\n"

        if expect_continue and has_body:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        started = world.clock.now()
        loop = asyncio.get_running_loop()
        key = (choice.exit.bind, ip, port)
        timeout = world.knobs.target_timeout
        body: bytes | None = None
        if not chunked and length <= _SMALL_BODY:
            body = await reader.readexactly(length) if length else b""

        upstream: _Upstream | None = None
        sent = 0
        try:
            for attempt in (0, 1):
                # A streamed body cannot be replayed: it never risks a stale pooled connection.
                upstream = self._take_idle(key) if attempt == 0 and body is not None else None
                reused = upstream is not None
                if upstream is None:
                    try:
                        upstream = await _within(timeout, self._connect(key))
                    except asyncio.TimeoutError:
                        raise _Refusal(protocol.ERROR_TARGET_TIMEOUT, choice=choice) from None
                    except OSError as exc:
                        raise _Refusal(
                            protocol.ERROR_EXIT_FAILED,
                            f"the target refused the connection ({exc.strerror or exc})",
                            choice=choice,
                        ) from None
                # The target's time: from sending the request (once a streamed body is sent)
                # to the response head.  A timer that aborts the connection costs far less
                # than a timeout context per request.
                watch = None if body is None else loop.call_later(timeout, upstream.expire)
                try:
                    sent = await self._send_request(
                        upstream, request_head, body, reader, length, chunked
                    )
                    if watch is None:
                        watch = loop.call_later(timeout, upstream.expire)
                    rraw = await self._read_response_head(upstream, writer, reused)
                    break
                except (_UpstreamGone, ConnectionError, asyncio.IncompleteReadError, _BadRequest):
                    if upstream.expired:
                        raise _Refusal(protocol.ERROR_TARGET_TIMEOUT, choice=choice) from None
                    # A pooled connection the target had closed: resend once on a fresh one,
                    # if the request can be sent twice without harm.
                    gone = sys.exc_info()[0] is _UpstreamGone
                    if not gone or attempt == 1 or body is None or method not in _IDEMPOTENT:
                        raise _Refusal(protocol.ERROR_EXIT_FAILED, choice=choice) from None
                    upstream.close()
                    upstream = None
                finally:
                    if watch is not None:
                        watch.cancel()
            else:  # pragma: no cover - the loop always breaks or raises
                raise _Refusal(protocol.ERROR_EXIT_FAILED, choice=choice)
        except _Refusal as refusal:
            if upstream is not None:
                upstream.close()
            # The request body may be half read: keep the client only if it was consumed.
            return self._fail(
                writer, refusal, (has_body and body is None) or not keep_client, head_only=is_head
            )

        assert upstream is not None

        def account(recv: int) -> None:
            self._account(choice, started, sent, recv)

        try:
            return await self._relay_response(
                upstream, rraw, writer, choice, is_head, keep_client, account
            )
        except BaseException:
            upstream.close()
            raise

    def _fail(
        self, writer: asyncio.StreamWriter, refusal: _Refusal, close: bool, head_only: bool = False
    ) -> bool:
        writer.write(self._refusal_bytes(refusal, head_only=head_only, close=close))
        return not close

    async def _send_request(
        self,
        upstream: _Upstream,
        request_head: bytes,
        body: bytes | None,
        reader: asyncio.StreamReader,
        length: int,
        chunked: bool,
    ) -> int:
        """Write the request (head, then the body as it streams in); return bytes sent."""
        w = upstream.writer
        if body is not None:
            w.write(request_head + body if body else request_head)
            try:
                await w.drain()
            except ConnectionError:
                raise _UpstreamGone() from None
            return len(request_head) + len(body)
        w.write(request_head)
        sent = len(request_head)
        if chunked:
            sent += await _relay_chunked(reader, w)
        else:
            remaining = length
            while remaining:
                data = await reader.read(min(_READ_SIZE, remaining))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                sent += len(data)
                w.write(data)
                await w.drain()
        await w.drain()
        return sent

    async def _read_response_head(
        self, upstream: _Upstream, client: asyncio.StreamWriter, reused: bool
    ) -> bytes:
        """Read the final response head, relaying any interim 1xx answers to the client."""
        while True:
            try:
                raw = await upstream.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _UpstreamGone() from None
                raise
            except ConnectionResetError:
                if reused:
                    raise _UpstreamGone() from None
                raise
            except asyncio.LimitOverrunError:
                raise _BadRequest("response head too large") from None
            # "HTTP/1.x NNN[ reason]": checked here, the rest when the head is used.
            if not raw.startswith(b"HTTP/1.") or not raw[9:12].isdigit() or raw[12] not in b" \r":
                raise _BadRequest("bad status line")
            if raw[9:10] == b"1" and raw[9:12] != b"101":
                client.write(raw)
                continue
            return raw

    async def _relay_response(
        self,
        upstream: _Upstream,
        raw: bytes,
        writer: asyncio.StreamWriter,
        choice: _Choice,
        is_head: bool,
        keep_client: bool,
        account: Callable[[int], None],
    ) -> bool:
        """Relay the response to the client; return whether the client connection stays open.

        ``account(bytes received)`` is called before the last bytes go to the client, so that
        usage and sessions are up to date by the time the client has its answer.
        """
        status = int(raw[9:12])
        no_body = is_head or status in (204, 304)
        length = _plain_length(raw)
        chunked = False
        if length is not None:
            # The common case: nothing to strip or reframe, so the head goes out as it came,
            # with the exit's lines added.
            keep_upstream = True
            tail = b"\r\n" if keep_client else b"Connection: close\r\n\r\n"
            client_head = raw[:-2] + choice.header_block() + tail
        else:
            try:
                head = _parse_head(raw)
            except _BadRequest:
                upstream.close()
                refusal = _Refusal(protocol.ERROR_EXIT_FAILED, "malformed answer", choice)
                return self._fail(writer, refusal, not keep_client, head_only=is_head)
            version, status_b, reason = head.first
            up_tokens = head.tokens(b"connection")
            keep_upstream = version == b"HTTP/1.1" and b"close" not in up_tokens
            te = head.get(b"transfer-encoding")
            if not no_body:
                if te is not None:
                    chunked = te.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                else:
                    cl = head.get(b"content-length")
                    if cl is not None:
                        values = {v.strip() for v in cl.split(b",")}
                        if len(values) == 1 and next(iter(values)).isdigit():
                            length = int(next(iter(values)))
                if not chunked and length is None:
                    keep_upstream = False  # read until close
                    keep_client = False
            if status == 101:
                keep_upstream = keep_client = False

            drop = _HOP_BY_HOP | up_tokens
            out = [b"HTTP/1.1 " + status_b + b" " + reason]
            for name, low, value in head.headers:
                if low in drop or low.startswith(b"proxy-") or low.startswith(b"x-proxaro-"):
                    continue
                if low == b"content-length" and chunked:
                    continue
                out.append(name + b": " + value)
            if chunked:
                out.append(b"Transfer-Encoding: " + (te or b"chunked"))
            if not keep_client:
                out.append(b"Connection: close")
            client_head = b"\r\n".join(out) + b"\r\n" + choice.header_block() + b"\r\n"
        recv = len(raw)
        ureader = upstream.reader

        if no_body:
            account(recv)
            writer.write(client_head)
        elif length is not None and length <= _SMALL_BODY:
            body = await ureader.readexactly(length) if length else b""
            account(recv + length)
            writer.write(client_head + body)
        elif length is not None:
            writer.write(client_head)
            remaining = length
            while remaining:
                data = await ureader.read(min(_READ_SIZE, remaining))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                recv += len(data)
                if not remaining:
                    account(recv)
                writer.write(data)
                await writer.drain()
        elif chunked:
            writer.write(client_head)
            await _relay_chunked(ureader, writer, lambda n: account(recv + n))
        else:
            writer.write(client_head)
            while True:
                data = await ureader.read(_READ_SIZE)
                if not data:
                    account(recv)
                    break
                recv += len(data)
                writer.write(data)
                await writer.drain()
        await writer.drain()
        if keep_upstream:
            self._put_idle(upstream)
        else:
            upstream.close()
        return keep_client

    # ------------------------------------------------------------------ upstream pool

    async def _connect(self, key: tuple[str, str, int]) -> _Upstream:
        """A new connection to ``(ip, port)`` whose source address is the exit's ``bind``."""
        bind, ip, port = key
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET and self._bind_ok:
                # Defer the port choice to connect(): each exit address then has its own
                # ephemeral port range per target, as if it were its own host.
                if _BIND_NO_PORT is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
                try:
                    sock.bind((bind, 0))
                except OSError:
                    # A system without the whole of 127.0.0.0/8 on loopback: one source
                    # address for every exit (the site's /ip then sees 127.0.0.1).
                    self._bind_ok = False
                    log.warning("sandbox gateway: cannot bind %s; exits share 127.0.0.1", bind)
            await loop.sock_connect(sock, (ip, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=_HEAD_LIMIT)
        except BaseException:
            sock.close()
            raise
        return _Upstream(key, reader, writer)

    def _take_idle(self, key: tuple[str, str, int]) -> _Upstream | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            self._idle_count -= 1
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def _put_idle(self, conn: _Upstream) -> None:
        if self._server is None or not self._server.is_serving():
            conn.close()
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= _IDLE_PER_KEY or self._idle_count >= self._idle_total:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)
        self._idle_count += 1

    async def _sweep(self) -> None:
        """Close idle upstream connections past their time, and forget expired sessions."""
        while True:
            await asyncio.sleep(_IDLE_SECONDS / 3)
            now = time.monotonic()
            for key in list(self._idle):
                conns = self._idle[key]
                keep = [c for c in conns if c.usable(now)]
                for c in conns:
                    if c not in keep:
                        c.close()
                self._idle_count -= len(conns) - len(keep)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
            world_now = self.world.clock.now()
            for k in [k for k, s in self._sticky.items() if s.expires_at <= world_now]:
                del self._sticky[k]

    # ------------------------------------------------------------------ tunnels

    async def _tunnel(
        self,
        peer: str,
        head: _Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve one CONNECT; return whether the client connection stays open (on refusal)."""
        world = self.world
        try:
            try:
                host, port = _split_authority(head.first[1], 443)
            except _BadRequest as exc:
                raise _Refusal(ERROR_BAD_REQUEST, f"CONNECT needs host:port ({exc})") from None
            t = self._admit(peer, head)
            ip = _loopback_host(host)
            if ip is None:
                raise _Refusal(
                    protocol.ERROR_TARGET_NOT_ALLOWED,
                    f"{host!r} is not a loopback address; the sandbox never leaves loopback",
                )
            choice = self._choose(t)
            try:
                upstream = await _within(
                    world.knobs.target_timeout, self._connect((choice.exit.bind, ip, port))
                )
            except asyncio.TimeoutError:
                raise _Refusal(protocol.ERROR_TARGET_TIMEOUT, choice=choice) from None
            except OSError as exc:
                raise _Refusal(
                    protocol.ERROR_EXIT_FAILED,
                    f"the target refused the connection ({exc.strerror or exc})",
                    choice=choice,
                ) from None
        except _Refusal as refusal:
            return self._fail(writer, refusal, False)

        world.counters["gateway.tunnels"] += 1
        started = world.clock.now()
        lines = [b"HTTP/1.1 200 Connection established", *choice.header_lines()]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        counts = [0, 0]  # [to target, from target]
        loop = asyncio.get_running_loop()
        forth = loop.create_task(_pump(reader, upstream.writer, counts, 0))
        back = loop.create_task(_pump(upstream.reader, writer, counts, 1))
        try:
            # The client half-closing still lets the target finish its answer; the target
            # closing ends the tunnel (nothing can reach it any more).
            done, _ = await asyncio.wait((forth, back), return_when=asyncio.FIRST_COMPLETED)
            if back not in done:
                await back
        finally:
            forth.cancel()
            back.cancel()
            await asyncio.gather(forth, back, return_exceptions=True)
            upstream.close()
            self._account(choice, started, counts[0], counts[1])
        return False

    # ------------------------------------------------------------------ accounting

    def _account(self, choice: _Choice, started: float, sent: int, recv: int) -> None:
        """Bytes into ``/v1/sessions`` and usage: one record per request or tunnel, and one
        per sticky session (updated in place as its requests come).

        The usage is summed per (class, country) and handed to the world once per loop turn
        (:meth:`_flush_usage`, scheduled with ``call_soon``): that runs before the loop reads
        any later I/O, so an API request sent after this answer always sees these bytes.
        """
        world = self.world
        ex = choice.exit
        ended = world.clock.now()
        sticky = choice.sticky
        if sticky is None or sticky.record is None:
            rec = world.record_session(
                ex,
                started,
                ended,
                sent,
                recv,
                session_id=self._session_id(ended),
                count_usage=False,
            )
            if sticky is not None:
                sticky.record = rec
        else:
            rec = sticky.record
            rec.ended_at = ended
            rec.bytes_sent += sent
            rec.bytes_recv += recv
        key = (ex.exit_class, ex.country)
        self._pending_usage[key] = self._pending_usage.get(key, 0) + sent + recv
        self._end_of_turn()

    def _end_of_turn(self) -> None:
        """Have :meth:`_turn_ended` run once this loop turn is over."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn_ended)

    def _turn_ended(self) -> None:
        """Flush the turn's usage to the world and let the next turn re-read pool health."""
        self._turn_scheduled = False
        self._view_checked = False
        self._flush_usage()

    def _flush_usage(self) -> None:
        pending, self._pending_usage = self._pending_usage, {}
        self.world.add_usage_batch(pending)

    def _session_id(self, ts: float) -> str:
        """A ``sess_`` id shaped like the world's ULID-like ids, cheaply (one random draw)."""
        n = (int(ts * 1000) << 80) | self._id_rng.getrandbits(80)
        return "sess_" + "".join([_CROCKFORD_PAIRS[(n >> s) & 1023] for s in _PAIR_SHIFTS])


async def _relay_chunked(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    before_last: Callable[[int], None] | None = None,
) -> int:
    """Relay one chunked body as it comes (framing kept); return the bytes relayed.

    ``before_last(bytes relayed)`` runs before the last chunk and trailers are written.
    """
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadRequest("bad chunk size") from None
        if size < 0:
            raise _BadRequest("bad chunk size")
        total += len(line)
        if size == 0:
            # The last chunk and the trailers, up to the empty line, go out together.
            last = [line]
            while True:
                trailer = await reader.readuntil(b"\r\n")
                total += len(trailer)
                last.append(trailer)
                if trailer == b"\r\n":
                    break
            if before_last is not None:
                before_last(total)
            writer.write(b"".join(last))
            await writer.drain()
            return total
        if size + 2 <= _READ_SIZE:
            data = await reader.readexactly(size + 2)
            writer.write(line + data)
        else:
            writer.write(line)
            remaining = size + 2
            while remaining:
                data = await reader.read(min(_READ_SIZE, remaining))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                writer.write(data)
                await writer.drain()
        total += size + 2
        await writer.drain()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: list[int], slot: int
) -> None:
    """Copy one direction of a tunnel until EOF, then half-close the other side."""
    try:
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                break
            counts[slot] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        writer.transport.abort()
        return
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
