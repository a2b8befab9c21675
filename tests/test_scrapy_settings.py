"""The ``PROXARO_*`` settings: mapped onto GatewayConfig, every error naming the SETTING.

A wrong setting does not raise from ``from_crawler`` (a raise there becomes an asyncio "Task
exception was never retrieved" traceback under ``scrapy crawl``): the middleware keeps the
error, and the spider closes with ``proxaro_config`` when it opens (see
test_scrapy_integration and test_scrapy_commands for the crawls).
"""

from __future__ import annotations

from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from proxaro_scrape import Target
from proxaro_scrape.errors import ConfigurationError, TargetError
from proxaro_scrape.integrations.scrapy import ProxaroDownloaderMiddleware

KEY = "proxaro_test_" + "0" * 32


def _error(settings: dict[str, Any]) -> ConfigurationError | None:
    mw = ProxaroDownloaderMiddleware.from_crawler(get_crawler(settings_dict=settings))
    return mw.config_error


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("PROXARO_STICKY", "session", "'off', 'domain', 'cookiejar'"),
        ("PROXARO_STICKY", 1, "'off', 'domain', 'cookiejar'"),
        ("PROXARO_STICKY", "key", "'off', 'domain', 'cookiejar'"),  # the manager's word, not ours
        ("PROXARO_TARGET", "us", "not valid JSON"),
        ("PROXARO_TARGET", ["us"], "a dict or None"),
        ("PROXARO_TARGET", {"country": "USA"}, "ISO 3166-1"),
        ("PROXARO_TARGET", {"land": "us"}, "unknown target key"),
        ("PROXARO_SESSION_TTL", "ten", "whole number"),
        ("PROXARO_SESSION_TTL", 0, "1 .. 1,440"),
        ("PROXARO_SESSION_TTL", 1441, "1 .. 1,440"),
        ("PROXARO_SESSION_LRU_SIZE", 1.5, "whole number"),
        ("PROXARO_SESSION_MAX_REQUESTS", 0, "1 .."),
        ("PROXARO_FAILOVER", "sometimes", "True, False or a list"),
        ("PROXARO_FAILOVER", {"country": "de"}, "True, False or a list"),
        ("PROXARO_FAILOVER", [{"country": "DE"}], "ISO 3166-1"),
        ("PROXARO_FAILOVER", [], "1 .. 100 targets"),
        ("PROXARO_MAX_ATTEMPTS", 0, "1 .. 100"),
        ("PROXARO_MAX_ATTEMPTS", 101, "1 .. 100"),
        ("PROXARO_MAX_ATTEMPTS", True, "whole number"),
        ("PROXARO_MAX_ATTEMPTS", 2.0, "whole number"),
        ("PROXARO_BAN_STATUS_CODES", 403, "HTTP statuses"),
        ("PROXARO_BAN_STATUS_CODES", [403, "teapot"], "HTTP statuses"),
        # Strings in a list would silently match no status: refused, not converted.
        ("PROXARO_BAN_STATUS_CODES", ["403"], "HTTP statuses"),
        ("PROXARO_BAN_STATUS_CODES", [99], "HTTP statuses"),
        ("PROXARO_BAN_STATUS_CODES", [600], "HTTP statuses"),
        ("PROXARO_IS_BAN", 42, "callable"),
        ("PROXARO_IS_BAN", "no.such.module.is_ban", "cannot import"),
        ("PROXARO_USAGE_CAP_ACTION", "halt", "'warn', 'stop'"),
        ("PROXARO_CREDENTIALS_POLL_INTERVAL", 0, "more than 0"),
        ("PROXARO_CREDENTIALS_POLL_INTERVAL", None, "number"),
        ("PROXARO_CREDENTIALS_POLL_INTERVAL", float("nan"), "finite"),
        ("PROXARO_CREDENTIALS_POLL_INTERVAL", 86_401, "at most 86,400"),
        ("PROXARO_POOL_TTL", "soon", "number"),
        ("PROXARO_USAGE_POLL_INTERVAL", float("inf"), "finite"),
        ("PROXARO_BREAKER_BASE_BACKOFF", -1, "more than 0"),
        ("PROXARO_STATS_INTERVAL", -1, "seconds > 0"),
        ("PROXARO_STATS_INTERVAL", float("nan"), "seconds > 0"),
        ("PROXARO_API_KEY", 12345, "must be a str"),
        ("PROXARO_API_KEY", "sk_live_abc", "proxaro_live_ or proxaro_test_"),
        ("PROXARO_BASE_URL", 8080, "URL"),
        ("PROXARO_BASE_URL", "ftp://api.example", "http:// or https://"),
        ("PROXARO_BASE_URL", "https://api.example:70000", "port"),
        ("PROXARO_ENABLED", "maybe", "True or False"),
    ],
)
def test_wrong_settings_name_the_setting(name: str, value: Any, words: str) -> None:
    error = _error({"PROXARO_API_KEY": KEY, name: value})
    assert isinstance(error, ConfigurationError)
    assert error.param == name
    assert str(error).startswith(name), str(error)
    assert words in str(error)
    assert KEY not in str(error) and "sk_live_abc" not in str(error)


def test_the_other_side_of_each_bound_is_accepted() -> None:
    error = _error(
        {
            "PROXARO_API_KEY": KEY,
            "PROXARO_SESSION_TTL": 1440,
            "PROXARO_MAX_ATTEMPTS": 100,
            "PROXARO_SESSION_MAX_REQUESTS": 1,
            "PROXARO_BAN_STATUS_CODES": [100, 599],
            "PROXARO_CREDENTIALS_POLL_INTERVAL": 86_400,
            "PROXARO_FAILOVER": [{"country": "de"}],
            "PROXARO_STATS_INTERVAL": None,
        }
    )
    assert error is None


def test_a_target_error_stays_a_target_error() -> None:
    error = _error({"PROXARO_API_KEY": KEY, "PROXARO_TARGET": {"country": "USA"}})
    assert isinstance(error, TargetError)


def test_settings_from_the_command_line_are_decoded() -> None:
    crawler = get_crawler(
        settings_dict={
            "PROXARO_API_KEY": KEY,
            "PROXARO_TARGET": '{"country": "de", "class": "residential"}',
            "PROXARO_STICKY": "Domain",
            "PROXARO_FAILOVER": '[{"country": "fr"}]',
            "PROXARO_BAN_STATUS_CODES": "403,429,503",
            "PROXARO_MAX_ATTEMPTS": "7",
            "PROXARO_USAGE_POLL_INTERVAL": "None",
            "PROXARO_CREDENTIALS_POLL_INTERVAL": "12.5",
            "PROXARO_IS_BAN": "tests.test_scrapy_settings.captcha_is_ban",
        }
    )
    mw = ProxaroDownloaderMiddleware.from_crawler(crawler)
    assert mw.config_error is None and mw.settings is not None and mw.manager is not None
    config = mw.settings.config
    assert mw.manager.default_target == Target(country="de", exit_class="residential")
    assert mw.settings.sticky == "domain" and config.sticky == "domain"
    assert config.failover == (Target(country="fr"),)
    assert config.ban_status_codes == frozenset({403, 429, 503})
    assert config.max_attempts == 7
    assert config.usage_poll_interval is None
    assert config.credentials_poll_interval == 12.5
    assert config.is_ban is not None
    assert config.is_ban.__qualname__ == captcha_is_ban.__qualname__


def test_cookiejar_is_the_managers_key_mode() -> None:
    mw = ProxaroDownloaderMiddleware.from_crawler(
        get_crawler(settings_dict={"PROXARO_API_KEY": KEY, "PROXARO_STICKY": "cookiejar"})
    )
    assert mw.settings is not None
    assert mw.settings.sticky == "cookiejar" and mw.settings.config.sticky == "key"


def captcha_is_ban(status: int, headers: Any, body: Any) -> bool:
    return b"captcha" in (body or b"")


def test_missing_api_key_names_the_setting_and_the_variable(monkeypatch: Any) -> None:
    monkeypatch.delenv("PROXARO_API_KEY", raising=False)
    error = _error({})
    assert isinstance(error, ConfigurationError)
    assert error.param == "PROXARO_API_KEY"
    assert "environment" in str(error)


def test_middleware_after_httpproxy_is_refused() -> None:
    error = _error(
        {"PROXARO_API_KEY": KEY, "DOWNLOADER_MIDDLEWARES": {ProxaroDownloaderMiddleware: 800}}
    )
    assert error is not None and "before" in str(error)
    assert error.param == "DOWNLOADER_MIDDLEWARES"
    error = _error({"PROXARO_API_KEY": KEY, "HTTPPROXY_ENABLED": False})
    assert error is not None and "HttpProxyMiddleware" in str(error)
    assert error.param == "HTTPPROXY_ENABLED"
