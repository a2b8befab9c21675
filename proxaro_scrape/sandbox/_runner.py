"""Start and stop a whole local Proxaro: API emulator, gateway, demo site and webhook deliverer.

:class:`Sandbox` is used either as a sync context manager, which runs the sandbox on an event
loop in a background thread (what tests, the CLI and Scrapy crawls want: the sandbox never
competes with the code under test for its loop), or as an async context manager on the caller's
own loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import ssl
import tempfile
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import trustme
from aiohttp import web

from proxaro_scrape.sandbox._config import (
    ALL_COMPONENTS,
    SandboxConfigError,
    check_components,
    check_host,
    check_plan,
    check_ports,
    check_seconds,
    check_seed,
    check_speed,
)
from proxaro_scrape.sandbox.world import Clock, World

__all__ = ["ALL_COMPONENTS", "INFO_KEYS", "Sandbox", "SandboxConfigError"]

T = TypeVar("T")

#: The keys of ``proxaro-scrape sandbox --json``'s one line, in order (a contract with scripts).
INFO_KEYS = (
    "api_url",
    "api_key",
    "gateway_host",
    "gateway_port",
    "site_url",
    "site_https_url",
    "ca_cert",
)
LOOPBACK = "127.0.0.1"
#: How long a closing sandbox waits for the requests its servers are still answering (a
#: ``/delay`` or ``/stream`` page, an API call): aiohttp's own default is 60 s, longer than the
#: 30 s a closing sandbox waits for its thread, and than any test waits for a process to exit.
SHUTDOWN_TIMEOUT = 5.0


class Sandbox:
    """A local Proxaro on loopback.

    >>> with Sandbox(seed=7) as sb:                       # doctest: +SKIP
    ...     print(sb.api_url, sb.gateway_port, sb.site_url)

    Every port defaults to 0 (a free ephemeral port).  ``clock_speed`` compresses world time
    (60 = one world minute per real second); ``grace_seconds`` is the rotation grace in world
    seconds.  ``components`` starts only part of it (for example ``{"api"}``).

    Every argument is checked here, before anything is generated, written or bound: a wrong
    type (a bool or a str for a port), a value out of range (a port past 65535, a negative
    grace, a clock speed of 0, NaN or infinity), a host off loopback, an unknown plan or
    component, or one fixed port given twice raises :class:`SandboxConfigError` (a
    ``ValueError``) whose ``param`` and message name the argument.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        plan: str = "growth",
        host: str = LOOPBACK,
        api_port: int = 0,
        gateway_port: int = 0,
        site_port: int = 0,
        site_https_port: int = 0,
        grace_seconds: float = 60.0,
        clock_speed: float = 1.0,
        components: Collection[str] = ALL_COMPONENTS,
    ) -> None:
        seed = check_seed(seed)
        plan = check_plan(plan)
        self.host = check_host(host)
        self.components = check_components(components)
        ports = check_ports(
            api_port=api_port,
            gateway_port=gateway_port,
            site_port=site_port,
            site_https_port=site_https_port,
        )
        grace_seconds = check_seconds("grace_seconds", grace_seconds)
        clock_speed = check_speed("clock_speed", clock_speed)
        self._ports = {
            "api": ports["api_port"],
            "gateway": ports["gateway_port"],
            "site": ports["site_port"],
            "site_https": ports["site_https_port"],
        }
        self.world = World(
            seed,
            plan=plan,
            gateway_host=host,
            gateway_port=gateway_port,
            grace_seconds=grace_seconds,
            clock=Clock(speed=clock_speed),
        )
        self.api_key = self.world.issue_key("admin")
        self._tmp = tempfile.TemporaryDirectory(prefix="proxaro-sandbox-")
        self.ca = trustme.CA(organization_name="Proxaro sandbox")
        self.ca_cert = str(Path(self._tmp.name) / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_cert)
        self._server_cert = self.ca.issue_cert(host, "localhost", "127.0.0.1", "::1")
        self._runners: list[web.AppRunner] = []
        self._closers: list[Callable[[], Any]] = []
        self.api_url = ""
        self.gateway_host = host
        self.gateway_port = 0
        self.site_url = ""
        self.site_https_url = ""
        self.gateway: Any = None
        self.deliverer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._owns_loop = False

    def __repr__(self) -> str:
        # Never the API key or the gateway password.
        return (
            f"<Sandbox api={self.api_url or '-'} gateway={self.gateway_host}:{self.gateway_port}>"
        )

    # ------------------------------------------------------------------ values

    def info(self) -> dict[str, Any]:
        """The values ``proxaro-scrape sandbox --json`` prints, as one dict (:data:`INFO_KEYS`)."""
        return {key: getattr(self, key) for key in INFO_KEYS}

    def proxy_url(self, username: str | None = None, password: str | None = None) -> str:
        """A static gateway URL with the current credentials (for plain clients in tests)."""
        cred = self.world.credentials
        return (
            f"http://{username or cred.username}:{password or cred.password}"
            f"@{self.gateway_host}:{self.gateway_port}"
        )

    def server_ssl_context(self, *hosts: str) -> ssl.SSLContext:
        """A server-side TLS context with a certificate from the sandbox CA (webhook receivers)."""
        cert = self.ca.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts the sandbox CA."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    # ------------------------------------------------------------------ controls

    def control(self, name: str, **body: Any) -> Any:
        """POST ``body`` to ``/_sandbox/<name>`` and return the JSON answer.

        Blocking: call it from a thread other than the sandbox's loop (the sync mode's normal
        case).  On the sandbox's own loop use :meth:`acontrol`.
        """
        import httpx

        resp = httpx.post(f"{self.api_url}/_sandbox/{name}", json=body, timeout=10.0)
        resp.raise_for_status()
        return resp.json()

    async def acontrol(self, name: str, **body: Any) -> Any:
        """Async twin of :meth:`control`."""
        import httpx

        async with httpx.AsyncClient(timeout=10.0) as client:
            resp = await client.post(f"{self.api_url}/_sandbox/{name}", json=body)
            resp.raise_for_status()
            return resp.json()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the sandbox's loop and return its result (sync mode only)."""
        if self._loop is None:
            raise RuntimeError("the sandbox is not running")

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def restart_gateway(self) -> None:
        """Stop the gateway and start a new one on the same port (sync mode only).

        Every client connection and tunnel of the old gateway is dropped, as when a real
        gateway node restarts; the world (credentials, pool, sessions) carries on.
        """
        if self._loop is None:
            raise RuntimeError("the sandbox is not running")
        asyncio.run_coroutine_threadsafe(self.arestart_gateway(), self._loop).result(timeout=30)

    async def arestart_gateway(self) -> None:
        """Async twin of :meth:`restart_gateway`, on the sandbox's own loop."""
        old = self.gateway
        if old is None:
            raise RuntimeError("this sandbox runs no gateway")
        from proxaro_scrape.sandbox.gateway import GatewayServer

        await old.close()
        new = GatewayServer(self.world, host=self.host, port=self.gateway_port)
        await new.start()
        self.gateway = new
        self._closers = [new.close if c == old.close else c for c in self._closers]

    # ------------------------------------------------------------------ async lifecycle

    async def start(self) -> None:
        """Start every component on the running loop."""
        self._loop = asyncio.get_running_loop()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(server_ctx)
        try:
            if "api" in self.components:
                from proxaro_scrape.sandbox.api import build_api_app

                port = await self._serve(build_api_app(self.world, ca=self.ca), self._ports["api"])
                self.api_url = f"http://{_url_host(self.host)}:{port}"
            if "gateway" in self.components:
                from proxaro_scrape.sandbox.gateway import GatewayServer

                self.gateway = GatewayServer(
                    self.world, host=self.host, port=self._ports["gateway"]
                )
                await self.gateway.start()
                self.gateway_port = self.gateway.port
                self.world.credentials.port = self.gateway_port
                self.world.credentials.gateway = self.host
                self._closers.append(self.gateway.close)
            if "site" in self.components:
                from proxaro_scrape.sandbox.site import build_site_app

                app = build_site_app(self.world)
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
                await runner.setup()
                self._runners.append(runner)
                http_site = web.TCPSite(runner, self.host, self._ports["site"])
                await http_site.start()
                https_site = web.TCPSite(
                    runner, self.host, self._ports["site_https"], ssl_context=server_ctx
                )
                await https_site.start()
                self.site_url = f"http://{_url_host(self.host)}:{_bound_port(http_site)}"
                self.site_https_url = f"https://{_url_host(self.host)}:{_bound_port(https_site)}"
            if "webhooks" in self.components:
                from proxaro_scrape.sandbox.delivery import WebhookDeliverer

                self.deliverer = WebhookDeliverer(self.world, ssl_context=self.client_ssl_context())
                self.deliverer.start()
                self._closers.append(self.deliverer.close)
        except BaseException:
            await self.close()
            raise

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        return _bound_port(site)

    async def close(self) -> None:
        """Stop every component and release every port."""
        for closer in reversed(self._closers):
            result = closer()
            if asyncio.iscoroutine(result):
                await result
        self._closers.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        self._tmp.cleanup()

    # ------------------------------------------------------------------ sync lifecycle

    def __enter__(self) -> Sandbox:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()
        self._owns_loop = True

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="proxaro-sandbox", daemon=True)
        self._thread.start()
        started.result(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        self._loop = None
        self._thread = None
        self._tmp.cleanup()

    def wait(self) -> None:
        """Block until interrupted (the CLI's ``sandbox`` command)."""
        if self._thread is not None:
            self._thread.join()

    def dumps(self) -> str:
        """The one JSON line of ``proxaro-scrape sandbox --json``."""
        return json.dumps(self.info())


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio.Server here
    sockets = getattr(server, "sockets", None)
    assert sockets
    return int(sockets[0].getsockname()[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
