"""The sandbox gateway's ``CONNECT`` tunnels (HTTPS).

The tunnel is authenticated once, at its start; the ``200 Connection established`` answer
carries the exit's ``X-Proxaro-Exit-*`` lines (protocol section 4).  After it the gateway copies
bytes both ways and never sees the site's answers: an ``X-Proxaro-*`` header inside a tunnel is
the site's own (section 3).  A CONNECT times out on the connect only.
"""

from __future__ import annotations

import asyncio

from proxaro_scrape import protocol
from proxaro_scrape.sandbox._gateway_admission import Stage, reachable
from proxaro_scrape.sandbox._gateway_answers import ERROR_BAD_REQUEST, Refusal, fail
from proxaro_scrape.sandbox._gateway_wire import BadRequest, Head, pump, split_authority, within

__all__ = ["Tunneller"]


class Tunneller(Stage):
    """Serves the CONNECT requests of a gateway's client connections."""

    async def serve(
        self,
        peer: str,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve one CONNECT; return whether the client connection stays open (on refusal)."""
        world = self.world
        try:
            try:
                host, port = split_authority(head.first[1], 443)
            except BadRequest as exc:
                raise Refusal(ERROR_BAD_REQUEST, f"CONNECT needs host:port ({exc})") from None
            t = self._admission.admit(peer, head)
            ip = reachable(host)
            choice = self._exits.choose(t)
            try:
                upstream = await within(
                    world.knobs.target_timeout, self._pool.connect((choice.exit.bind, ip, port))
                )
            except asyncio.TimeoutError:
                raise Refusal(protocol.ERROR_TARGET_TIMEOUT, choice=choice) from None
            except OSError as exc:
                raise Refusal(
                    protocol.ERROR_EXIT_FAILED,
                    f"the target refused the connection ({exc.strerror or exc})",
                    choice=choice,
                ) from None
        except Refusal as refusal:
            return fail(self.world, writer, refusal, False)

        world.counters["gateway.tunnels"] += 1
        started = world.clock.now()
        lines = [b"HTTP/1.1 200 Connection established", *choice.header_lines()]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        counts = [0, 0]  # [to target, from target]
        loop = asyncio.get_running_loop()
        forth = loop.create_task(pump(reader, upstream.writer, counts, 0))
        back = loop.create_task(pump(upstream.reader, writer, counts, 1))
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
            self._accounting.account(choice, started, counts[0], counts[1])
        return False
