"""Outside input the REST client must not believe: one table of cases per class.

- **Base URLs** (``base_url=``, ``PROXARO_BASE_URL``): every refused case names the argument
  (or the variable), never shows a password, and sends nothing: a loopback listener, on the very
  port a wrapped-around port number would reach, sees no connection.
- **Deadlines**: one deadline per call against servers that trickle a byte at a time (in the
  head, in the body), stay silent, or ask for a ``Retry-After`` longer than the time left; the
  pure retry policy shows both sides of the bound without sleeping.
- **Odd answers**: a 2xx carrying the error envelope is that error; a body with none of the
  object's fields is an unexpected shape; unknown fields never print their values.

Both the sync and the async client run every network case.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import tenacity
from _api_support import RawServer, TinyServer
from aiohttp import web
from conftest import run_async

from proxaro_scrape import AsyncProxaro, Pacer, Proxaro
from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import _validate
from proxaro_scrape.api._base import ClientConfig, RequestSpec, RetryPolicy
from proxaro_scrape.api._models import Credentials
from proxaro_scrape.api._retry import retrying_kwargs
from proxaro_scrape.errors import (
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    RateLimitError,
    ServiceUnavailableError,
)

pytestmark = pytest.mark.timeout(120)

KEY = "proxaro_test_" + "0123456789abcdef" * 2
PASSWORD = "hunter2-base-url-password"
KINDS = ("sync", "async")


def _run(coro: Any) -> Any:
    # On a loop of its own in a thread: the main thread's loop belongs to pytest-twisted.
    return run_async(coro)


def _call(kind: str, fn: Callable[[Any], Any], **kw: Any) -> Any:
    """Build a client of ``kind`` and run ``fn(client)`` on it, closing it afterwards."""
    if kind == "sync":
        with Proxaro(**kw) as client:
            return fn(client)

    async def go() -> Any:
        async with AsyncProxaro(**kw) as client:
            return await fn(client)

    return _run(go())


# ---------------------------------------------------------------------------- base URLs


class Listener:
    """A loopback socket that listens and never accepts: a connection would wait in its
    backlog, which :meth:`pending` sees without accepting it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def pending(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0.2)
        return bool(readable)


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.sock.close()


# (id, base URL with {port} for the listener's port, words of the message)
REFUSED_URLS: list[tuple[str, str, tuple[str, ...]]] = [
    ("port_65536", "http://127.0.0.1:65536", ("port", "1 to 65535")),
    ("port_wraps_onto_listener", "http://127.0.0.1:{wrapped}", ("port", "1 to 65535")),
    ("port_0", "http://127.0.0.1:0", ("port", "1 to 65535")),
    ("port_plus_sign", "http://127.0.0.1:+{port}", ("port",)),
    ("port_empty", "http://127.0.0.1:", ("port",)),
    ("port_letters", "http://127.0.0.1:8o8o", ("port",)),
    ("port_non_ascii_digits", "http://127.0.0.1:\u0668\u0660", ("port",)),
    ("port_huge", "http://127.0.0.1:99999999999999999999", ("port",)),
    ("scheme_ftp", "ftp://127.0.0.1:{port}", ("http://", "https://")),
    ("scheme_file", "file:///etc/passwd", ("http://",)),
    ("scheme_missing", "127.0.0.1:{port}", ("http://",)),
    ("userinfo_password", f"http://user:{PASSWORD}@127.0.0.1:{{port}}", ("user or password",)),
    ("userinfo_token_only", f"http://{PASSWORD}@127.0.0.1:{{port}}", ("user or password",)),
    ("userinfo_empty", "http://@127.0.0.1:{port}", ("user or password",)),
    ("query", "http://127.0.0.1:{port}?x=1", ("query",)),
    ("query_bare", "http://127.0.0.1:{port}?", ("query",)),
    ("fragment", "http://127.0.0.1:{port}#frag", ("fragment",)),
    ("fragment_bare", "http://127.0.0.1:{port}/#", ("fragment",)),
    ("backslash_host_trick", "http://127.0.0.1:{port}\\@example.com", ("backslash",)),
    ("space_in_host", "http://127.0.0.1 :{port}", ("whitespace",)),
    ("newline_in_path", "http://127.0.0.1:{port}/a\nb", ("whitespace",)),
    ("nul_in_path", "http://127.0.0.1:{port}/a\x00b", ("control",)),
    ("path_v1", "http://127.0.0.1:{port}/v1", ("without /v1",)),
    ("path_v1_slash", "http://127.0.0.1:{port}/v1/", ("without /v1",)),
    ("path_dotdot", "http://127.0.0.1:{port}/a/../b", ("path prefix",)),
    ("path_dot", "http://127.0.0.1:{port}/./b", ("path prefix",)),
    ("path_double_slash", "http://127.0.0.1:{port}/a//b", ("path prefix",)),
    ("path_percent", "http://127.0.0.1:{port}/%2e%2e", ("path prefix",)),
    ("path_semicolon", "http://127.0.0.1:{port}/a;b", ("path prefix",)),
    ("host_empty", "http://:{port}", ("host",)),
    ("host_short_ipv4", "http://127.1:{port}", ("ipv4",)),
    ("host_ipv4_octet_256", "http://127.0.0.256:{port}", ("ipv4",)),
    ("host_ipv6_bad", "http://[::g]:{port}", ("ipv6",)),
    ("host_ipv6_unbracketed", "http://::1:{port}", ("host",)),
    ("host_label_dash", "http://-bad-.localhost:{port}", ("dns name",)),
    ("host_label_64", f"http://{'a' * 64}.localhost:{{port}}", ("dns name",)),
    ("host_too_long", f"http://{'.'.join(['a' * 60] * 5)}:{{port}}", ("dns name",)),
    ("host_underscore", "http://a_b.localhost:{port}", ("dns name",)),
    ("http_off_loopback", "http://198.51.100.7:{port}", ("clear text", "allow_insecure_http")),
    ("http_dns_name", "http://api.proxaro.io", ("clear text", "PROXARO_ALLOW_INSECURE_HTTP")),
    ("http_loopback_lookalike", "http://127.0.0.1.nip.io:{port}", ("clear text",)),
    ("http_localhost_suffix_trick", "http://localhost.example.com", ("clear text",)),
    ("empty", "", ("non-empty",)),
    ("blank", "   ", ("non-empty",)),
]


def _fill(template: str, port: int) -> str:
    return template.replace("{port}", str(port)).replace("{wrapped}", str(port + 65536))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("template", "words"), [r[1:] for r in REFUSED_URLS],
                         ids=[r[0] for r in REFUSED_URLS])  # fmt: skip
def test_refused_base_urls_name_the_argument_and_send_nothing(
    kind: str, template: str, words: tuple[str, ...], listener: Listener
) -> None:
    url = _fill(template, listener.port)
    with pytest.raises(ConfigurationError) as err:
        _call(kind, lambda c: c.plans.list(), api_key=KEY, base_url=url, max_retries=0)
    exc = err.value
    text = str(exc)
    assert exc.param == "base_url" and text.startswith("base_url ")
    for word in words:
        assert word.lower() in text.lower(), text
    assert PASSWORD not in text and PASSWORD not in repr(exc)
    assert not listener.pending()


@pytest.mark.parametrize(
    ("env", "param", "words"),
    [
        ({"PROXARO_BASE_URL": "http://127.0.0.1:70000"}, "base_url", ("PROXARO_BASE_URL", "port")),
        (
            {"PROXARO_BASE_URL": f"https://u:{PASSWORD}@127.0.0.1"},
            "base_url",
            ("PROXARO_BASE_URL", "****@"),
        ),
        ({"PROXARO_BASE_URL": "http://198.51.100.7"}, "base_url", ("PROXARO_BASE_URL", "clear")),
        (
            {"PROXARO_BASE_URL": "http://198.51.100.7", "PROXARO_ALLOW_INSECURE_HTTP": "maybe"},
            "PROXARO_ALLOW_INSECURE_HTTP",
            ("PROXARO_ALLOW_INSECURE_HTTP",),
        ),
        (
            {"PROXARO_BASE_URL": "http://198.51.100.7", "PROXARO_ALLOW_INSECURE_HTTP": "0"},
            "base_url",
            ("clear text",),
        ),
    ],
    ids=["env_port", "env_userinfo_masked", "env_http", "env_flag_garbage", "env_flag_off"],
)
def test_refused_base_urls_from_the_environment_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], param: str, words: tuple[str, ...]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as err:
        Proxaro(KEY)
    assert err.value.param == param
    for word in words:
        assert word in str(err.value)
    assert PASSWORD not in str(err.value)


# The other side of each bound: (base URL, extra arguments, the base_url the client keeps).
ACCEPTED_URLS: list[tuple[str, dict[str, Any], str]] = [
    ("http://127.0.0.1:1", {}, "http://127.0.0.1:1"),
    ("http://127.0.0.1:65535", {}, "http://127.0.0.1:65535"),
    ("http://127.0.0.1:080", {}, "http://127.0.0.1:80"),
    ("HTTP://LOCALHOST:8080/", {}, "http://localhost:8080"),
    ("http://127.0.0.2:8080", {}, "http://127.0.0.2:8080"),
    ("http://[::1]:8080/", {}, "http://[::1]:8080"),
    ("http://api.localhost:8080", {}, "http://api.localhost:8080"),
    ("https://api.proxaro.io", {}, "https://api.proxaro.io"),
    ("https://api.proxaro.io.", {}, "https://api.proxaro.io"),
    ("https://gw.example.com/proxaro/", {}, "https://gw.example.com/proxaro"),
    ("https://gw.example.com/a-b/c_d/v2", {}, "https://gw.example.com/a-b/c_d/v2"),
    (f"https://{'a' * 63}.example.com", {}, f"https://{'a' * 63}.example.com"),
    ("  https://api.proxaro.io  ", {}, "https://api.proxaro.io"),
    ("http://198.51.100.7:8080", {"allow_insecure_http": True}, "http://198.51.100.7:8080"),
]


@pytest.mark.parametrize(("url", "kw", "kept"), ACCEPTED_URLS, ids=[u for u, _, _ in ACCEPTED_URLS])
def test_accepted_base_urls_are_kept_normalised(url: str, kw: dict[str, Any], kept: str) -> None:
    with Proxaro(KEY, url, **kw) as client:
        assert client.base_url == kept
        assert PASSWORD not in repr(client)


def test_insecure_http_opt_in_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXARO_ALLOW_INSECURE_HTTP", "1")
    with Proxaro(KEY, "http://198.51.100.7:8080") as client:
        assert client.base_url == "http://198.51.100.7:8080"
    with pytest.raises(ConfigurationError) as err:
        Proxaro(KEY, "http://198.51.100.7", allow_insecure_http=1)  # type: ignore[arg-type]
    assert err.value.param == "allow_insecure_http"


def test_the_loopback_url_reaches_the_listener_it_names(listener: Listener) -> None:
    """The accepted side: a loopback http URL is used as written (the sandbox's case)."""
    with pytest.raises(APITimeoutError):
        _call(
            "sync",
            lambda c: c.plans.list(),
            api_key=KEY,
            base_url=f"http://127.0.0.1:{listener.port}",
            timeout=0.5,
            max_retries=0,
        )
    assert listener.pending()
    conn, _ = listener.sock.accept()
    conn.close()


# ---------------------------------------------------------------------------- deadlines


class SlowServer(RawServer):
    """Answers each connection per ``mode``:

    ``head``: trickles an endless header, one byte every ``gap`` seconds;
    ``body``: a complete head announcing 10,000 bytes, then one byte every ``gap``;
    ``silent``: reads the request and never answers;
    ``fast``: answers the plans list at once.
    """

    def __init__(self, mode: str, gap: float = 0.1) -> None:
        self.mode = mode
        self.gap = gap
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        if self.mode == "fast":
            body = b'{"object": "list", "data": []}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            return
        if self.mode == "body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
        elif self.mode == "head":
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not self.stopping:
            if self.mode != "silent":
                conn.sendall(b"a")
            self.wait(self.gap)


DEADLINE = 1.0


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait of 50 ms or more the clients ask for (``time.sleep``, ``asyncio.sleep``,
    tenacity's waits go through them), recorded and then slept as asked: "at once" means the
    client never waited toward a pause it cannot afford, which no stopwatch on a busy machine
    can tell apart from a slow one."""
    import asyncio

    waits: list[float] = []
    real_sleep, real_asleep = time.sleep, asyncio.sleep

    def sleep(seconds: float) -> None:
        if seconds >= 0.05:
            waits.append(seconds)
        real_sleep(seconds)

    async def asleep(seconds: float, result: Any = None) -> Any:
        if seconds >= 0.05:
            waits.append(seconds)
        return await real_asleep(seconds, result)

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(asyncio, "sleep", asleep)
    return waits


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("mode", "retries"),
    [("head", 0), ("body", 0), ("silent", 0), ("head", 3), ("body", 3)],
    ids=[
        "trickled_head",
        "trickled_body",
        "silent",
        "trickled_head_retries",
        "trickled_body_retries",
    ],
)
@pytest.mark.timeout(60)
def test_one_deadline_bounds_the_whole_call(kind: str, mode: str, retries: int) -> None:
    """The server never finishes (a byte every 0.1 s, forever): a client with per-read
    timeouts only would never return, so the call returning APITimeoutError at all is the
    proof, and the test's own timeout (60 s, far beyond the 1 s deadline) the failure bound."""
    server = SlowServer(mode)
    try:
        with pytest.raises(APITimeoutError) as err:
            _call(
                kind,
                lambda c: c.plans.list(),
                base_url=server.url,
                timeout=DEADLINE,
                max_retries=retries,
                retry_policy=RetryPolicy(initial_backoff=0.05, max_backoff=0.05),
            )
    finally:
        server.close()
    assert err.value.timeout == DEADLINE and f"{DEADLINE:g} s" in str(err.value)
    assert server.connections >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_prompt_answer_within_the_deadline_is_read(kind: str) -> None:
    server = SlowServer("fast")
    try:
        plans = _call(kind, lambda c: c.plans.list(), base_url=server.url, timeout=DEADLINE)
    finally:
        server.close()
    assert plans == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_pacing_wait_beyond_the_deadline_raises_at_once(kind: str, slept: list[float]) -> None:
    server = SlowServer("fast")
    pacer = Pacer(1, window=600.0, burst=1)  # one request per ten minutes
    try:
        assert _call(kind, lambda c: c.plans.list(), base_url=server.url, pacer=pacer) == []
        with pytest.raises(APITimeoutError) as err:
            _call(kind, lambda c: c.plans.list(), base_url=server.url, pacer=pacer, timeout=2.0)
        assert slept == []  # at once: it did not wait toward the ten minutes, nor the 2 s
    finally:
        server.close()
    assert err.value.timeout == 2.0 and server.connections == 1


def _limited(status: int, retry_after: str) -> Callable[[web.Request], web.Response]:
    def answer(request: web.Request) -> web.Response:
        hits = answer.hits = getattr(answer, "hits", 0) + 1  # type: ignore[attr-defined]
        if hits > 1:
            return web.json_response({"object": "list", "data": []})
        kind = "rate_limited" if status == 429 else "service_unavailable"
        body = {"error": {"type": kind, "message": "not now", "request_id": "req_1"}}
        return web.json_response(body, status=status, headers={"Retry-After": retry_after})

    return answer


# (id, status, Retry-After, timeout, expected error or None, requests the server sees)
RETRY_AFTER_CASES: list[tuple[str, int, str, float, type[APIError] | None, int]] = [
    ("429_beyond_deadline", 429, "30", 2.0, RateLimitError, 1),
    ("429_beyond_max_retry_after", 429, "3600", 2.0, RateLimitError, 1),
    ("503_beyond_deadline", 503, "30", 2.0, ServiceUnavailableError, 1),
    ("429_http_date_beyond", 429, "Wed, 01 Jan 2200 00:00:00 GMT", 2.0, RateLimitError, 1),
    ("429_within_deadline", 429, "0", 5.0, None, 2),
    ("503_within_deadline", 503, "0", 5.0, None, 2),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("status", "header", "timeout", "error", "requests"),
    [c[1:] for c in RETRY_AFTER_CASES],
    ids=[c[0] for c in RETRY_AFTER_CASES],
)
def test_retry_after_beyond_the_deadline_raises_at_once(
    kind: str,
    status: int,
    header: str,
    timeout: float,
    error: type[APIError] | None,
    requests: int,
    slept: list[float],
) -> None:
    with TinyServer({"/v1/plans": _limited(status, header)}) as server:
        if error is None:
            assert _call(kind, lambda c: c.plans.list(), base_url=server.url, timeout=timeout) == []
        else:
            with pytest.raises(error) as err:
                _call(kind, lambda c: c.plans.list(), base_url=server.url, timeout=timeout)
            text = str(err.value)
            assert "asked to retry in" in text and f"{timeout:g} s timeout" in text
            assert err.value.retry_after is not None and err.value.retry_after > timeout
            assert slept == []  # at once, not after a wait
        assert server.hits["/v1/plans"] == requests


def _config(max_retries: int = 3, deadline: float | None = 10.0) -> ClientConfig:
    return ClientConfig(
        api_key=None,
        base_url="https://api.proxaro.io",
        api_version="2026-04-01",
        timeout=httpx.Timeout(10.0),
        max_retries=max_retries,
        retry_policy=RetryPolicy(),
        pacer=None,
        deadline=deadline,
    )


@pytest.mark.parametrize(
    ("retry_after", "left", "retried"),
    [
        (4.9, 5.0, True),
        (5.0, 5.0, False),
        (5.1, 5.0, False),
        (59.0, 60.0, True),
        (61.0, 60.0, False),  # beyond max_retry_after too: never retried early
        (None, 5.0, True),  # backoff 0.5 s fits
        (None, 0.4, False),  # backoff 0.5 s does not
    ],
)
def test_retry_policy_stops_when_the_wait_does_not_fit(
    retry_after: float | None, left: float, retried: bool
) -> None:
    """Both sides of the bound, with a clock that never moves (no sleeping)."""
    now = 1000.0
    failures = [RateLimitError("slow", status=429, retry_after=retry_after)]
    sleeps: list[float] = []

    def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    kwargs = retrying_kwargs(
        _config(deadline=max(left, 60.0)),
        RequestSpec("GET", "/v1/x", dict),
        rng=lambda: 0.0,
        deadline=now + left,
        clock=lambda: now,
    )
    retrying = tenacity.Retrying(sleep=sleeps.append, **kwargs)
    if retried:
        assert retrying(attempt) == "ok" and len(sleeps) == 1
    else:
        with pytest.raises(RateLimitError) as err:
            retrying(attempt)
        assert sleeps == [] and "s left of this call's" in str(err.value)


# ---------------------------------------------------------------------------- odd answers


def _answer(body: Any, status: int = 200) -> Callable[[web.Request], web.Response]:
    return lambda request: web.json_response(body, status=status)


# (id, body of a 200 to GET /v1/credentials, expected error class, words)
ODD_ANSWERS: list[tuple[str, Any, type[APIError], tuple[str, ...]]] = [
    (
        "envelope_rate_limited",
        {"error": {"type": "rate_limited", "message": "slow down"}},
        RateLimitError,
        ("slow down",),
    ),
    (
        "envelope_auth",
        {"error": {"type": "authentication_required", "message": "bad key"}},
        AuthenticationError,
        ("bad key", "HTTP 200"),
    ),
    ("envelope_unknown_type", {"error": {"type": "teapot", "message": "m"}}, APIError, ("m",)),
    ("envelope_message_only", {"error": {"message": "only this"}}, APIError, ("only this",)),
    ("error_as_string", {"error": "boom"}, APIError, ("unexpected shape",)),
    ("empty_object", {}, APIError, ("unexpected shape",)),
    ("foreign_object", {"foo": 1, "bar": 2}, APIError, ("unexpected shape",)),
    ("list_not_object", [1, 2], APIError, ("unexpected shape",)),
    ("null", None, APIError, ("unexpected shape",)),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("body", "error", "words"), [a[1:] for a in ODD_ANSWERS], ids=[a[0] for a in ODD_ANSWERS]
)
def test_a_2xx_that_is_not_the_object_is_an_error(
    kind: str, body: Any, error: type[APIError], words: tuple[str, ...]
) -> None:
    with TinyServer({"/v1/credentials": _answer(body)}) as server:
        with pytest.raises(error) as err:
            _call(
                kind,
                lambda c: c.credentials.get(),
                api_key=KEY,
                base_url=server.url,
                max_retries=0,
            )
        assert server.hits["/v1/credentials"] == 1
    assert type(err.value) is error
    for word in words:
        assert word in str(err.value)


CREDENTIALS = {
    "object": "credentials",
    "id": "cred_1",
    "gateway": "127.0.0.1",
    "port": 7777,
    "username": "u_1",
    "password": "gateway-password-1",
}


@pytest.mark.parametrize(
    ("extra", "secret_paths"),
    [
        ({"signing_secret": "whsec_extra_1"}, [("signing_secret",)]),
        ({"api_key": "K3Y-extra-2"}, [("api_key",)]),
        ({"session_token": "tok-extra-3"}, [("session_token",)]),
        ({"nested": {"private_key": "pk-extra-4", "note": "fine"}}, [("nested", "private_key")]),
        ({"hints": [{"password": "pw-extra-5"}]}, [("hints", 0, "password")]),
        ({"note": "not-a-secret-6"}, []),
        ({"error": None}, []),  # the other side: a field named error that is no envelope
    ],
    ids=["secret", "api_key", "token", "nested", "in_list", "plain", "error_null"],
)
def test_unknown_fields_never_print_their_values(
    extra: dict[str, Any], secret_paths: list[tuple[Any, ...]]
) -> None:
    with TinyServer({"/v1/credentials": _answer({**CREDENTIALS, **extra})}) as server:
        cred = _call("sync", lambda c: c.credentials.get(), api_key=KEY, base_url=server.url)
    text = repr(cred)
    for name, value in extra.items():
        assert name in text  # the name is shown, never the value
        assert repr(value) not in text and (not isinstance(value, str) or value not in text)
    assert "gateway-password-1" not in text
    for path in secret_paths:
        node: Any = cred.extra
        for step in path:
            node = node[step]
        assert isinstance(node, Secret) and node.reveal() not in str(cred.extra)
    if not secret_paths and isinstance(extra.get("note"), str):
        assert cred.note == extra["note"]
    assert isinstance(cred, Credentials) and cred.password.reveal() == "gateway-password-1"


def test_mask_url_hides_any_userinfo() -> None:
    assert _validate.mask_url(f"see http://u:{PASSWORD}@h:1/x") == "see http://****@h:1/x"
    assert _validate.mask_url("https://h/x") == "https://h/x"


def test_unknown_list_level_fields_never_print_their_values() -> None:
    page = {
        "object": "list",
        "data": [],
        "has_more": False,
        "export_token": "tok-page-1",
        "total": 0,
    }
    with TinyServer({"/v1/orders": _answer(page)}) as server:
        got = _call("sync", lambda c: c.orders.list_page(), api_key=KEY, base_url=server.url)
    assert isinstance(got.extra["export_token"], Secret) and got.extra["total"] == 0
    assert "tok-page-1" not in repr(got) + str(got.extra)
