"""The sandbox gateway's plain-HTTP forwarding: one absolute-form request, relayed as it streams.

The request goes to the target in origin form without hop-by-hop or ``Proxy-*`` headers
(``Proxy-Authorization`` never reaches a target); bodies (``Content-Length``, chunked or, for
answers, read until close) are relayed in both directions as they come; an idle upstream
connection of the same exit and target is reused when there is one.  The answer goes back
without the target's hop-by-hop, ``Proxy-*`` and ``X-Proxaro-*`` headers (protocol section 3:
on a plain-HTTP answer every ``X-Proxaro-*`` header is the gateway's), with the exit's
``X-Proxaro-Exit-*`` lines added (section 4).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from proxaro_scrape import protocol
from proxaro_scrape.sandbox._gateway_admission import Stage, reachable
from proxaro_scrape.sandbox._gateway_answers import ERROR_BAD_REQUEST, Choice, Refusal, fail
from proxaro_scrape.sandbox._gateway_upstream import Upstream
from proxaro_scrape.sandbox._gateway_wire import (
    HOP_BY_HOP,
    IDEMPOTENT,
    READ_SIZE,
    SMALL_BODY,
    BadRequest,
    Head,
    parse_head,
    plain_length,
    relay_chunked,
    split_authority,
    within,
)

__all__ = ["Forwarder"]


class _UpstreamGone(Exception):
    """A pooled upstream connection turned out closed before answering (safe to retry)."""


class Forwarder(Stage):
    """Serves the plain-HTTP requests of a gateway's client connections."""

    async def serve(
        self,
        peer: str,
        head: Head,
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
                return fail(self.world, writer, Refusal(ERROR_BAD_REQUEST, "unsupported TE"), True)
            chunked = True
        else:
            cl = head.get(b"content-length")
            if cl is not None:
                values = {v.strip() for v in cl.split(b",")}
                if len(values) != 1 or not next(iter(values)).isdigit():
                    return fail(
                        self.world, writer, Refusal(ERROR_BAD_REQUEST, "bad Content-Length"), True
                    )
                length = int(next(iter(values)))
        has_body = chunked or length > 0

        try:
            if not target.lower().startswith(b"http://"):
                if target.lower().startswith(b"https://"):
                    msg = "send https:// URLs through CONNECT"
                else:
                    msg = "the gateway needs an absolute http:// URL"
                raise Refusal(protocol.ERROR_TARGET_NOT_ALLOWED, msg)
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
                host, port = split_authority(authority, 80)
            except BadRequest as exc:
                raise Refusal(ERROR_BAD_REQUEST, str(exc)) from None
            t = self._admission.admit(peer, head)
            ip = reachable(host)
            choice = self._exits.choose(t)
        except Refusal as refusal:
            return fail(self.world, writer, refusal, has_body or not keep_client, head_only=is_head)

        # The request head as the target gets it: origin-form, no hop-by-hop or Proxy-*.
        drop = HOP_BY_HOP | conn_tokens
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
        if not chunked and length <= SMALL_BODY:
            body = await reader.readexactly(length) if length else b""

        upstream: Upstream | None = None
        sent = 0
        try:
            for attempt in (0, 1):
                # A streamed body cannot be replayed: it never risks a stale pooled connection.
                upstream = self._pool.take(key) if attempt == 0 and body is not None else None
                reused = upstream is not None
                if upstream is None:
                    try:
                        upstream = await within(timeout, self._pool.connect(key))
                    except asyncio.TimeoutError:
                        raise Refusal(protocol.ERROR_TARGET_TIMEOUT, choice=choice) from None
                    except OSError as exc:
                        raise Refusal(
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
                except (_UpstreamGone, ConnectionError, asyncio.IncompleteReadError, BadRequest):
                    if upstream.expired:
                        raise Refusal(protocol.ERROR_TARGET_TIMEOUT, choice=choice) from None
                    # A pooled connection the target had closed: resend once on a fresh one,
                    # if the request can be sent twice without harm.
                    gone = sys.exc_info()[0] is _UpstreamGone
                    if not gone or attempt == 1 or body is None or method not in IDEMPOTENT:
                        raise Refusal(protocol.ERROR_EXIT_FAILED, choice=choice) from None
                    upstream.close()
                    upstream = None
                finally:
                    if watch is not None:
                        watch.cancel()
            else:  # pragma: no cover - the loop always breaks or raises
                raise Refusal(protocol.ERROR_EXIT_FAILED, choice=choice)
        except Refusal as refusal:
            if upstream is not None:
                upstream.close()
            # The request body may be half read: keep the client only if it was consumed.
            return fail(
                self.world,
                writer,
                refusal,
                (has_body and body is None) or not keep_client,
                head_only=is_head,
            )

        assert upstream is not None

        def account(recv: int) -> None:
            self._accounting.account(choice, started, sent, recv)

        try:
            return await self._relay_response(
                upstream, rraw, writer, choice, is_head, keep_client, account
            )
        except BaseException:
            upstream.close()
            raise

    async def _send_request(
        self,
        upstream: Upstream,
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
            sent += await relay_chunked(reader, w)
        else:
            remaining = length
            while remaining:
                data = await reader.read(min(READ_SIZE, remaining))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                sent += len(data)
                w.write(data)
                await w.drain()
        await w.drain()
        return sent

    async def _read_response_head(
        self, upstream: Upstream, client: asyncio.StreamWriter, reused: bool
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
                raise BadRequest("response head too large") from None
            # "HTTP/1.x NNN[ reason]": checked here, the rest when the head is used.
            if not raw.startswith(b"HTTP/1.") or not raw[9:12].isdigit() or raw[12] not in b" \r":
                raise BadRequest("bad status line")
            if raw[9:10] == b"1" and raw[9:12] != b"101":
                client.write(raw)
                continue
            return raw

    async def _relay_response(
        self,
        upstream: Upstream,
        raw: bytes,
        writer: asyncio.StreamWriter,
        choice: Choice,
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
        length = plain_length(raw)
        chunked = False
        if length is not None:
            # The common case: nothing to strip or reframe, so the head goes out as it came,
            # with the exit's lines added.
            keep_upstream = True
            tail = b"\r\n" if keep_client else b"Connection: close\r\n\r\n"
            client_head = raw[:-2] + choice.header_block() + tail
        else:
            try:
                head = parse_head(raw)
            except BadRequest:
                upstream.close()
                refusal = Refusal(protocol.ERROR_EXIT_FAILED, "malformed answer", choice)
                return fail(self.world, writer, refusal, not keep_client, head_only=is_head)
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

            drop = HOP_BY_HOP | up_tokens
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
        elif length is not None and length <= SMALL_BODY:
            body = await ureader.readexactly(length) if length else b""
            account(recv + length)
            writer.write(client_head + body)
        elif length is not None:
            writer.write(client_head)
            remaining = length
            while remaining:
                data = await ureader.read(min(READ_SIZE, remaining))
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
            await relay_chunked(ureader, writer, lambda n: account(recv + n))
        else:
            writer.write(client_head)
            while True:
                data = await ureader.read(READ_SIZE)
                if not data:
                    account(recv)
                    break
                recv += len(data)
                writer.write(data)
                await writer.drain()
        await writer.drain()
        if keep_upstream:
            self._pool.put(upstream)
        else:
            upstream.close()
        return keep_client
