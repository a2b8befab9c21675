"""What the sandbox gateway says of its own (protocol sections 3 and 4).

The exit it chose (:class:`Choice`, with its ``X-Proxaro-Exit-*`` lines, built once per exit),
and its refusals (:class:`Refusal`, rendered by :func:`refusal_bytes` as a status, an
``X-Proxaro-Error`` and a one-line text body).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from proxaro_scrape import protocol
from proxaro_scrape.sandbox.world import Exit, SessionRecord, World

__all__ = [
    "ERROR_BAD_REQUEST",
    "Choice",
    "Refusal",
    "Sticky",
    "exit_header_block",
    "exit_header_lines",
    "fail",
    "refusal_bytes",
]

#: Sandbox-only answer to HTTP that cannot be parsed (never produced by a real client library).
ERROR_BAD_REQUEST = "bad_request"

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

_SESSION_HEADER = protocol.HEADER_SESSION.encode()
_EXIT_HEADER_CACHE: dict[Exit, list[bytes]] = {}
_EXIT_BLOCK_CACHE: dict[Exit, bytes] = {}


def exit_header_lines(ex: Exit) -> list[bytes]:
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


def exit_header_block(ex: Exit) -> bytes:
    """:func:`exit_header_lines` as they go into a head: each line ended by CRLF."""
    block = _EXIT_BLOCK_CACHE.get(ex)
    if block is None:
        block = b"".join(line + b"\r\n" for line in exit_header_lines(ex))
        if len(_EXIT_BLOCK_CACHE) < 100_000:
            _EXIT_BLOCK_CACHE[ex] = block
    return block


@dataclass
class Sticky:
    """A live sticky session: its exit until ``expires_at`` (world time)."""

    id: str
    exit: Exit
    expires_at: float
    record: SessionRecord | None = None


@dataclass
class Choice:
    """The exit serving one request or tunnel, and its sticky session if any."""

    exit: Exit
    sticky: Sticky | None = None

    def header_lines(self) -> list[bytes]:
        """The ``X-Proxaro-Exit-*`` lines, and ``X-Proxaro-Session`` for a sticky session."""
        lines = exit_header_lines(self.exit)
        if self.sticky is not None:
            return [*lines, b"%s: %s" % (_SESSION_HEADER, self.sticky.id.encode())]
        return lines

    def header_block(self) -> bytes:
        """:meth:`header_lines` as they go into a head: each line ended by CRLF."""
        block = exit_header_block(self.exit)
        if self.sticky is not None:
            return block + b"%s: %s\r\n" % (_SESSION_HEADER, self.sticky.id.encode())
        return block


class Refusal(Exception):
    """The gateway answers with an ``X-Proxaro-Error`` of its own.

    ``choice`` is the exit already chosen when the failure came from it (``exit_failed``,
    ``target_timeout``): the answer then names that exit too.
    """

    def __init__(self, code: str, message: str | None = None, choice: Choice | None = None):
        super().__init__(code)
        self.code = code
        self.message = message or _MESSAGES[code]
        self.choice = choice


def refusal_bytes(world: World, refusal: Refusal, *, head_only: bool, close: bool) -> bytes:
    """The whole answer to a refusal (counted in ``gateway.errors:<code>`` and noted)."""
    code = refusal.code
    status = _STATUS[code]
    world.counters[f"gateway.errors:{code}"] += 1
    world.note("gateway_error", error=code, status=status, message=refusal.message)
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


def fail(
    world: World,
    writer: asyncio.StreamWriter,
    refusal: Refusal,
    close: bool,
    head_only: bool = False,
) -> bool:
    """Write the refusal; return whether the client connection stays open (``not close``)."""
    writer.write(refusal_bytes(world, refusal, head_only=head_only, close=close))
    return not close
