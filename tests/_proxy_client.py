"""A tiny raw HTTP/1.1 proxy client for the gateway tests: every byte on the wire is ours.

Plain clients (curl, requests, httpx) hide what the tests must see: the answer to a CONNECT,
two usernames on one keep-alive connection, exact framing of HEAD/204/304.  This one hides
nothing.  Loopback only.
"""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass, field


def basic(username: str, password: str) -> str:
    """A ``Proxy-Authorization`` value."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def error(self) -> str | None:
        return self.header("X-Proxaro-Error")


class RawConn:
    """One TCP connection to the gateway (or, after :meth:`start_tls`, through a tunnel)."""

    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        assert host.startswith("127.") or host == "::1"
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._fill():
                raise ConnectionError("closed by the peer")
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed by the peer")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def at_eof(self, timeout: float = 5.0) -> bool:
        """Does the peer close the connection (within ``timeout``)?"""
        self.sock.settimeout(timeout)
        try:
            return not self.buf and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def read_response(self, *, head_only: bool = False, connect: bool = False) -> Response:
        raw = self._read_until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        resp = Response(int(status), reason, headers)
        code = resp.status
        if head_only or code in (204, 304) or 100 <= code < 200 or (connect and code == 200):
            return resp
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0].strip(), 16)
                if size == 0:
                    while self._read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                body += self._read_exactly(size)
                self._read_exactly(2)
            resp.body = body
        elif "content-length" in headers:
            resp.body = self._read_exactly(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def request(
        self,
        method: str,
        target: str,
        *,
        auth: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request (absolute-form, or ``host:port`` for CONNECT) and read the answer."""
        lines = [f"{method} {target} HTTP/1.1"]
        if method == "CONNECT":
            lines.append(f"Host: {target}")
        else:
            lines.append("Host: " + target.split("/")[2])
        if auth is not None:
            lines.append(f"Proxy-Authorization: {auth}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        # A refused CONNECT has a body; an accepted one has none.
        return self.read_response(head_only=method == "HEAD", connect=method == "CONNECT")

    def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Turn the tunnel into TLS to the target (after a 200 to CONNECT)."""
        assert not self.buf
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
