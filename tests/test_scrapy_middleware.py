"""The Scrapy middleware as Scrapy tests its own: ``get_crawler``, synthetic requests and
responses, no server.  The manager gets its credentials and pool view installed by hand.

Covered: the trust rule (a site's X-Proxaro-* headers and its own 407 inside a tunnel are its
answer), the CONNECT answer naming the exit over HTTPS, the failure table, plain-data meta
(every queued request pickles, holds no secret, and resumes or restarts its logical request),
and the flights being forgotten when requests end.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Coroutine
from typing import Any

import pytest
from OpenSSL import SSL
from scrapy import Request, Spider
from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
from scrapy.exceptions import (
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    IgnoreRequest,
)
from scrapy.http import HtmlResponse, Response
from scrapy.utils.request import request_from_dict
from scrapy.utils.test import get_crawler
from twisted.internet import defer
from twisted.internet import error as tx_error
from twisted.python.failure import Failure as TxFailure
from twisted.web.client import ResponseNeverReceived

from proxaro_scrape import BadTargetingError, ExitInfo
from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.gateway._pool import PoolView, country_from_model
from proxaro_scrape.gateway.edge import Failure
from proxaro_scrape.integrations.scrapy import (
    ProxaroDownloaderMiddleware,
    ProxaroGaveUp,
    ProxaroTunnelError,
)
from proxaro_scrape.integrations.scrapy._failures import FAILURES, failure_of_scrapy
from proxaro_scrape.integrations.scrapy._flights import Flights
from proxaro_scrape.integrations.scrapy._handler import CONNECT_KEY, parse_connect_answer
from proxaro_scrape.integrations.scrapy._middleware import FLIGHT_KEY

KEY = "proxaro_test_" + "0" * 32
PASSWORD = "pw-Secret-1"
CREDS = {
    "gateway": "127.0.0.1",
    "port": 7777,
    "username": "nb_growth_a1b2",
    "password": PASSWORD,
    "expires_at": "2030-01-01T00:00:00Z",
}
COUNTRIES = [
    {"code": c, "name": c.upper(), "continent": "Europe", "exit_classes": ["residential"],
     "estimated_pool_size": n, "pool_health": "healthy"}
    for c, n in (("de", 3_000_000), ("fr", 2_000_000), ("it", 1_000_000))
]  # fmt: skip
EXIT = {
    "X-Proxaro-Exit-IP": "203.0.113.7",
    "X-Proxaro-Exit-Country": "de",
    "X-Proxaro-Exit-ASN": "AS3320",
    "X-Proxaro-Exit-Class": "residential",
}


class Shop(Spider):
    name = "shop"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a middleware coroutine that never waits (no refresh is awaited for real)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine waited on something")


class Refreshes:
    """Stands in for ``manager.arefresh_credentials``: counts calls, never waits."""

    def __init__(self) -> None:
        self.versions: list[int] = []

    async def __call__(self, version: int) -> bool:
        self.versions.append(version)
        return True


def middleware(**settings: Any) -> tuple[ProxaroDownloaderMiddleware, Refreshes]:
    crawler = get_crawler(Shop, settings_dict={"PROXARO_API_KEY": KEY, **settings})
    crawler.spider = crawler._create_spider()
    mw = ProxaroDownloaderMiddleware.from_crawler(crawler)
    assert mw.config_error is None and mw.manager is not None
    mw.manager.core.install_credentials(CREDS)
    mw.manager.core.install_pool(
        PoolView().with_countries(country_from_model(c) for c in COUNTRIES)
    )
    refreshes = Refreshes()
    mw.manager.arefresh_credentials = refreshes  # type: ignore[method-assign]
    return mw, refreshes


def send(mw: ProxaroDownloaderMiddleware, request: Request) -> Request:
    """What the downloader does before the handler: ours (585), then HttpProxyMiddleware."""
    assert run(mw.process_request(request)) is None
    HttpProxyMiddleware().process_request(request)
    return request


def answer(request: Request, status: int, headers: dict[str, str] | None = None) -> Response:
    return HtmlResponse(
        request.url, status=status, headers=headers or {}, body=b"<html></html>", request=request
    )


def queued_bytes(request: Request, spider: Spider) -> bytes:
    """What a JOBDIR disk queue or scrapy-redis stores for ``request``."""
    return pickle.dumps(request.to_dict(spider=spider), protocol=4)


def assert_no_secret(data: bytes) -> None:
    basic = base64.b64encode(f"{CREDS['username']}:{PASSWORD}".encode())
    assert PASSWORD.encode() not in data
    assert basic not in data
    assert b"Proxy-Authorization" not in data


# ---------------------------------------------------------------------------- the trust rule


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, {"X-Proxaro-Error": "bad_targeting"}),
        (502, {"X-Proxaro-Error": "no_exit"}),
        (502, {"X-Proxaro-Error": "exit_failed", **EXIT}),
        (407, {"Proxy-Authenticate": 'Basic realm="proxaro"'}),
        (407, {"X-Proxaro-Error": "auth_failed"}),
    ],
)
def test_a_sites_own_proxaro_headers_inside_a_tunnel_are_its_answer(
    status: int, headers: dict[str, str]
) -> None:
    mw, refreshes = middleware(PROXARO_TARGET={"country": "de"})
    request = send(mw, Request("https://shop.example/p/1"))
    response = answer(request, status, headers)
    assert run(mw.process_response(request, response)) is response
    assert refreshes.versions == []  # no credentials call for a site's 407
    assert mw.manager is not None
    stats = mw.manager.stats()
    assert stats.get("outcomes/success") == 1 and stats.get("failovers", 0) == 0
    assert request.meta["proxaro_exit"] is None  # the site cannot name an exit
    # Nothing opened: the next request to the same target goes to the same target.
    again = send(mw, Request("https://shop.example/p/2"))
    assert run(mw.process_response(again, answer(again, 200))).status == 200
    assert again.meta["proxaro_route_target"].country == "de"
    assert len(mw.flights) == 0


def test_the_gateways_headers_over_plain_http_are_believed() -> None:
    mw, refreshes = middleware()
    request = send(mw, Request("http://shop.example/p/1"))
    with pytest.raises(BadTargetingError):
        run(
            mw.process_response(request, answer(request, 400, {"X-Proxaro-Error": "bad_targeting"}))
        )
    assert len(mw.flights) == 0
    request = send(mw, Request("http://shop.example/p/2"))
    retry = run(
        mw.process_response(request, answer(request, 407, {"X-Proxaro-Error": "auth_failed"}))
    )
    assert isinstance(retry, Request) and refreshes.versions == [1]
    # A bare 407 over plain HTTP: the gateway always names its refusal, so this is the site's.
    request = send(mw, Request("http://shop.example/p/3"))
    response = answer(request, 407, EXIT)
    assert run(mw.process_response(request, response)) is response
    assert request.meta["proxaro_exit"] == ExitInfo("203.0.113.7", "de", "AS3320", "residential")
    assert refreshes.versions == [1]


def test_the_connect_answer_names_the_exit_over_https() -> None:
    mw, _ = middleware()
    request = send(mw, Request("https://shop.example/p/1"))
    # What ProxaroDownloadHandler leaves in meta for a response through a tunnel.
    request.meta[CONNECT_KEY] = (200, tuple(EXIT.items()))
    response = answer(request, 200, {"X-Proxaro-Exit-IP": "198.51.100.66"})  # the site's
    assert run(mw.process_response(request, response)) is response
    assert request.meta["proxaro_exit"] == ExitInfo("203.0.113.7", "de", "AS3320", "residential")
    assert CONNECT_KEY not in request.meta


def test_a_refused_connect_is_classified_by_its_status_and_header() -> None:
    mw, refreshes = middleware(PROXARO_TARGET={"country": "de"})
    request = send(mw, Request("https://shop.example/p/1"))
    refused = ProxaroTunnelError("refused", status=502, headers=(("X-Proxaro-Error", "no_exit"),))
    retry = run(mw.process_exception(request, refused))
    assert isinstance(retry, Request)
    assert mw.manager is not None and mw.manager.stats()["outcomes/region_dead"] == 1
    retry = send(mw, retry)
    flight = mw.flights.get(retry.meta[FLIGHT_KEY])
    assert flight is not None and flight.route.target.country != "de"  # failed over
    bad = ProxaroTunnelError("refused", status=400, headers=(("X-Proxaro-Error", "bad_targeting"),))
    with pytest.raises(BadTargetingError):
        run(mw.process_exception(retry, bad))
    request = send(mw, Request("https://shop.example/p/2"))
    stale = ProxaroTunnelError("refused", status=407, headers=())  # a CONNECT's 407: the gateway's
    assert isinstance(run(mw.process_exception(request, stale)), Request)
    assert refreshes.versions == [1]
    assert len(mw.flights) == 1  # the retry waits in the scheduler


# ---------------------------------------------------------------------------- the failure table


def _tls_failure() -> Exception:
    ssl_error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    never = ResponseNeverReceived([TxFailure(ssl_error)])
    wrapped = DownloadFailedError(str(never))
    wrapped.__cause__ = never
    return wrapped


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (ProxaroTunnelError("x", status=502), Failure.TUNNEL_REFUSED),
        (DownloadTimeoutError("slow"), Failure.TIMEOUT),
        (tx_error.TimeoutError(), Failure.TIMEOUT),
        (defer.TimeoutError(), Failure.TIMEOUT),
        (tx_error.TCPTimedOutError(), Failure.TIMEOUT),
        (DownloadConnectionRefusedError("no"), Failure.CONNECTION),
        (tx_error.ConnectionRefusedError(), Failure.CONNECTION),
        (tx_error.ConnectionLost(), Failure.CONNECTION),
        (DownloadFailedError("broken"), Failure.CONNECTION),
        (_tls_failure(), Failure.TLS),
        (DownloadFailedError("a handshake failure, not a verification one"), Failure.CONNECTION),
        (DownloadCancelledError("maxsize"), None),
        (ValueError("a bug in a callback"), None),
    ],
)
def test_the_failure_table(exc: BaseException, failure: Failure | None) -> None:
    assert failure_of_scrapy(exc) is failure
    assert all(isinstance(f, Failure) for _, f in FAILURES)


def test_exceptions_through_the_middleware() -> None:
    mw, _ = middleware()
    request = send(mw, Request("https://shop.example/p/1"))
    assert isinstance(run(mw.process_exception(request, DownloadTimeoutError("slow"))), Request)
    request = send(mw, Request("https://shop.example/p/2"))
    with pytest.raises(ConfigurationError) as info:
        run(mw.process_exception(request, _tls_failure()))
    assert info.value.param == "verify"
    request = send(mw, Request("https://shop.example/p/3"))
    assert run(mw.process_exception(request, ValueError("not ours"))) is None
    request = send(mw, Request("https://shop.example/p/4"))
    assert run(mw.process_exception(request, IgnoreRequest())) is None
    assert len(mw.flights) == 1  # only the timeout's retry, waiting in the scheduler


# ---------------------------------------------------------------------------- serialisable requests


def test_every_retry_pickles_without_a_secret_and_resumes_its_flight() -> None:
    mw, _ = middleware(PROXARO_MAX_ATTEMPTS=3)
    spider = mw.crawler.spider
    assert spider is not None
    request = send(mw, Request("https://shop.example/p/1", meta={"cookiejar": 1}))
    assert request.headers.get("Proxy-Authorization") is not None  # on the wire only
    retry = run(mw.process_response(request, answer(request, 429)))
    assert isinstance(retry, Request)
    assert request.headers.get("Proxy-Authorization") is None  # the spider never sees it
    data = queued_bytes(retry, spider)
    assert_no_secret(data)
    assert isinstance(retry.meta[FLIGHT_KEY], str)
    # Back from the disk queue, in the same process: the same logical request, attempt 2.
    back = request_from_dict(pickle.loads(data), spider=spider)
    back = send(mw, back)
    flight = mw.flights.get(back.meta[FLIGHT_KEY])
    assert flight is not None and flight.rr.attempts == 2
    third = run(mw.process_response(back, answer(back, 403)))
    back3 = send(mw, request_from_dict(pickle.loads(queued_bytes(third, spider)), spider=spider))
    with pytest.raises(ProxaroGaveUp) as info:
        run(mw.process_response(back3, answer(back3, 403)))
    assert len(info.value.tried) == 3
    assert len(mw.flights) == 0


def test_a_retry_resumed_in_another_process_starts_a_new_logical_request() -> None:
    mw, _ = middleware()
    spider = mw.crawler.spider
    assert spider is not None
    request = send(mw, Request("http://shop.example/p/1"))
    data = queued_bytes(run(mw.process_response(request, answer(request, 429))), spider)
    other, _ = middleware()  # a resumed JOBDIR crawl, another scrapy-redis worker
    resumed = send(other, request_from_dict(pickle.loads(data), spider=spider))
    assert resumed.meta[FLIGHT_KEY] != request.meta[FLIGHT_KEY]
    flight = other.flights.get(resumed.meta[FLIGHT_KEY])
    assert flight is not None and flight.rr.attempts == 1
    assert run(other.process_response(resumed, answer(resumed, 200))).status == 200


def test_what_the_scheduler_receives_carries_no_secret() -> None:
    mw, _ = middleware()
    request = send(mw, Request("http://shop.example/old"))
    # RedirectMiddleware (600) copies the request that was sent, header and all.
    redirect = request.replace(url="http://shop.example/new")
    redirect.meta["redirect_reasons"] = [301]
    assert redirect.headers.get("Proxy-Authorization") is not None
    mw._request_scheduled(redirect)
    assert_no_secret(queued_bytes(redirect, mw.crawler.spider))  # type: ignore[arg-type]
    assert "proxy" not in redirect.meta and "_auth_proxy" not in redirect.meta
    # Back through us: the 301 is recorded as the first route's success, a new flight starts.
    old = request.meta[FLIGHT_KEY]
    send(mw, redirect)
    assert redirect.meta[FLIGHT_KEY] != old and old not in mw.flights
    assert mw.manager is not None and mw.manager.stats()["outcomes/success"] == 1
    # A request of the user's own, with its own proxy, is not ours to touch.
    own = Request("http://x.example", meta={"proxaro": False, "proxy": "http://u:p@h:1"})
    mw._request_scheduled(own)
    assert own.meta["proxy"] == "http://u:p@h:1"


def test_a_dropped_request_ends_its_flight() -> None:
    mw, _ = middleware()
    request = send(mw, Request("http://shop.example/old"))
    redirect = request.replace(url="http://shop.example/seen-before")
    mw._request_dropped(redirect)  # the dupefilter refused it
    assert len(mw.flights) == 0


def test_meta_false_on_a_copy_of_a_routed_request_sends_it_direct() -> None:
    mw, _ = middleware()
    request = send(mw, Request("http://shop.example/p/1"))
    direct = request.replace(meta={**request.meta, "proxaro": False})
    assert run(mw.process_request(direct)) is None
    assert FLIGHT_KEY not in direct.meta and "proxy" not in direct.meta
    assert direct.headers.get("Proxy-Authorization") is None
    assert mw.stats.get_value("proxaro/direct") == 1


def test_flights_are_bounded_and_ids_are_unique_per_process() -> None:
    flights = Flights(maxsize=3)
    ids = [flights.add(object()) for _ in range(5)]  # type: ignore[arg-type]
    assert len(flights) == 3 and flights.evicted == 2
    assert flights.get(ids[0]) is None and flights.get(ids[-1]) is not None
    assert flights.get(["unhashable"]) is None
    assert ids[0].split("-")[0] != Flights().add(object()).split("-")[0]  # type: ignore[arg-type]


def test_a_wrong_setting_sends_nothing() -> None:
    crawler = get_crawler(Shop, settings_dict={"PROXARO_API_KEY": KEY, "PROXARO_TARGET": "us"})
    mw = ProxaroDownloaderMiddleware.from_crawler(crawler)
    assert mw.manager is None and mw.config_error is not None
    with pytest.raises(IgnoreRequest):
        run(mw.process_request(Request("http://shop.example/")))


# ---------------------------------------------------------------------------- the handler's parser


def test_the_connect_answer_keeps_only_the_gateways_headers() -> None:
    head = (
        b"HTTP/1.1 502 Bad Gateway\r\nX-Proxaro-Error: no_exit\r\n"
        b"Content-Length: 0\r\nX-Proxaro-Exit-Country: de\r\nbroken line"
    )
    assert parse_connect_answer(head) == (
        502,
        (("X-Proxaro-Error", "no_exit"), ("X-Proxaro-Exit-Country", "de")),
    )
    assert parse_connect_answer(b"SSH-2.0-OpenSSH") is None


def test_a_retry_through_scrapy_redis_encoding_holds_no_secret_and_routes_elsewhere() -> None:
    queue_mod = pytest.importorskip("scrapy_redis.queue")
    mw, _ = middleware()
    spider = mw.crawler.spider
    assert spider is not None
    queue = queue_mod.PriorityQueue(None, spider, "proxaro:requests")  # no server: encoding only
    request = send(mw, Request("https://shop.example/p/1", meta={"cookiejar": 1}))
    retry = run(mw.process_response(request, answer(request, 429)))
    data = queue._encode_request(retry)  # what scrapy-redis pushes to Redis (pickle)
    assert_no_secret(data)
    worker, _ = middleware()  # another worker of the fleet takes it
    taken = send(worker, queue._decode_request(data))
    assert run(worker.process_response(taken, answer(taken, 200))).status == 200
    assert len(worker.flights) == 0
