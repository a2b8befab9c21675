"""What one attempt is sent with, and what the per-request path precomputes to build it fast.

:class:`Route` is handed to the client stack (proxy URL, ``Proxy-Authorization``, the concrete
target).  :class:`Step` (one target of a failover chain: its breaker keys, stats keys and
usernames) and :class:`Plan` (a requested target resolved against one pool version) are
built once per target and pool version by :class:`~proxaro_scrape.gateway._core.RoutingCore`
and read by every request after: the hot path formats nothing it has formatted before.
"""

from __future__ import annotations

from proxaro_scrape._secrets import Secret
from proxaro_scrape.gateway._credentials import GatewayCredentials
from proxaro_scrape.gateway.target import Target, encode_username

__all__ = ["Plan", "Route", "Step", "host_of"]


class Route:
    """Where to send one attempt: the gateway, the username for its target, the credentials.

    ``proxy_url`` (``http://user-params:PASSWORD@host:port``) carries the password: hand it to
    the client stack, never log it (``proxy_url_masked`` is for logs).  ``target`` is the
    concrete target after selector resolution and failover, without the sticky session, which
    is ``session_id``.  ``attempt`` is 1-based.  ``credentials_version`` is what to pass to
    ``refresh_credentials`` when this route meets a 407.
    """

    __slots__ = ("username", "target", "session_id", "attempt", "_creds")

    def __init__(
        self,
        username: str,
        creds: GatewayCredentials,
        target: Target,
        session_id: str | None,
        attempt: int,
    ) -> None:
        self.username = username
        self.target = target
        self.session_id = session_id
        self.attempt = attempt
        self._creds = creds

    @property
    def proxy_url(self) -> str:
        """``http://USERNAME-params:PASSWORD@GATEWAY:PORT`` (secret: never log it)."""
        return self._creds.proxy(self.username)[0]

    @property
    def proxy_authorization(self) -> str:
        """The ``Proxy-Authorization`` header value: ``Basic base64(user:pass)`` (secret)."""
        return self._creds.proxy(self.username)[1]

    @property
    def proxy_url_masked(self) -> str:
        """The proxy URL with the password masked: safe for logs."""
        return self._creds.masked_url(self.username)

    @property
    def gateway_url(self) -> str:
        """``http://GATEWAY:PORT``, no credentials."""
        return self._creds.gateway_url

    @property
    def gateway_host(self) -> str:
        """The gateway's host name or address."""
        return self._creds.gateway

    @property
    def gateway_port(self) -> int:
        """The gateway's port."""
        return self._creds.port

    @property
    def password(self) -> Secret:
        """The gateway password (a :class:`~proxaro_scrape._secrets.Secret`)."""
        return self._creds.password

    @property
    def credentials_version(self) -> int:
        """The version of the credentials this route was built with."""
        return self._creds.version

    def __repr__(self) -> str:
        return (
            f"Route(attempt={self.attempt}, target={self.target!r}, "
            f"session_id={self.session_id!r}, proxy={self.proxy_url_masked!r}, "
            f"credentials_version={self.credentials_version})"
        )


class Step:
    """One target of a failover chain, with everything the hot path precomputes for it."""

    __slots__ = ("target", "keys", "fail_key", "stat_keys", "retry_stat_keys", "label", "_names")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.label = target.describe()
        c = target.country or "*"
        country_key = f"c:{c}"
        if target.city is None and target.asn is None and target.exit_class is None:
            keys = [country_key]
        else:
            geo = f"g:{c}|{target.city or ''}|{target.asn or ''}|{target.exit_class or ''}"
            keys = [geo, country_key]
            if target.asn is not None:
                keys.append(f"a:{c}|{target.asn}")
        self.keys = tuple(keys)
        self.fail_key = keys[0]
        self.stat_keys = (
            "requests",
            f"requests/country/{target.country or 'any'}",
            f"requests/exit_class/{target.exit_class or 'any'}",
        )
        self.retry_stat_keys = (*self.stat_keys, "retries")
        self._names: dict[tuple[str, str | None, int | None], str] = {}

    def username(self, base: str, session_id: str | None, ttl: int | None) -> str:
        """The gateway username of this step for a base username and sticky session, cached."""
        key = (base, session_id, ttl)
        name = self._names.get(key)
        if name is None:
            t = self.target
            sesstime = ttl if session_id else None
            name = encode_username(
                base, t.country, t.city, t.asn, t.exit_class, session_id, sesstime
            )
            if len(self._names) >= 256:
                self._names.clear()  # bounded: sticky sessions are many, a username is cheap
            self._names[key] = name
        return name


class Plan:
    """What ``RoutingCore.request`` precomputes per requested target and pool version."""

    __slots__ = ("target", "candidates", "cum_weights", "chains", "fallback", "send_ttl")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.candidates: list[Target] = []
        self.cum_weights: list[float] = []
        self.chains: dict[str, tuple[Step, ...]] = {}  # by the resolved target's key
        self.fallback: Target | None = None
        self.send_ttl = target.session_ttl is not None


def host_of(url: str) -> str:
    """The lower-cased host of ``url`` (fast: this is on the per-request path)."""
    parts = url.split("/", 3)
    if len(parts) > 2 and parts[1] == "" and parts[0][-1:] == ":":
        hostport = parts[2]
        if "?" not in hostport and "#" not in hostport and "@" not in hostport:
            if hostport[:1] != "[":
                return hostport.partition(":")[0].lower()
    return _host_slow(url)


def _host_slow(url: str) -> str:
    i = url.find("://")
    rest = url[i + 3 :] if i >= 0 else url
    end = len(rest)
    for ch in "/?#":
        j = rest.find(ch)
        if 0 <= j < end:
            end = j
    hostport = rest[:end]
    at = hostport.rfind("@")
    if at >= 0:
        hostport = hostport[at + 1 :]
    if hostport.startswith("["):
        close = hostport.find("]")
        return hostport[: close + 1].lower() if close > 0 else hostport.lower()
    colon = hostport.find(":")
    if colon >= 0:
        hostport = hostport[:colon]
    return hostport.lower()
