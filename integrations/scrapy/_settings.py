"""The ``PROXARO_*`` settings: names mapped onto :class:`~proxaro_scrape.gateway.GatewayConfig`.

The gateway options are checked once, by ``GatewayConfig``; this module only maps a setting to
its option, decodes what the command line gives as text (``-s PROXARO_MAX_ATTEMPTS=7``,
``-s PROXARO_TARGET='{"country": "de"}'``) and names the SETTING in every error, as the user
wrote it.  The settings that exist only in Scrapy (``PROXARO_ENABLED``, ``PROXARO_STICKY``'s
``"cookiejar"``, ``PROXARO_STATS_INTERVAL``, the API key and URL) and the checks of the
middleware order live here too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxaro_scrape import AsyncProxaro
from proxaro_scrape.errors import ConfigurationError
from proxaro_scrape.gateway import GatewayConfig, Target

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

__all__ = [
    "SETTING_OF",
    "STICKY_MODES",
    "ProxaroSettings",
    "api_client",
    "check_order",
    "read_settings",
    "setting_error",
    "spider_target",
]

#: ``PROXARO_STICKY`` → the manager's ``sticky``: a cookie jar is the session key.
STICKY_MODES = {"off": "off", "domain": "domain", "cookiejar": "key"}
_ENV_API_KEY = "PROXARO_API_KEY"


def _text_none(value: str) -> bool:
    return value.strip().lower() in ("", "none", "null")


def _json(setting: str, value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        raise ConfigurationError(
            f"{setting} must be {what}; the string {value!r} is not valid JSON", param=setting
        ) from None


# ---------------------------------------------------------------------------- text decoders
# Each turns the text a command line gives into the value settings.py would hold, and leaves
# every other value alone: GatewayConfig judges it.


def _target(setting: str, value: Any) -> Any:
    if isinstance(value, str):
        return None if not value.strip() else _json(setting, value, "a dict (or JSON)")
    return value


def _whole(setting: str, value: Any) -> Any:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return value


def _whole_or_none(setting: str, value: Any) -> Any:
    if isinstance(value, str) and _text_none(value):
        return None
    return _whole(setting, value)


def _seconds(setting: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _seconds_or_none(setting: str, value: Any) -> Any:
    if isinstance(value, str) and _text_none(value):
        return None
    return _seconds(setting, value)


def _failover(setting: str, value: Any) -> Any:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        return _json(setting, value, "True, False or a list of targets")
    return value


def _statuses(setting: str, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return _json(setting, text, "a list of HTTP statuses")
        return [int(p) if p.isdigit() else p for p in (p.strip() for p in text.split(",")) if p]
    return value


def _is_ban(setting: str, value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        from scrapy.utils.misc import load_object

        try:
            return load_object(value)
        except (ImportError, NameError, ValueError, AttributeError) as exc:
            raise ConfigurationError(
                f"{setting}: cannot import {value!r}: {exc}", param=setting
            ) from None
    return value


def _word(setting: str, value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


#: Setting → (GatewayConfig field, decoder of command-line text, is None a value?).  Where None
#: is not a value, a None setting means "unset" (Scrapy's ``settings.get`` convention).
_OPTIONS: dict[str, tuple[str, Callable[[str, Any], Any], bool]] = {
    "PROXARO_TARGET": ("target", _target, True),
    "PROXARO_SESSION_TTL": ("session_ttl", _whole, False),
    "PROXARO_SESSION_MAX_REQUESTS": ("session_max_requests", _whole_or_none, True),
    "PROXARO_SESSION_LRU_SIZE": ("session_lru_size", _whole, False),
    "PROXARO_FAILOVER": ("failover", _failover, False),
    "PROXARO_MAX_ATTEMPTS": ("max_attempts", _whole, False),
    "PROXARO_BAN_STATUS_CODES": ("ban_status_codes", _statuses, False),
    "PROXARO_IS_BAN": ("is_ban", _is_ban, True),
    "PROXARO_USAGE_CAP_ACTION": ("usage_cap_action", _word, False),
    # None is a mistake worth naming here: the credentials are always polled.
    "PROXARO_CREDENTIALS_POLL_INTERVAL": ("credentials_poll_interval", _seconds, True),
    "PROXARO_POOL_TTL": ("pool_ttl", _seconds_or_none, True),
    "PROXARO_USAGE_POLL_INTERVAL": ("usage_poll_interval", _seconds_or_none, True),
    "PROXARO_BREAKER_BASE_BACKOFF": ("breaker_base_backoff", _seconds, False),
    "PROXARO_BREAKER_MAX_BACKOFF": ("breaker_max_backoff", _seconds, False),
}
#: GatewayConfig field (and manager argument) → the setting that gives it.
SETTING_OF: dict[str, str] = {field: setting for setting, (field, _, _) in _OPTIONS.items()}
SETTING_OF.update(
    sticky="PROXARO_STICKY",
    api_key="PROXARO_API_KEY",
    base_url="PROXARO_BASE_URL",
    redis_url="PROXARO_REDIS_URL",
    redis_prefix="PROXARO_REDIS_PREFIX",
)


def setting_error(exc: ConfigurationError) -> ConfigurationError:
    """``exc`` (which names an option or argument) reworded to name the Scrapy setting."""
    setting = SETTING_OF.get(exc.param or "")
    if setting is None:
        return exc
    text = str(exc)
    field = exc.param or ""
    # "max_attempts must be ..." reads "PROXARO_MAX_ATTEMPTS must be ..."; other wordings
    # get the setting in front.
    if text.startswith(field):
        text = setting + text[len(field) :]
    elif setting not in text:
        text = f"{setting}: {text}"
    renamed = type(exc)(text, param=setting)
    renamed.__cause__ = exc.__cause__
    return renamed


@dataclass(frozen=True)
class ProxaroSettings:
    """The ``PROXARO_*`` settings of one crawl, checked."""

    #: The gateway manager's options.
    config: GatewayConfig
    #: ``PROXARO_STICKY`` as written: ``"off"``, ``"domain"`` or ``"cookiejar"``.
    sticky: str
    #: ``PROXARO_STATS_INTERVAL``: seconds between copies of the counters into the stats.
    stats_interval: float | None
    #: ``PROXARO_REDIS_URL``: the fleet's Redis (``None``: the manager reads the environment).
    redis_url: str | None = None


def read_settings(settings: BaseSettings) -> ProxaroSettings:
    """Check every ``PROXARO_*`` setting; a :class:`ConfigurationError` names the bad one."""
    options: dict[str, Any] = {}
    for setting, (field, decode, none_is_value) in _OPTIONS.items():
        if setting not in settings:
            continue
        value = settings[setting]
        if value is None and not none_is_value:
            continue
        options[field] = decode(setting, value)
    sticky = settings.get("PROXARO_STICKY")
    if sticky is None:
        sticky = "off"
    if not isinstance(sticky, str) or sticky.strip().lower() not in STICKY_MODES:
        raise ConfigurationError(
            f"PROXARO_STICKY must be one of 'off', 'domain', 'cookiejar', got {sticky!r}",
            param="PROXARO_STICKY",
        )
    sticky = sticky.strip().lower()
    options["sticky"] = STICKY_MODES[sticky]
    try:
        config = GatewayConfig(**options)
    except ConfigurationError as exc:
        raise setting_error(exc) from None
    redis_url = settings.get("PROXARO_REDIS_URL") or None
    if redis_url is not None and not isinstance(redis_url, str):
        raise ConfigurationError(
            f"PROXARO_REDIS_URL must be a redis:// URL string, got {type(redis_url).__name__}",
            param="PROXARO_REDIS_URL",
        )
    return ProxaroSettings(config, sticky, _stats_interval(settings), redis_url)


def spider_target(value: Any) -> Target | None:
    """A spider's ``proxaro_target`` attribute (a dict, a Target, JSON text or ``None``)."""
    value = _target("proxaro_target", value)
    if value is None or isinstance(value, Target):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"proxaro_target must be a dict such as {{'country': 'us'}} (or a Target), "
            f"got {type(value).__name__}",
            param="proxaro_target",
        )
    try:
        return Target.coerce(dict(value))
    except ConfigurationError as exc:
        raise type(exc)(f"proxaro_target: {exc}", param="proxaro_target") from None


def _stats_interval(settings: BaseSettings) -> float | None:
    name = "PROXARO_STATS_INTERVAL"
    value = _seconds_or_none(name, settings[name]) if name in settings else 1.0
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= 86_400
    ):
        raise ConfigurationError(
            f"{name} must be a number of seconds > 0 (or None to turn it off), got {value!r}",
            param=name,
        )
    return float(value)


def enabled(settings: BaseSettings) -> bool:
    """``PROXARO_ENABLED`` (default ``True``), refusing what is not a yes or a no."""
    try:
        return settings.getbool("PROXARO_ENABLED", True)
    except ValueError:
        raise ConfigurationError(
            f"PROXARO_ENABLED must be True or False, got {settings.get('PROXARO_ENABLED')!r}",
            param="PROXARO_ENABLED",
        ) from None


def api_client(settings: BaseSettings) -> AsyncProxaro:
    """The API client for ``PROXARO_API_KEY`` / ``PROXARO_BASE_URL`` (the settings, else the
    environment variables), checked now so that a malformed key stops the crawl at start.
    No message ever shows the key."""
    key = settings.get("PROXARO_API_KEY") or None
    url = settings.get("PROXARO_BASE_URL") or None
    if key is None and not os.environ.get(_ENV_API_KEY):
        raise ConfigurationError(
            "no API key: set PROXARO_API_KEY in the settings or in the environment "
            "(the key from Dashboard → API keys)",
            param="PROXARO_API_KEY",
        )
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(
            f"PROXARO_BASE_URL must be a URL string, got {type(url).__name__}",
            param="PROXARO_BASE_URL",
        )
    try:
        return AsyncProxaro(key, url)
    except ConfigurationError as exc:
        raise setting_error(exc) from None


def asyncio_available() -> bool:
    """Is the crawl on asyncio (the asyncio reactor, or Scrapy 2.14+'s reactorless mode)?"""
    try:
        from scrapy.utils.asyncio import is_asyncio_available  # Scrapy >= 2.14
    except ImportError:  # pragma: no cover - Scrapy 2.13
        from scrapy.utils.reactor import is_asyncio_reactor_installed as is_asyncio_available
    try:
        return bool(is_asyncio_available())
    except RuntimeError:  # no reactor and no loop yet (a unit test's bare crawler): can't tell
        return True


def check_order(settings: BaseSettings, mine: type, priority: int) -> None:
    """Refuse a middleware order in which the credentials would never reach the gateway."""
    from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
    from scrapy.utils.misc import load_object

    if not settings.getbool("HTTPPROXY_ENABLED", True):
        raise ConfigurationError(
            "HTTPPROXY_ENABLED is False: Scrapy's HttpProxyMiddleware must be on for Proxaro "
            "(it turns meta['proxy'] into the Proxy-Authorization header)",
            param="HTTPPROXY_ENABLED",
        )
    components: Mapping[Any, Any] = settings.get_component_priority_dict_with_base(
        "DOWNLOADER_MIDDLEWARES"
    )
    mine_at = proxy_at = None
    for key, at in components.items():
        try:
            cls = load_object(key) if isinstance(key, str) else key
        except (ImportError, NameError, ValueError):
            continue
        if isinstance(cls, type) and issubclass(cls, mine):
            mine_at = at
        elif isinstance(cls, type) and issubclass(cls, HttpProxyMiddleware):
            proxy_at = at
    if proxy_at is None:
        raise ConfigurationError(
            "HttpProxyMiddleware is disabled in DOWNLOADER_MIDDLEWARES: Proxaro needs it to "
            "build Proxy-Authorization from meta['proxy']",
            param="DOWNLOADER_MIDDLEWARES",
        )
    if mine_at is not None and mine_at >= proxy_at:
        raise ConfigurationError(
            f"ProxaroDownloaderMiddleware is at {mine_at} in DOWNLOADER_MIDDLEWARES, after "
            f"HttpProxyMiddleware ({proxy_at}): put it before (the add-on uses {priority})",
            param="DOWNLOADER_MIDDLEWARES",
        )
