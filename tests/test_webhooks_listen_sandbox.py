"""``proxaro-scrape webhooks listen --sandbox`` receives a local sandbox's events, end to end.

Two processes, as a user runs them: ``proxaro-scrape sandbox --json`` in one, the listener in
the other; events emitted in the sandbox are printed by the listener.  Every wait is bounded
and both processes are stopped at the end.  Plus the sandbox's certificate control
(``POST /_sandbox/server_cert``) as a table of cases, and the usage errors of ``--sandbox``.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from click.testing import CliRunner

from proxaro_scrape.cli import main
from proxaro_scrape.sandbox import Sandbox
from proxaro_scrape.sandbox._tls import MAX_HOSTS

EXE = str(Path(sys.executable).with_name("proxaro-scrape"))
KEY = "proxaro_test_" + "0" * 32  # well formed, known to no API
WAIT = 30.0  # seconds any one line may take on a loaded machine


class Lines:
    """Lines of a subprocess stream, read in a thread so that a test waits with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._q.put(line)

    def until(self, needle: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._q.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {needle!r} in {timeout} s: {self.seen}"
                ) from None
            self.seen.append(line)
            if needle in line:
                return line


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start ``proxaro-scrape ARGS``; every process is stopped (TERM, then KILL) at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
        proc = subprocess.Popen(
            [EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        return proc, Lines(proc.stdout), Lines(proc.stderr)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def emit(api_url: str, type_: str) -> dict[str, Any]:
    resp = httpx.post(f"{api_url}/_sandbox/event", json={"type": type_}, timeout=10)
    resp.raise_for_status()
    return dict(resp.json())


def test_listen_prints_what_a_sandbox_in_another_process_delivers(spawn: Any) -> None:
    sandbox, sb_out, _ = spawn("sandbox", "--json")
    info = json.loads(sb_out.until("api_url"))
    api = ["--api-key", info["api_key"], "--base-url", info["api_url"]]
    listener, out, err = spawn(*api, "webhooks", "listen", "--sandbox", "--port", "0", "--json")
    hook_id = err.until("Registered").split()[1]
    url = err.until("Listening on").split()[-1]
    assert hook_id.startswith("wh_") and url.startswith("https://127.0.0.1:")
    assert info["api_key"] not in "".join(err.seen)

    paid = emit(info["api_url"], "order.paid")
    got = json.loads(out.until(paid["id"]))
    assert got["type"] == "order.paid" and got["data"]["id"] == paid["data"]["id"]
    rotated = httpx.post(f"{info['api_url']}/_sandbox/rotate", json={}, timeout=10).json()
    line = out.until("credentials.rotated")
    assert rotated["password"] not in line  # an event never carries the password

    listener.send_signal(signal.SIGTERM)
    assert listener.wait(timeout=20) == 0
    # Again on the same port: the endpoint is reused with a new secret (the API has no delete).
    port = url.rsplit(":", 1)[1].rstrip("/")
    again, out, err = spawn(*api, "webhooks", "listen", "--sandbox", "--port", port)
    assert err.until("Registered").split()[1] == hook_id
    err.until("Listening on")
    cap = emit(info["api_url"], "usage.threshold.80")
    assert "usage.threshold.80" in out.until(cap["id"])
    hooks = httpx.get(
        f"{info['api_url']}/v1/webhooks",
        headers={"Authorization": f"Bearer {info['api_key']}"},
        timeout=10,
    ).json()["data"]
    assert [h["id"] for h in hooks] == [hook_id]
    for proc in (again, sandbox):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# (case, arguments after the API options, what the one error line names)
USAGE_ERRORS = [
    ("with --secret", ["--secret", "whsec_test_x"], "--secret"),
    ("with --ca-out", ["--ca-out", "ca.pem"], "--ca-out"),
    ("listening off loopback", ["--host", "0.0.0.0"], "--host"),
    ("listening on a name", ["--host", "example.com"], "--host"),
]


@pytest.mark.parametrize(("args", "named"), [pytest.param(a, n, id=c) for c, a, n in USAGE_ERRORS])
def test_sandbox_option_usage_errors_exit_2_before_anything_is_sent(
    args: list[str], named: str
) -> None:
    port = _free_port()  # nobody listens there: anything sent would fail differently
    result = CliRunner().invoke(
        main,
        ["--api-key", KEY, "--base-url", f"http://127.0.0.1:{port}",
         "webhooks", "listen", "--sandbox", "--port", "0", *args],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


# (base URL, the option the one error line names): a real Proxaro, another machine, no port;
# a scheme the client itself refuses first.
NOT_A_SANDBOX = [
    ("https://api.proxaro.io", "--sandbox"),
    ("http://192.0.2.1:8080", "--sandbox"),  # TEST-NET-1: documentation only
    ("http://127.0.0.1", "--sandbox"),
    ("ftp://127.0.0.1:21", "--base-url"),
]


@pytest.mark.parametrize(("base_url", "named"), NOT_A_SANDBOX)
def test_sandbox_option_refuses_an_api_that_is_not_a_local_sandbox(
    base_url: str, named: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["--api-key", KEY, "--base-url", base_url, "webhooks", "listen", "--sandbox",
         "--allow-insecure-http", "--port", "0"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- POST /_sandbox/server_cert

# (case, body, issued?)
CERT_CASES: list[tuple[str, Any, bool]] = [
    ("default names", {}, True),
    ("localhost", {"hosts": ["localhost"]}, True),
    ("127.0.0.1", {"hosts": ["127.0.0.1"]}, True),
    ("the edge of 127/8", {"hosts": ["127.255.255.254"]}, True),
    ("::1", {"hosts": ["::1"]}, True),
    (f"{MAX_HOSTS} names", {"hosts": [f"127.0.0.{i}" for i in range(1, MAX_HOSTS + 1)]}, True),
    (f"{MAX_HOSTS + 1} names", {"hosts": [f"127.0.0.{i}" for i in range(1, MAX_HOSTS + 2)]},
     False),
    ("no names", {"hosts": []}, False),
    ("just past 127/8", {"hosts": ["128.0.0.1"]}, False),
    ("a private address", {"hosts": ["10.0.0.1"]}, False),
    ("any address", {"hosts": ["0.0.0.0"]}, False),
    ("a public name", {"hosts": ["example.com"]}, False),
    ("a name that resolves to loopback elsewhere", {"hosts": ["127.0.0.1.nip.io"]}, False),
    ("localhost with a dot", {"hosts": ["localhost."]}, False),
    ("IPv4-mapped loopback", {"hosts": ["::ffff:127.0.0.1"]}, False),
    ("one bad name among good ones", {"hosts": ["127.0.0.1", "example.com"]}, False),
    ("a string, not a list", {"hosts": "127.0.0.1"}, False),
    ("a number in the list", {"hosts": [127]}, False),
    ("an unknown field", {"hosts": ["127.0.0.1"], "ca": True}, False),
    ("not an object", ["127.0.0.1"], False),
]  # fmt: skip


@pytest.mark.parametrize(("body", "issued"), [pytest.param(b, i, id=c) for c, b, i in CERT_CASES])
def test_server_cert_control(sandbox: Sandbox, body: Any, issued: bool) -> None:
    resp = httpx.post(f"{sandbox.api_url}/_sandbox/server_cert", json=body, timeout=10)
    if not issued:
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["code"] == "invalid_control" and "server_cert" in error["message"]
        return
    assert resp.status_code == 200
    got = resp.json()
    assert got["hosts"] == body.get("hosts", ["127.0.0.1", "localhost"])
    assert "PRIVATE KEY" in got["key_pem"] and "CERTIFICATE" in got["cert_pem"]
    assert got["ca_pem"] == Path(sandbox.ca_cert).read_text()
    assert sandbox.api_key not in resp.text


def test_an_issued_certificate_is_trusted_by_the_deliverer_s_context(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A TLS handshake against a server using it, verified as the deliverer verifies."""
    got = httpx.post(f"{sandbox.api_url}/_sandbox/server_cert", json={}, timeout=10).json()
    pem = tmp_path / "server.pem"
    pem.write_text(got["key_pem"] + got["cert_pem"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(pem))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = sandbox.client_ssl_context()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() is not None
                tls.sendall(b"x")
        thread.join(timeout=10)
