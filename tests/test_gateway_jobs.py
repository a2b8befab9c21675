"""The background jobs, written once: the same job under the sync and the async driver.

No server: the jobs only yield calls; two fake clients (blocking and awaiting) answer from one
table and record what was asked, and a fake clock drives the schedule.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from proxaro_scrape.errors import (
    APIConnectionError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from proxaro_scrape.gateway._core import RoutingCore
from proxaro_scrape.gateway._drivers import adrive, drive
from proxaro_scrape.gateway._jobs import Jobs
from proxaro_scrape.gateway.target import HEALTHY_ASN, Target

CREDS = {"gateway": "127.0.0.1", "port": 7777, "username": "nb_a1b2", "password": "pw"}
COUNTRIES = [
    {"code": "us", "name": "United States", "continent": "North America",
     "exit_classes": ["residential"], "estimated_pool_size": 1000},
    {"code": "de", "name": "Germany", "continent": "Europe",
     "exit_classes": ["residential"], "estimated_pool_size": 500},
]  # fmt: skip
ASNS = {"us": [{"asn": "AS7922", "org": "Comcast", "exit_class": "residential"}]}
T = TypeVar("T")


def in_a_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop in a thread (the main thread's loop is pytest-twisted's)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Api:
    """One answer table for both fake clients; an Exception as an answer is raised."""

    def __init__(self, **overrides: Any) -> None:
        self.calls: list[str] = []
        self.answers: dict[str, Any] = {
            "credentials.get": CREDS,
            "countries.list": COUNTRIES,
            "usage.get": {"total_bytes": 1, "cap_bytes": 100},
            **overrides,
        }

    def answer(self, resource: str, method: str, args: tuple[Any, ...]) -> Any:
        key = f"{resource}.{method}"
        self.calls.append(f"{key}{args if args else ''}")
        value = self.answers.get(f"{key}{args}", self.answers.get(key))
        if value is None and method == "asns":
            value = ASNS.get(args[0], [])
        if isinstance(value, Exception):
            raise value
        if isinstance(value, dict) and "total_bytes" in value:
            return type("Usage", (), value)()
        return value


class SyncClient:
    def __init__(self, api: Api) -> None:
        for resource in ("credentials", "countries", "usage"):
            setattr(self, resource, _Resource(api, resource, is_async=False))


class AsyncClient:
    def __init__(self, api: Api) -> None:
        for resource in ("credentials", "countries", "usage"):
            setattr(self, resource, _Resource(api, resource, is_async=True))


class _Resource:
    def __init__(self, api: Api, name: str, *, is_async: bool) -> None:
        self.api, self.name, self.is_async = api, name, is_async

    def __getattr__(self, method: str) -> Any:
        if self.is_async:

            async def acall(*args: Any) -> Any:
                await asyncio.sleep(0)
                return self.api.answer(self.name, method, args)

            return acall
        return lambda *args: self.api.answer(self.name, method, args)


def new_jobs(**options: Any) -> tuple[Jobs, Clock]:
    clock = Clock()
    core = RoutingCore(clock=clock, **options)
    jobs = Jobs(core, credentials_interval=30.0, pool_ttl=300.0, usage_interval=300.0, clock=clock)
    core.want_asns = jobs.want_asns
    return jobs, clock


def run_both(job_of: Any, api_of: Any) -> tuple[tuple[Jobs, Api, Any], tuple[Jobs, Api, Any]]:
    """Run ``job_of(jobs)`` under each driver on fresh state; return both worlds."""
    worlds = []
    for kind in ("sync", "async"):
        jobs, _ = new_jobs()
        api = api_of()
        if kind == "sync":
            result = drive(job_of(jobs), SyncClient(api))
        else:
            result = in_a_loop(adrive(job_of(jobs), AsyncClient(api)))
        worlds.append((jobs, api, result))
    return worlds[0], worlds[1]


def test_start_is_three_calls_and_the_same_under_both_drivers() -> None:
    (sj, sapi, _), (aj, aapi, _) = run_both(lambda j: j.start(), Api)
    assert sapi.calls == aapi.calls == ["credentials.get", "countries.list", "usage.get"]
    for jobs in (sj, aj):
        assert jobs.core.creds.version == 1 and set(jobs.core.pool.countries) == {"us", "de"}
        assert dict(jobs.core.pool.asns) == {}


def test_a_default_target_naming_an_asn_fetches_that_country_at_start() -> None:
    jobs, _ = new_jobs(target=Target(country="us", asn=HEALTHY_ASN))
    api = Api()
    drive(jobs.start(), SyncClient(api))
    assert api.calls == ["credentials.get", "countries.list", "countries.asns('us',)", "usage.get"]
    assert set(jobs.core.pool.asns) == {"us"}


def test_a_start_failure_names_what_failed_under_both_drivers() -> None:
    def api() -> Api:
        return Api(**{"countries.list": ServiceUnavailableError("down", status=503)})

    for kind in ("sync", "async"):
        jobs, _ = new_jobs()
        with pytest.raises(ServiceUnavailableError, match="/v1/countries"):
            if kind == "sync":
                drive(jobs.start(), SyncClient(api()))
            else:
                in_a_loop(adrive(jobs.start(), AsyncClient(api())))


def test_a_failed_pool_refresh_is_counted_and_backs_off() -> None:
    jobs, clock = new_jobs()
    api = Api()
    client = SyncClient(api)
    drive(jobs.start(), client)
    jobs.new_schedule()
    clock.t += 300
    assert jobs.due() == ["credentials", "pool", "usage"]
    api.answers["countries.list"] = APIConnectionError("refused")
    drive(jobs.run("pool"), client)
    assert jobs.core.stats()["pool_refresh_errors"] == 1
    assert "pool" not in jobs.due()
    clock.t += 1.0  # the first retry comes a second later, not at once and not in 300 s
    assert "pool" in jobs.due()
    api.answers["countries.list"] = COUNTRIES
    drive(jobs.run("pool"), client)
    assert jobs.core.stats()["pool_refreshes"] == 1 and "pool" not in jobs.due()


def test_asn_listings_are_fetched_only_for_countries_asked_for() -> None:
    jobs, clock = new_jobs()
    api = Api()
    client = SyncClient(api)
    drive(jobs.start(), client)
    jobs.new_schedule()
    jobs.core.install_credentials(CREDS)
    jobs.core.request("http://x/", {"country": "us", "asn": "7922"})
    assert jobs.due() == ["asns"]
    drive(jobs.run("asns"), client)
    assert api.calls[-1] == "countries.asns('us',)" and set(jobs.core.pool.asns) == {"us"}
    assert jobs.due() == []  # nothing else wanted
    assert jobs.asns_needed(Target(country="us", asn="7922")) is None  # cached now
    assert jobs.asns_needed(Target(country="de", asn="3320")) == "de"
    assert jobs.asns_needed(Target(country="de")) is None


def test_scope_required_marks_asn_targeting_refused_and_stops_asking() -> None:
    jobs, _ = new_jobs()
    refused = PermissionDeniedError("no", status=403, code="scope_required")
    api = Api(**{"countries.asns": refused})
    client = SyncClient(api)
    drive(jobs.start(), client)
    jobs.new_schedule()
    jobs.want_asns("us")
    jobs.want_asns("de")
    drive(jobs.run("asns"), client)
    assert jobs.core.pool.asn_allowed is False
    assert (
        api.calls.count("countries.asns('de',)") == 1 and "countries.asns('us',)" not in api.calls
    )
    assert jobs.asns_needed(Target(country="us", asn="7922")) is None  # refused: never asked


def test_a_failed_credentials_fetch_never_raises_and_cools_407s_down() -> None:
    jobs, clock = new_jobs()
    api = Api()
    drive(jobs.start(), SyncClient(api))
    api.answers["credentials.get"] = ServiceUnavailableError("down", status=503)
    assert in_a_loop(adrive(jobs.fetch_credentials(), AsyncClient(api))) is False
    assert jobs.core.stats()["credential_refresh_errors"] == 1 and jobs.cooling_down()
    clock.t += 1.0
    assert not jobs.cooling_down()
    api.answers["credentials.get"] = {**CREDS, "password": "new"}
    assert drive(jobs.fetch_credentials(), SyncClient(api)) is True
    assert jobs.core.creds.version == 2
