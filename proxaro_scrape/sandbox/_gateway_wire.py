"""HTTP/1.1 on the wire, as the sandbox gateway reads and relays it (no world, no policy).

Heads parsed once into :class:`Head`, authorities and ``Basic`` credentials decoded, chunked
bodies and tunnel bytes relayed as they stream.  Anything malformed raises :class:`BadRequest`;
what the gateway answers to it is decided by its callers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = [
    "HEAD_LIMIT",
    "HOP_BY_HOP",
    "IDEMPOTENT",
    "READ_SIZE",
    "SMALL_BODY",
    "BadRequest",
    "Head",
    "decode_basic",
    "parse_head",
    "plain_length",
    "pump",
    "relay_chunked",
    "split_authority",
    "within",
]

T = TypeVar("T")

#: The longest request or response head read (also the streams' buffer limit).
HEAD_LIMIT = 64 * 1024
READ_SIZE = 64 * 1024
#: Bodies up to this size are read whole and written with their head in one go.
SMALL_BODY = 64 * 1024

#: Hop-by-hop headers (RFC 9110, 7.6.1): never forwarded either way (nor are ``Proxy-*``).
HOP_BY_HOP = frozenset(
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

#: Methods a request may be sent twice with (a pooled connection found closed is retried).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class BadRequest(Exception):
    """The peer sent HTTP the gateway cannot parse."""


if sys.version_info >= (3, 11):

    async def within(delay: float, aw: Awaitable[T]) -> T:
        """``await aw``, or :class:`TimeoutError` after ``delay`` seconds."""
        async with asyncio.timeout(delay):
            return await aw

else:  # pragma: no cover - Python 3.10

    async def within(delay: float, aw: Awaitable[T]) -> T:
        """``await aw``, or :class:`TimeoutError` after ``delay`` seconds."""
        return await asyncio.wait_for(aw, delay)


class Head:
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
        """The value of the header ``name`` (lower case), repeats joined; ``None`` if absent."""
        return self.index.get(name)

    def tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated tokens of a header, lower case (``Connection: close, TE``)."""
        value = self.index.get(name)
        if not value:
            return set()
        return {t.strip().lower() for t in value.split(b",")}


def parse_head(raw: bytes) -> Head:
    """Parse a head ending in CRLF CRLF (a request or a status line, then headers)."""
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) == 2 and parts[0].startswith(b"HTTP/"):
        parts.append(b"")  # a status line may leave the reason out
    if len(parts) != 3:
        raise BadRequest("bad first line")
    headers: list[tuple[bytes, bytes, bytes]] = []
    index: dict[bytes, bytes] = {}
    for line in lines[1:]:
        i = line.find(b":")
        # No empty name, and no whitespace before the colon (RFC 9112, 5.1: reject).
        if i <= 0 or line[i - 1] in b" \t":
            raise BadRequest("bad header line")
        name = line[:i]
        value = line[i + 1 :].strip()
        low = name.lower()
        headers.append((name, low, value))
        if low in index:
            index[low] += b", " + value
        else:
            index[low] = value
    return Head((parts[0], parts[1], parts[2]), headers, index)


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


def plain_length(raw: bytes) -> int | None:
    """The Content-Length of a response head that can be relayed as it is, else ``None``.

    Plain: HTTP/1.1, a final status other than 101, exactly one valid Content-Length, and no
    header the gateway must strip (hop-by-hop, ``Proxy-*``, and the target's own
    ``X-Proxaro-*``, which only the gateway may send on a plain-HTTP answer).
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


def decode_basic(value: bytes) -> tuple[str, str] | str:
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


def split_authority(authority: bytes, default_port: int) -> tuple[str, int]:
    """``host[:port]`` / ``[v6]:port`` -> (host, port); userinfo is dropped."""
    text = authority.decode("latin-1").rpartition("@")[2]
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest("bad IPv6 authority")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest("bad authority")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise BadRequest("empty host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest("bad port")
    return host, int(port_text)


async def relay_chunked(
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
            raise BadRequest("bad chunk size") from None
        if size < 0:
            raise BadRequest("bad chunk size")
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
        if size + 2 <= READ_SIZE:
            data = await reader.readexactly(size + 2)
            writer.write(line + data)
        else:
            writer.write(line)
            remaining = size + 2
            while remaining:
                data = await reader.read(min(READ_SIZE, remaining))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                writer.write(data)
                await writer.drain()
        total += size + 2
        await writer.drain()


async def pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: list[int], slot: int
) -> None:
    """Copy one direction of a tunnel until EOF, then half-close the other side.

    ``counts[slot]`` adds up the bytes copied (the tunnel's accounting reads it at the end).
    """
    try:
        while True:
            data = await reader.read(READ_SIZE)
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
