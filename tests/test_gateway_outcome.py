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
from proxaro_scrape.gateway.outcome import KINDS, header_values

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
        (407, {}, "stale_credentials", True, True, None),
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


class TunnelError(Exception):
    """Like Scrapy's: a failed CONNECT with the status in the message."""


class FakeProxyError(Exception):
    pass


class AttrProxyError(Exception):
    """Like aiohttp's ClientHttpProxyError: the status as an attribute."""

    def __init__(self, status: int) -> None:
        super().__init__("proxy said no")
        self.status = status


@pytest.mark.parametrize(
    ("exc", "kind", "retry", "refresh"),
    [
        (httpx.ReadTimeout("read"), "timeout", True, False),
        (httpx.ConnectTimeout("connect"), "timeout", True, False),
        (asyncio.TimeoutError(), "timeout", True, False),
        (TimeoutError(), "timeout", True, False),
        (httpx.ConnectError("refused"), "connection_error", True, False),
        (ConnectionResetError(), "connection_error", True, False),
        (httpx.RemoteProtocolError("eof"), "connection_error", True, False),
        (httpx.ProxyError("407 Proxy Authentication Required"), "stale_credentials", True, True),
        (
            TunnelError("Could not open CONNECT tunnel with proxy 127.0.0.1:1 [{'status': 407}]"),
            "stale_credentials",
            True,
            True,
        ),
        (FakeProxyError("Tunnel connection failed: 502 Bad Gateway"), "exit_failure", True, False),
        (FakeProxyError("Tunnel connection failed: 504 Gateway Timeout"), "timeout", True, False),
        (
            FakeProxyError("Tunnel connection failed: 400 Bad Request"),
            "bad_targeting",
            False,
            False,
        ),
        (
            FakeProxyError("Tunnel connection failed: 403 Forbidden"),
            "source_not_allowed",
            False,
            False,
        ),
        (FakeProxyError("proxy went away"), "connection_error", True, False),
        (AttrProxyError(407), "stale_credentials", True, True),
        (AttrProxyError(502), "exit_failure", True, False),
        (
            FakeProxyError(
                "407, message='Proxy Authentication Required', url='http://127.0.0.1:41343'"
            ),
            "stale_credentials",
            True,
            True,
        ),
    ],
)
def test_exceptions(exc: BaseException, kind: str, retry: bool, refresh: bool) -> None:
    out = classify(exception=exc)
    assert (out.kind, out.retry, out.refresh) == (kind, retry, refresh)
    assert out.exit is None
    if not retry:
        assert out.error is not None


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
    assert out.error.__cause__ is inner


def test_a_certificate_failure_named_only_in_a_message_is_recognised() -> None:
    from proxaro_scrape.gateway.outcome import classify

    out = classify(exception=OSError("SSL: CERTIFICATE_VERIFY_FAILED certificate verify failed"))
    assert out.kind == "tls_error" and not out.retry
