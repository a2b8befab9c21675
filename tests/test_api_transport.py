"""The API clients' own transports: :class:`WireTransport` (``http.client`` under httpx) and,
for the async client, the same run from worker threads (:class:`ThreadedTransport`).

What they must keep from httpx's native transports: the request exactly as httpx built it, the
answer's raw bytes (decoded once, by the client), keep-alive with a closed idle connection
replaced without sending a request twice, TLS verified against the roots given, httpx's
exceptions, and the call's deadline on every socket operation, in a worker thread too.  What
they must spare: httpcore and anyio, which a process otherwise loads at its first call (the
reason they exist, pinned in a fresh interpreter).
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _api_support import RawServer
from _support import eventually, refused_port
from aiohttp import web
from conftest import run_async

from proxaro_scrape.api import _deadline, _wire
from proxaro_scrape.api._deadline import ThreadedTransport, deadline_scope
from proxaro_scrape.api._wire import WireTransport

TESTS = Path(__file__).resolve().parent


class Recording(httpx.MockTransport):
    """A sync transport that answers with ``answer`` and notes where and how it was called."""

    def __init__(self, answer: httpx.Response) -> None:
        self.seen: list[dict[str, object]] = []
        self.closed = False

        def handler(request: httpx.Request) -> httpx.Response:
            self.seen.append(
                {
                    "thread": threading.current_thread().name,
                    "deadline": _wire.DEADLINE.get(),
                    "method": request.method,
                    "body": request.read(),
                    "content-type": request.headers.get("content-type"),
                    "content-length": request.headers.get("content-length"),
                }
            )
            return answer

        super().__init__(handler)

    def close(self) -> None:
        self.closed = True


def test_a_request_is_sent_whole_from_a_worker_thread_within_its_deadline() -> None:
    inner = Recording(httpx.Response(201, json={"id": "ord_1"}))

    async def main() -> tuple[int, object, str]:
        async with httpx.AsyncClient(transport=ThreadedTransport(inner)) as client:
            with deadline_scope(123.5):
                r = await client.post("http://api.test/v1/orders", json={"plan": "growth"})
            return r.status_code, r.json(), threading.current_thread().name

    status, body, caller = run_async(main())
    assert (status, body) == (201, {"id": "ord_1"})
    [seen] = inner.seen
    assert str(seen["thread"]).startswith("proxaro-api") and seen["thread"] != caller
    assert seen["deadline"] == 123.5  # the caller's deadline bounds the thread's sockets
    assert seen["method"] == "POST" and json.loads(seen["body"]) == {"plan": "growth"}  # type: ignore[arg-type]
    assert seen["content-type"] == "application/json"
    assert seen["content-length"] == str(len(seen["body"]))  # type: ignore[arg-type]


def test_an_encoded_answer_is_decoded_once_by_the_client() -> None:
    payload = json.dumps({"object": "list", "data": [1, 2, 3]}).encode()
    inner = Recording(
        httpx.Response(
            200,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            content=gzip.compress(payload),
        )
    )

    async def main() -> object:
        async with httpx.AsyncClient(transport=ThreadedTransport(inner)) as client:
            return (await client.get("http://api.test/v1/plans")).json()

    assert run_async(main()) == {"object": "list", "data": [1, 2, 3]}


def test_a_closed_transport_refuses_to_send_and_closes_the_sync_one() -> None:
    inner = Recording(httpx.Response(200, json={}))
    transport = ThreadedTransport(inner)

    async def main() -> None:
        client = httpx.AsyncClient(transport=transport)
        await client.get("http://api.test/v1/status")
        await transport.aclose()
        with pytest.raises(httpx.ConnectError, match="closed"):
            await transport.handle_async_request(httpx.Request("GET", "http://api.test/v1/x"))

    run_async(main())
    assert inner.closed and len(inner.seen) == 1


def test_many_calls_at_once_each_get_their_own_answer() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"n": int(request.query["n"])})

    app = web.Application()
    app.router.add_get("/echo", answer)

    async def main() -> list[int]:
        import asyncio

        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            client = _deadline.async_http_client(httpx.Timeout(10.0), "http://127.0.0.1")
            async with client:
                answers = await asyncio.gather(
                    *(client.get(f"http://127.0.0.1:{port}/echo?n={n}") for n in range(40))
                )
            return [a.json()["n"] for a in answers]
        finally:
            await runner.cleanup()

    assert run_async(main()) == list(range(40))


def test_calls_that_succeed_load_no_http_stack_but_httpx_nor_tenacity() -> None:
    """The point of these transports: a crawl's first API calls load no HTTP stack beyond httpx
    itself, and no event-loop backend (some 50 ms of CPU in all); tenacity is imported only when
    a retry is due; the User-Agent's version is a plain attribute, not ``importlib.metadata``.
    A fresh interpreter, so no other test has loaded them."""
    script = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from _api_support import TinyServer
from aiohttp import web
from proxaro_scrape import AsyncProxaro, Proxaro

def plans(request):
    return web.json_response({"object": "list", "data": [], "has_more": False})

KEY = "proxaro_test_" + "0123456789abcdef" * 2
with TinyServer({"/v1/plans": plans}) as server:
    async def main():
        async with AsyncProxaro(KEY, server.url) as client:
            return await client.plans.list()
    assert asyncio.run(main()) == []
    with Proxaro(KEY, server.url) as client:
        assert client.plans.list() == []
heavy = ("anyio", "httpcore", "h11", "tenacity")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m == "importlib.metadata"))
"""
    out = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [sys.executable, "-c", script, str(TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------- the wire


class Scripted(RawServer):
    """A loopback HTTP/1.1 server on raw sockets, each request answered by ``answer``.

    ``answer(n, head, body)`` gets the connection's request count so far, the request head and
    body, and returns the bytes to send and whether to close the connection after them (without
    saying so: as a server closes an idle keep-alive connection).  ``None`` closes at once,
    unanswered.
    """

    def __init__(self, answer: Any, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        super().__init__(tls)

    def serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        n = 0
        while not self.stopping:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = reader.read(length) if length else b""
            self.requests.append(head + body)
            n += 1
            reply = self.answer(n, head, body)
            if reply is None:
                return
            data, close = reply
            conn.sendall(data)
            if close:
                return


def _ok(body: bytes = b'{"ok": true}', *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", *extra]
    if not any(h.lower().startswith("transfer-encoding") for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
def raw() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(answer: Any, tls: ssl.SSLContext | None = None) -> Scripted:
        servers.append(Scripted(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _client(**kw: Any) -> httpx.Client:
    return httpx.Client(transport=WireTransport(**kw), timeout=5.0)


def test_a_kept_alive_connection_carries_the_next_calls(raw: Callable[..., Scripted]) -> None:
    server = raw(lambda n, head, body: (_ok(b'{"n": %d}' % n), False))
    with _client() as client:
        answers = [client.get(f"http://127.0.0.1:{server.port}/v1/x").json() for _ in range(3)]
    assert answers == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert server.connections == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("wait", ["closed", "racing"])
def test_a_connection_the_server_closed_while_idle_is_replaced_once(
    raw: Callable[..., Scripted], method: str, wait: str
) -> None:
    # Each connection answers one request, then closes without a word (an idle timeout).
    server = raw(lambda n, head, body: (_ok(b'{"body": "%s"}' % body.decode().encode()), True))
    with _client() as client:
        url = f"http://127.0.0.1:{server.port}/v1/x"
        first = client.request(method, url, content=b"a" if method == "POST" else None)
        if wait == "closed":  # noticed before reuse; else maybe only when the send fails
            eventually(lambda: server.closed == 1)
        second = client.request(method, url, content=b"b" if method == "POST" else None)
    assert first.status_code == second.status_code == 200
    if method == "POST":
        assert (first.json(), second.json()) == ({"body": "a"}, {"body": "b"})
    assert server.connections == 2
    assert len(server.requests) == 2  # each request reached the server once


def test_a_fresh_connection_closed_unanswered_is_a_protocol_error(
    raw: Callable[..., Scripted],
) -> None:
    server = raw(lambda n, head, body: None)
    with _client() as client, pytest.raises(httpx.RemoteProtocolError):
        client.post(f"http://127.0.0.1:{server.port}/v1/orders", content=b"{}")
    assert len(server.requests) == 1  # sent once: a request the server saw is not sent again


def test_a_refused_connection_is_a_connect_error() -> None:
    with refused_port() as port, _client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/v1/status")


def test_a_chunked_gzipped_answer_is_read_and_decoded(raw: Callable[..., Scripted]) -> None:
    payload = gzip.compress(b'{"object": "list", "data": []}')
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    server = raw(
        lambda n, head, body: (
            _ok(chunked, "Transfer-Encoding: chunked", "Content-Encoding: gzip"),
            False,
        )
    )
    with _client() as client:
        answer = client.get(f"http://127.0.0.1:{server.port}/v1/plans")
    assert answer.json() == {"object": "list", "data": []}
    assert b"accept-encoding: gzip" in server.requests[0].lower()


def test_the_request_goes_out_as_httpx_built_it(raw: Callable[..., Scripted]) -> None:
    server = raw(lambda n, head, body: (_ok(), False))
    with _client() as client:
        client.post(
            f"http://127.0.0.1:{server.port}/v1/orders?x=a%20b",
            json={"plan": "growth"},
            headers={"Authorization": "Bearer k", "X-API-Version": "2026-01-01"},
        )
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/orders?x=a%20b HTTP/1.1"
    sent = {k.lower(): v.strip() for k, v in (ln.split(b":", 1) for ln in lines[1:])}
    assert sent[b"host"] == f"127.0.0.1:{server.port}".encode()
    assert sent[b"authorization"] == b"Bearer k" and sent[b"x-api-version"] == b"2026-01-01"
    assert json.loads(body) == {"plan": "growth"} and sent[b"content-length"] == b"%d" % len(body)
    assert len([ln for ln in lines if ln.lower().startswith(b"host:")]) == 1


def test_a_silent_server_times_out_reading_and_the_deadline_bounds_each_read(
    raw: Callable[..., Scripted],
) -> None:
    release = threading.Event()

    def silent(n: int, head: bytes, body: bytes) -> tuple[bytes, bool]:
        release.wait(10)
        return _ok(), True

    server = raw(silent)
    try:
        with httpx.Client(transport=WireTransport(), timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.get(f"http://127.0.0.1:{server.port}/v1/x")
        with _client() as client, deadline_scope(time.monotonic() + 0.3):
            with pytest.raises(httpx.ReadTimeout):  # a 5 s read timeout, a 0.3 s deadline
                client.get(f"http://127.0.0.1:{server.port}/v1/x")
        with _client() as client, deadline_scope(time.monotonic() - 1):
            with pytest.raises(httpx.ConnectTimeout, match="deadline"):
                client.get(f"http://127.0.0.1:{server.port}/v1/x")
    finally:
        release.set()
    assert server.connections == 2  # the expired deadline sent nothing


def test_tls_is_verified_against_the_roots_given(
    raw: Callable[..., Scripted], tmp_path: Path
) -> None:
    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server = raw(lambda n, head, body: (_ok(), False), tls=server_ctx)
    url = f"https://127.0.0.1:{server.port}/v1/status"
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with _client(verify=trusting) as client:
        assert client.get(url).json() == {"ok": True}
        assert client.get(url).json() == {"ok": True}
    assert server.connections == 1
    # httpx's defaults (certifi's public roots) and a plain-http client's no-roots context
    # both refuse the sandbox-signed certificate.
    for verify in (True, _deadline.tls_for("http://127.0.0.1")):
        with _client(verify=verify) as client, pytest.raises(httpx.ConnectError, match="CERT"):
            client.get(url)
