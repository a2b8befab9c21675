"""A real ``redis-server`` for the fleet tests, on a free loopback port (as pytest-redis does).

``redis_server`` (a fixture: import it into the test module) starts one with no persistence
(``--save '' --appendonly no``) in a temporary directory and stops it after the test;
:meth:`RedisServer.stop` / :meth:`RedisServer.start` stop it mid-test and bring it back on the
same port (empty: a restart loses everything, as a Redis without persistence does).  Tests are
skipped when ``redis-server`` or redis-py is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests._support import eventually


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process (see the module docstring)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="proxaro-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc = self._proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        eventually(answers, timeout, interval=0.05, message="redis-server answering PING")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port (with no data)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        self._dir.cleanup()


def redis_binary() -> str:
    """The ``redis-server`` path, or skip the test."""
    pytest.importorskip("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped after the test."""
    server = RedisServer(redis_binary())
    server.start()
    try:
        yield server
    finally:
        server.close()
