"""The REST clients the manager calls the API with: the caller's, or its own.

A client the caller passes (``client=`` / ``async_client=``) is used and never closed.  With an
API key (given, or in ``PROXARO_API_KEY``) the manager makes the one a driver needs on first use
and closes it again on close, so a failed start or a close leaves nothing open.
"""

from __future__ import annotations

import os
from typing import Any

from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import ConfigurationError

__all__ = ["ENV_API_KEY", "Clients"]

ENV_API_KEY = "PROXARO_API_KEY"


class Clients:
    """The sync and async REST clients of one manager."""

    def __init__(
        self, api_key: str | Secret | None, base_url: str | None, client: Any, async_client: Any
    ) -> None:
        has_env_key = bool(os.environ.get(ENV_API_KEY))
        if client is None and async_client is None and api_key is None and not has_env_key:
            raise ConfigurationError(
                f"no API key: pass api_key=..., set {ENV_API_KEY}, or pass client=",
                param="api_key",
            )
        self._api_key = api_key
        self._base_url = base_url
        # Clients the manager may make itself: with a key (given or in the environment).
        self._can_make = api_key is not None or has_env_key
        #: The sync client (``None`` until given or made).
        self.sync: Any = client
        #: The async client (``None`` until given or made).
        self.async_: Any = async_client
        self._owns_sync = False
        self._owns_async = False

    def sync_or_none(self) -> Any:
        """The sync client, made if it can be; ``None`` when only an async client was given."""
        if self.sync is None and not self._can_make:
            return None
        return self.get_sync()

    def get_sync(self) -> Any:
        """The sync client, made on first use (:class:`~proxaro_scrape.Proxaro`)."""
        if self.sync is None:
            if not self._can_make:
                raise ConfigurationError(
                    "the sync driver needs client= or an API key (only async_client was given)",
                    param="client",
                )
            from proxaro_scrape.api import Proxaro

            self.sync = Proxaro(self._api_key, self._base_url)
            self._owns_sync = True
        return self.sync

    def get_async(self) -> Any:
        """The async client, made on first use (:class:`~proxaro_scrape.AsyncProxaro`)."""
        if self.async_ is None:
            if not self._can_make:
                raise ConfigurationError(
                    "the async driver needs async_client= or an API key (only client was given)",
                    param="async_client",
                )
            from proxaro_scrape.api import AsyncProxaro

            self.async_ = AsyncProxaro(self._api_key, self._base_url)
            self._owns_async = True
        return self.async_

    def close_sync(self) -> None:
        """Close the sync client if the manager made it."""
        if self._owns_sync and self.sync is not None:
            self.sync.close()
            self.sync = None
            self._owns_sync = False

    async def aclose(self) -> None:
        """Close whichever clients the manager made."""
        if self._owns_async and self.async_ is not None:
            await self.async_.aclose()
            self.async_ = None
            self._owns_async = False
        self.close_sync()

    def api_key(self) -> Secret | None:
        """The API key these clients use (given, in the environment, or the client's own),
        kept a :class:`Secret`; ``None`` when it cannot be known."""
        key: Any = self._api_key if self._api_key is not None else os.environ.get(ENV_API_KEY)
        if not key:
            for client in (self.sync, self.async_):
                key = getattr(getattr(client, "_config", None), "api_key", None)
                if key:
                    break
        if not key:
            return None
        return key if isinstance(key, Secret) else Secret(str(key))

    @property
    def open(self) -> bool:
        """Does the manager still hold a client it made?"""
        return self._owns_sync or self._owns_async
