"""The sandbox gateway's connections to targets: opened from an exit's address, kept alive.

Each connection leaves from the exit's ``127.x.y.z`` bind address, so the target sees one client
address per exit (the demo site's ``/ip`` names the exit from it).  Idle connections are pooled
per (exit, target) for reuse by the next plain-HTTP request through the same exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from proxaro_scrape.sandbox._gateway_wire import HEAD_LIMIT

__all__ = ["Upstream", "UpstreamPool", "UpstreamKey"]

log = logging.getLogger("proxaro_scrape.sandbox.gateway")

#: (exit bind address, target IP, target port).
UpstreamKey = tuple[str, str, int]

#: Idle upstream connections: kept this many real seconds, so many per (exit, target), and in
#: all at most this many, or a quarter of the process's file-descriptor limit if that is lower
#: (the demo site, in the same process, holds the other end of each).
IDLE_SECONDS = 15.0
_IDLE_PER_KEY = 64
_IDLE_TOTAL = 2048
#: Linux's IP_BIND_ADDRESS_NO_PORT (absent elsewhere).
_BIND_NO_PORT: int | None = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)


class Upstream:
    """One connection from an exit's bind address to a target."""

    __slots__ = ("key", "reader", "writer", "idle_since", "expired")

    def __init__(
        self, key: UpstreamKey, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
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
        """Still worth reusing at ``now`` (monotonic): not idle too long, not closed."""
        return (
            now - self.idle_since < IDLE_SECONDS
            and not self.reader.at_eof()
            and not self.writer.transport.is_closing()
        )

    def close(self) -> None:
        """Drop the connection at once."""
        self.writer.transport.abort()


def _idle_total() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            return max(16, min(_IDLE_TOTAL, soft // 4))
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        pass
    return _IDLE_TOTAL


class UpstreamPool:
    """Opens upstream connections and keeps the idle ones while :attr:`accepting` is true."""

    def __init__(self) -> None:
        self._idle: dict[UpstreamKey, list[Upstream]] = {}
        self._idle_count = 0
        self._idle_total = _idle_total()
        self._bind_ok = True
        #: False before the gateway listens and once it closes: nothing is pooled then.
        self.accepting = False

    async def connect(self, key: UpstreamKey) -> Upstream:
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
            reader, writer = await asyncio.open_connection(sock=sock, limit=HEAD_LIMIT)
        except BaseException:
            sock.close()
            raise
        return Upstream(key, reader, writer)

    def take(self, key: UpstreamKey) -> Upstream | None:
        """An idle connection for ``key`` that is still usable, if any."""
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

    def put(self, conn: Upstream) -> None:
        """Keep ``conn`` for reuse, or close it when the pool is full or closing."""
        if not self.accepting:
            conn.close()
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= _IDLE_PER_KEY or self._idle_count >= self._idle_total:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)
        self._idle_count += 1

    def sweep(self) -> None:
        """Close the idle connections past their time."""
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

    def close(self) -> None:
        """Stop pooling and close every idle connection."""
        self.accepting = False
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._idle_count = 0
