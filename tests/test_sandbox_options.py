"""Sandbox(...) checks every argument before anything is generated, written or bound.

One table: each row is an argument's value on one side of a bound, and whether the sandbox
takes it.  A refused value raises SandboxConfigError (a ValueError) naming the argument; an
accepted one is shown to start and serve where it matters (ports, host), so that the check is
not stricter than what works.
"""

from __future__ import annotations

import math
import socket
from typing import Any

import httpx
import pytest

from proxaro_scrape.sandbox import Sandbox, SandboxConfigError, _runner

OK = None

#: (argument, value, the argument the error names, or OK).
CASES: list[tuple[str, Any, str | None]] = [
    # seed: any int, nothing else.
    ("seed", 0, OK),
    ("seed", -1, OK),
    ("seed", 2**40, OK),
    ("seed", True, "seed"),
    ("seed", "7", "seed"),
    ("seed", 7.0, "seed"),
    ("seed", None, "seed"),
    # plan: one of the reference's plan ids.
    ("plan", "starter", OK),
    ("plan", "network", OK),
    ("plan", "Growth", "plan"),
    ("plan", "enterprise", "plan"),
    ("plan", "", "plan"),
    ("plan", None, "plan"),
    # host: loopback only, decided from the literal.
    ("host", "127.0.0.1", OK),
    ("host", "127.255.255.254", OK),
    ("host", "::1", OK),
    ("host", "localhost", OK),
    ("host", "0.0.0.0", "host"),
    ("host", "128.0.0.1", "host"),
    ("host", "126.255.255.255", "host"),
    ("host", "10.0.0.1", "host"),
    ("host", "::", "host"),
    ("host", "::2", "host"),
    ("host", "example.com", "host"),
    ("host", "localhost.example.com", "host"),
    ("host", "", "host"),
    ("host", 2130706433, "host"),  # 127.0.0.1 as an int: ipaddress would take it
    ("host", b"127.0.0.1", "host"),
    ("host", None, "host"),
    # ports: an int in 0..65535 (0 = a free one), each argument on its own.
    *[
        row
        for name in ("api_port", "gateway_port", "site_port", "site_https_port")
        for row in (
            (name, 0, OK),
            (name, 65535, OK),
            (name, -1, name),
            (name, 65536, name),
            (name, True, name),
            (name, False, name),
            (name, "8080", name),
            (name, 8080.0, name),
            (name, None, name),
        )
    ],
    # grace_seconds: finite, 0 or more.
    ("grace_seconds", 0, OK),
    ("grace_seconds", 0.0, OK),
    ("grace_seconds", 86400 * 365, OK),
    ("grace_seconds", -0.001, "grace_seconds"),
    ("grace_seconds", math.inf, "grace_seconds"),
    ("grace_seconds", math.nan, "grace_seconds"),
    ("grace_seconds", True, "grace_seconds"),
    ("grace_seconds", "60", "grace_seconds"),
    # clock_speed: finite, above 0.
    ("clock_speed", 0.001, OK),
    ("clock_speed", 1, OK),
    ("clock_speed", 1e6, OK),
    ("clock_speed", 0, "clock_speed"),
    ("clock_speed", -1.0, "clock_speed"),
    ("clock_speed", math.inf, "clock_speed"),
    ("clock_speed", math.nan, "clock_speed"),
    ("clock_speed", False, "clock_speed"),
    ("clock_speed", "60", "clock_speed"),
    # components: a non-empty collection of known names.
    ("components", {"api"}, OK),
    ("components", ["api", "api"], OK),
    ("components", ("api", "gateway", "site", "webhooks"), OK),
    ("components", set(), "components"),
    ("components", "api", "components"),  # a str is a collection of letters
    ("components", ["api", "dashboard"], "components"),
    ("components", {"API"}, "components"),
    ("components", [1], "components"),
    ("components", None, "components"),
]


def _id(case: tuple[str, Any, str | None]) -> str:
    name, value, refused = case
    return f"{name}={value!r}-{'refused' if refused else 'ok'}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_each_argument_on_both_sides_of_its_bounds(
    case: tuple[str, Any, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, value, refused = case
    kwargs: dict[str, Any] = {name: value}
    if name != "components":
        kwargs["components"] = {"api"}
    if refused is None:
        sb = Sandbox(**kwargs)
        sb.__exit__(None, None, None)  # never started: this only removes its temporary files
        return

    def nothing_before_the_checks(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the sandbox made its CA or directory before checking arguments")

    monkeypatch.setattr(_runner.trustme, "CA", nothing_before_the_checks)
    monkeypatch.setattr(_runner.tempfile, "TemporaryDirectory", nothing_before_the_checks)
    with pytest.raises(SandboxConfigError) as info:
        Sandbox(**kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.param == refused
    assert str(err).startswith(f"{refused}: ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_host_binds_nothing() -> None:
    port = _free_port()
    with pytest.raises(SandboxConfigError, match="^host: .*loopback"):
        Sandbox(host="0.0.0.0", api_port=port, components={"api"})
    # The port is still free: nothing was bound before the refusal.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_same_fixed_port_twice_is_refused_before_binding() -> None:
    port = _free_port()
    with pytest.raises(SandboxConfigError) as info:
        Sandbox(api_port=port, gateway_port=port)
    assert info.value.param == "gateway_port"
    assert f"port {port} is already given as api_port" in str(info.value)
    with Sandbox(api_port=0, gateway_port=0, components={"api", "gateway"}) as sb:
        assert sb.api_url.rsplit(":", 1)[1] != str(sb.gateway_port)  # 0 twice: two free ports


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2"])
def test_accepted_hosts_really_serve(host: str) -> None:
    with Sandbox(host=host, components={"api"}) as sb:
        assert httpx.get(f"{sb.api_url}/v1/status", timeout=10).json()["status"] == "ok"


def test_a_fixed_port_is_bound_as_given() -> None:
    port = _free_port()
    with Sandbox(api_port=port, components={"api"}) as sb:
        assert sb.api_url.endswith(f":{port}")


def test_the_message_says_what_is_allowed() -> None:
    with pytest.raises(SandboxConfigError) as info:
        Sandbox(host="203.0.113.9")
    assert str(info.value) == (
        "host: the sandbox only listens on loopback (127.0.0.0/8, ::1 or localhost), "
        "not '203.0.113.9'"
    )


def test_a_closing_sandbox_does_not_wait_for_a_page_still_being_answered() -> None:
    """aiohttp would wait up to 60 s for a request in flight (a ``/delay/60000`` page): longer
    than a closing sandbox waits for its thread, and than a test waits for a process.  The
    sandbox bounds it (``SHUTDOWN_TIMEOUT``): the page's request ends, cut, once it closes."""
    import threading

    from _support import eventually

    outcome: list[object] = []
    sb = Sandbox(components=("site",))
    sb.__enter__()
    try:
        url = f"{sb.site_url}/delay/60000"

        def fetch() -> None:
            try:
                outcome.append(httpx.get(url, timeout=120).status_code)
            except httpx.HTTPError as exc:
                outcome.append(type(exc))

        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        eventually(lambda: sb.world.counters.get("site.requests", 0) >= 1)  # in its handler
    finally:
        sb.__exit__(None, None, None)
    thread.join(30)
    assert not thread.is_alive() and outcome and outcome[0] != 200, outcome
    assert _runner.SHUTDOWN_TIMEOUT <= 10
