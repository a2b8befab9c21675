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
  and ``200 Connection established`` carry ``X-Proxaro-Exit-*`` (section 4), and a proxied
  plain-HTTP response first loses every ``X-Proxaro-*`` and ``Proxy-*`` header the target sent
  (section 3; the demo site's ``/spoof/<status>`` pages are the target that sends them);
- bytes of each request / tunnel go to ``world.record_session`` (usage and ``/v1/sessions``);
- safety: only loopback targets are reached.  Any other host is refused at once with 403
  ``target_not_allowed``, decided from the literal host: the gateway never resolves a name.

Choices the protocol leaves open, made here:

- Order of checks: source allowlist (403), auth (407), targeting (400), ASN scope (403),
  target host (403), exit (502 ``no_exit``), exit failures (502 ``exit_failed``), target
  (504 ``target_timeout`` after ``world.knobs.target_timeout`` real seconds, covering the
  connect and the wait for the response head; a CONNECT times out on the connect only).
- Degraded ASNs and dead sticky sessions: see :mod:`proxaro_scrape.sandbox._gateway_exits`.
- A target that refuses the connection or drops it before answering: 502 ``exit_failed``.
- ``gateway.requests`` counts every plain-HTTP request received (errors included);
  ``gateway.tunnels`` counts tunnels established (``200 Connection established`` sent);
  ``gateway.connections_closed`` counts client connections ended (``gateway.connections``
  minus it: the connections open now).
- Malformed HTTP from a client (not a Proxaro answer): 400 with ``X-Proxaro-Error:
  bad_request``, and the connection is closed.

Where things are: this module is the server (listening, one task per client connection, the
periodic sweep); the rest is one private module per seam, each with the part of this story it
implements: ``_gateway_wire`` (HTTP heads, authorities, chunked relay), ``_gateway_admission``
(allowlist, auth, targeting, scope, loopback targets), ``_gateway_exits`` (pool view, exit choice,
sticky sessions), ``_gateway_upstream`` (connections from an exit's address, idle pool),
``_gateway_forward`` (plain HTTP), ``_gateway_tunnel`` (CONNECT), ``_gateway_answers`` (the
gateway's own headers and refusals) and ``_gateway_accounting`` (sessions and usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from proxaro_scrape.sandbox._gateway_accounting import Accounting, Turn
from proxaro_scrape.sandbox._gateway_admission import Admission
from proxaro_scrape.sandbox._gateway_answers import (
    ERROR_BAD_REQUEST,
    Refusal,
    refusal_bytes,
)
from proxaro_scrape.sandbox._gateway_exits import ExitChooser
from proxaro_scrape.sandbox._gateway_forward import Forwarder
from proxaro_scrape.sandbox._gateway_tunnel import Tunneller
from proxaro_scrape.sandbox._gateway_upstream import IDLE_SECONDS, UpstreamPool
from proxaro_scrape.sandbox._gateway_wire import HEAD_LIMIT, BadRequest, parse_head
from proxaro_scrape.sandbox.world import World

__all__ = ["ERROR_BAD_REQUEST", "GatewayServer"]

log = logging.getLogger(__name__)


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
        self._sweeper: asyncio.Task[None] | None = None
        turn = Turn()
        self._pool = UpstreamPool()
        self._exits = ExitChooser(world, turn)
        self._accounting = Accounting(world, turn)
        admission = Admission(world)
        parts = (world, admission, self._exits, self._pool, self._accounting)
        self._forwarder = Forwarder(*parts)
        self._tunneller = Tunneller(*parts)

    @property
    def port(self) -> int:
        """The port bound (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen on ``host:port`` (0 = a free port)."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=HEAD_LIMIT, backlog=1024
        )
        self._port = self.port
        self._pool.accepting = True
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Stop listening and end every client connection, tunnel and upstream connection."""
        self._pool.accepting = False
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
        self._pool.close()
        self._accounting.flush()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _sweep(self) -> None:
        """Close idle upstream connections past their time, and forget expired sessions."""
        while True:
            await asyncio.sleep(IDLE_SECONDS / 3)
            self._pool.sweep()
            self._exits.forget_expired(self.world.clock.now())

    def _refuse(self, writer: asyncio.StreamWriter, code: str, message: str) -> None:
        """Answer HTTP that cannot be served at all, and have the connection closed."""
        refusal = Refusal(code, message)
        writer.write(refusal_bytes(self.world, refusal, head_only=False, close=True))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.world.counters["gateway.connections"] += 1
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        forward, tunnel = self._forwarder.serve, self._tunneller.serve
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed between requests
                except asyncio.LimitOverrunError:
                    self._refuse(writer, ERROR_BAD_REQUEST, "request head too large")
                    return
                try:
                    head = parse_head(raw)
                except BadRequest as exc:
                    self._refuse(writer, ERROR_BAD_REQUEST, f"malformed HTTP request: {exc}")
                    return
                if head.first[0] == b"CONNECT":
                    if not await tunnel(peer, head, reader, writer):
                        return
                elif not await forward(peer, head, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError, BadRequest):
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
