"""Outcome classification: one pure function, tested as a table."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from proxaro_scrape import (
    BadTargetingError,
    GatewayError,
    ScopeRequiredError,
    SourceNotAllowedError,
)
from proxaro_scrape.gateway import ExitInfo, classify
from proxaro_scrape.gateway.outcome import KINDS, Failure, classify_failure, header_values

EXIT = {
    "X-Proxaro-Exit-IP": "72.164.18.44",
    "X-Proxaro-Exit-Country": "us",
    "X-Proxaro-Exit-ASN": "AS7922",
    "X-Proxaro-Exit-Class": "residential",
}


def gw(error: str) -> dict[str, str]:
    return {"X-Proxaro-Error": error}


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry", "refresh", "error"),
    [
        (200, EXIT, "success", False, False, None),
        (404, EXIT, "success", False, False, None),  # the site's answer, not ours
        (500, EXIT, "success", False, False, None),
        (301, {}, "success", False, False, None),
        (407, gw("auth_failed"), "stale_credentials", True, True, None),
        # a 407 without the gateway's header is the site's own answer (protocol section 3)
        (407, {}, "success", False, False, None),
        (407, {"Proxy-Authenticate": 'Basic realm="site"'}, "success", False, False, None),
        (400, gw("bad_targeting"), "bad_targeting", False, False, BadTargetingError),
        (403, gw("source_not_allowed"), "source_not_allowed", False, False, SourceNotAllowedError),
        (403, gw("scope_required"), "scope_required", False, False, ScopeRequiredError),
        (403, gw("target_not_allowed"), "bad_targeting", False, False, GatewayError),
        (502, gw("no_exit"), "region_dead", True, False, None),
        (502, gw("exit_failed"), "exit_failure", True, False, None),
        (504, gw("target_timeout"), "timeout", True, False, None),
        (502, gw("something_new"), "exit_failure", True, False, None),
        (400, gw("bad_request"), "bad_targeting", False, False, GatewayError),
        # the target's 403/429: bans, keyed on the exit the headers name
        (403, EXIT, "ban", True, False, None),
        (429, EXIT, "ban", True, False, None),
        (403, {}, "ban", True, False, None),
    ],
)
def test_classification_table(
    status: int,
    headers: dict[str, str],
    kind: str,
    retry: bool,
    refresh: bool,
    error: type[Exception] | None,
) -> None:
    out = classify(status, headers)
    assert out.kind == kind
    assert out.kind in KINDS
    assert out.retry is retry
    assert out.refresh is refresh
    assert out.status == status
    if error is None:
        assert out.error is None
    else:
        assert isinstance(out.error, error)
    assert out.ok is (kind == "success")


def test_a_gateway_403_is_never_a_ban_even_with_403_in_ban_codes() -> None:
    for err in ("source_not_allowed", "scope_required"):
        assert classify(403, gw(err), ban_status_codes=(403,)).kind != "ban"


def test_exit_info_from_every_header_flavour() -> None:
    want = ExitInfo("72.164.18.44", "us", "AS7922", "residential", "cart42")
    plain = {**EXIT, "X-Proxaro-Session": "cart42"}
    lower = {k.lower(): v for k, v in plain.items()}
    scrapy_like = {k.encode(): [v.encode()] for k, v in plain.items()}
    pairs = list(plain.items())
    for headers in (plain, lower, httpx.Headers(plain), scrapy_like, pairs):
        assert classify(200, headers).exit == want
    assert classify(200, {"Content-Type": "text/html"}).exit is None
    assert classify(200, None).exit is None
    assert header_values({"x-proxaro-error": b"no_exit"}) == {"x-proxaro-error": "no_exit"}


def test_ban_codes_and_hook() -> None:
    assert classify(403, EXIT, ban_status_codes=(429,)).kind == "success"
    assert classify(503, EXIT, ban_status_codes=(503,)).kind == "ban"
    seen: list[Any] = []

    def is_ban(status: int, headers: Any, body: Any) -> bool:
        seen.append((status, body))
        return body is not None and b"captcha" in body

    assert classify(200, EXIT, body=b"<h1>captcha</h1>", is_ban=is_ban).kind == "ban"
    assert classify(200, EXIT, body=b"<h1>shop</h1>", is_ban=is_ban).kind == "success"
    assert seen == [(200, b"<h1>captcha</h1>"), (200, b"<h1>shop</h1>")]
    # the hook never sees the gateway's own answers
    classify(502, gw("no_exit"), is_ban=is_ban)
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry", "refresh"),
    [
        # a refused CONNECT is always the gateway's answer, with or without its header
        (407, None, "stale_credentials", True, True),
        (407, gw("auth_failed"), "stale_credentials", True, True),
        (400, None, "bad_targeting", False, False),
        (403, None, "source_not_allowed", False, False),
        (403, gw("scope_required"), "scope_required", False, False),
        (502, gw("no_exit"), "region_dead", True, False),
        (502, gw("exit_failed"), "exit_failure", True, False),
        (502, None, "exit_failure", True, False),  # the header lost: the core decides on repeats
        (504, None, "timeout", True, False),
        (503, None, "exit_failure", True, False),
        (None, None, "exit_failure", True, False),
    ],
)
def test_a_refused_connect(
    status: int | None, headers: dict[str, str] | None, kind: str, retry: bool, refresh: bool
) -> None:
    gateway = header_values(headers) if headers else None
    out = classify_failure(Failure.TUNNEL_REFUSED, status=status, gateway=gateway)
    assert (out.kind, out.retry, out.refresh) == (kind, retry, refresh)
    assert out.exit is None
    if not retry:
        assert out.error is not None


@pytest.mark.parametrize(
    ("failure", "kind", "retry"),
    [
        (Failure.TIMEOUT, "timeout", True),
        (Failure.CONNECTION, "connection_error", True),
        (Failure.TLS, "tls_error", False),
    ],
)
def test_failures_without_an_answer(failure: Failure, kind: str, retry: bool) -> None:
    out = classify_failure(failure)
    assert (out.kind, out.retry, out.refresh) == (kind, retry, False)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (asyncio.TimeoutError(), "timeout"),
        (TimeoutError(), "timeout"),
        (ConnectionResetError(), "connection_error"),
        (OSError("anything"), "connection_error"),
        # the legacy entry point knows only the standard library: no guessing from names or
        # messages (a stack's own exceptions go through its table in the edge)
        (httpx.ProxyError("407 Proxy Authentication Required"), "connection_error"),
        (OSError("SSL: CERTIFICATE_VERIFY_FAILED"), "connection_error"),
    ],
)
def test_the_legacy_entry_knows_the_standard_library_only(exc: BaseException, kind: str) -> None:
    assert classify(exception=exc).kind == kind


def test_classify_needs_something() -> None:
    with pytest.raises(ValueError):
        classify()


def test_a_target_certificate_failure_is_never_retried() -> None:
    import ssl

    from proxaro_scrape.errors import ConfigurationError
    from proxaro_scrape.gateway.outcome import classify

    inner = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed")
    try:
        try:
            raise inner
        except ssl.SSLError as exc:
            raise ConnectionError("tunnel failed") from exc
    except ConnectionError as outer:
        out = classify(exception=outer)
    assert out.kind == "tls_error" and not out.retry and not out.refresh
    assert isinstance(out.error, ConfigurationError) and out.error.param == "verify"
