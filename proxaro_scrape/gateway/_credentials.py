"""Gateway credentials as the manager holds them: current and previous, with version numbers.

Every distinct set of credentials fetched from ``GET /v1/credentials`` gets a version number
(1, 2, ...); fetching the same credentials again keeps the version.  A route remembers the
version it was built with, so ``refresh_credentials(seen_version)`` can tell "newer credentials
are already in" (nothing to do) from "these are the ones that failed" (fetch).  The previous set
stays available for work already in flight: the gateway accepts it during the rotation grace.

Each :class:`GatewayCredentials` caches, per username, the proxy URL and the
``Proxy-Authorization`` value, so the per-request path never formats or base64-encodes twice.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import APIError

__all__ = ["CredentialsState", "GatewayCredentials"]

_CACHE_LIMIT = 4096


@dataclass(eq=False)
class GatewayCredentials:
    """One version of the gateway credentials.  The password is a :class:`Secret`."""

    version: int
    gateway: str
    port: int
    username: str
    password: Secret
    expires_at: datetime | None = None
    id: str | None = None
    _cache: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        host = f"[{self.gateway}]" if ":" in self.gateway else self.gateway
        self.hostport = f"{host}:{self.port}"
        self.gateway_url = f"http://{self.hostport}"
        # Userinfo must be percent-encoded; the sandbox's and Proxaro's passwords are URL-safe,
        # but nothing promises that.
        self._password_q = quote(self.password.reveal(), safe="-_.~")

    def __repr__(self) -> str:
        return (
            f"GatewayCredentials(version={self.version}, gateway={self.hostport!r}, "
            f"username={self.username!r}, password={self.password!r})"
        )

    def same_as(self, other: GatewayCredentials) -> bool:
        """Same gateway, username and password (whatever the version)?"""
        return (
            self.gateway == other.gateway
            and self.port == other.port
            and self.username == other.username
            and self.password == other.password
        )

    def proxy(self, username: str) -> tuple[str, str]:
        """``(proxy_url, proxy_authorization)`` for a full gateway username, cached."""
        hit = self._cache.get(username)
        if hit is not None:
            return hit
        url = f"http://{quote(username, safe='-_.~')}:{self._password_q}@{self.hostport}"
        token = base64.b64encode(f"{username}:{self.password.reveal()}".encode()).decode("ascii")
        hit = (url, f"Basic {token}")
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # a bounded cache; rebuilding an entry costs a microsecond
        self._cache[username] = hit
        return hit

    def masked_url(self, username: str) -> str:
        """The proxy URL with the password masked: safe to log."""
        return f"http://{quote(username, safe='-_.~')}:****@{self.hostport}"

    def expires_in(self, now_wall: float) -> float | None:
        """Seconds until ``expires_at`` (negative once past), or ``None`` without one."""
        if self.expires_at is None:
            return None
        return self.expires_at.timestamp() - now_wall


def credentials_from_model(model: Any, version: int) -> GatewayCredentials:
    """Build from the REST client's ``Credentials`` model (or a dict with the same keys)."""
    get = model.get if isinstance(model, Mapping) else lambda k, d=None: getattr(model, k, d)
    expires = get("expires_at")
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    if isinstance(expires, datetime) and expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    password = get("password")
    gateway, username = get("gateway"), get("username")
    port: Any = get("port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    # Credentials without these would route every request nowhere, each failing as a
    # connection error far from the cause: refuse them here, saying what the API left out.
    missing = [
        name
        for name, ok in (
            ("gateway", isinstance(gateway, str) and bool(gateway.strip())),
            ("port", isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536),
            ("username", isinstance(username, str) and bool(username)),
            ("password", isinstance(password, (str, Secret)) and bool(password)),
        )
        if not ok
    ]
    if missing:
        raise APIError(
            f"the API's credentials (GET /v1/credentials) have no usable {', '.join(missing)}: "
            "the gateway cannot be reached with them"
        )
    return GatewayCredentials(
        version=version,
        gateway=str(gateway),
        port=int(port),
        username=str(username),
        password=password if isinstance(password, Secret) else Secret(str(password)),
        expires_at=expires if isinstance(expires, datetime) else None,
        id=get("id"),
    )


class CredentialsState:
    """The current and previous credentials; :meth:`install` bumps the version on change."""

    def __init__(self) -> None:
        self.current: GatewayCredentials | None = None
        self.previous: GatewayCredentials | None = None
        self._versions = 0

    @property
    def version(self) -> int:
        """The current version (0 before the first fetch)."""
        return self.current.version if self.current is not None else 0

    def install(self, model: Any) -> bool:
        """Take a freshly fetched credentials model; True when it differs from the current."""
        candidate = credentials_from_model(model, self._versions + 1)
        current = self.current
        if current is not None and current.same_as(candidate):
            # Same credentials; only expires_at may have moved.
            current.expires_at = candidate.expires_at or current.expires_at
            return False
        self._versions += 1
        self.previous = current
        self.current = candidate
        return True

    def get(self, version: int) -> GatewayCredentials | None:
        """The credentials of ``version`` if still held (current or previous)."""
        for creds in (self.current, self.previous):
            if creds is not None and creds.version == version:
                return creds
        return None
