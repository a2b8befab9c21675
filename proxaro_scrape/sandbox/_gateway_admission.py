"""Who may use the sandbox gateway, and for what: the checks before an exit is chosen.

In the order the gateway applies them (its module docstring): the source allowlist, the
``Proxy-Authorization`` credentials (on every plain request and at the start of every tunnel),
the targeting in the username (decoded by :mod:`proxaro_scrape.sandbox.targeting`, the one
decoder), the plan's ASN scope, then the target host, which must be on loopback.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from proxaro_scrape import protocol
from proxaro_scrape.sandbox._gateway_answers import Refusal
from proxaro_scrape.sandbox._gateway_wire import Head, decode_basic
from proxaro_scrape.sandbox.targeting import (
    Targeting,
    TargetingError,
    base_username,
    check_against_pool,
    parse_username,
)
from proxaro_scrape.sandbox.world import World

if TYPE_CHECKING:
    from proxaro_scrape.sandbox._gateway_accounting import Accounting
    from proxaro_scrape.sandbox._gateway_exits import ExitChooser
    from proxaro_scrape.sandbox._gateway_upstream import UpstreamPool

__all__ = ["Admission", "Stage", "loopback_host", "reachable"]

#: Usernames (and Proxy-Authorization values) whose decoding is remembered, at most.
_CACHE_MAX = 4096

_LOOPBACK_CACHE: dict[str, str | None] = {}


def loopback_host(host: str) -> str | None:
    """The IP literal to connect to, or ``None`` when ``host`` is not loopback.

    Decided from the literal alone: ``localhost`` is 127.0.0.1, an IP literal must be in
    127.0.0.0/8 or be ::1, and any other name is refused without being resolved.
    """
    if host in _LOOPBACK_CACHE:
        return _LOOPBACK_CACHE[host]
    low = host.lower()
    result: str | None
    if low == "localhost":
        result = "127.0.0.1"
    else:
        try:
            addr = ipaddress.ip_address(low)
        except ValueError:
            result = None
        else:
            result = str(addr) if addr.is_loopback else None
    if len(_LOOPBACK_CACHE) >= 4096:
        _LOOPBACK_CACHE.clear()
    _LOOPBACK_CACHE[host] = result
    return result


def reachable(host: str) -> str:
    """The loopback IP to connect to for ``host``, else 403 ``target_not_allowed``."""
    ip = loopback_host(host)
    if ip is None:
        raise Refusal(
            protocol.ERROR_TARGET_NOT_ALLOWED,
            f"{host!r} is not a loopback address; the sandbox never leaves loopback",
        )
    return ip


class Admission:
    """The source, auth, targeting and scope checks that requests and tunnels share.

    Decoded ``Proxy-Authorization`` values and usernames are cached (a client sends the same
    few again and again); the password itself is checked against the world on every request,
    since a rotation may have retired it a moment ago.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self._usernames: dict[str, Targeting | TargetingError] = {}
        #: Proxy-Authorization value -> (username, password), or why it is malformed.
        self._auth_cache: dict[bytes, tuple[str, str] | str] = {}
        self._exit_classes = {code: list(c.exit_classes) for code, c in world.countries.items()}

    def admit(self, peer: str, head: Head) -> Targeting:
        """The targeting of a request from ``peer``, or a :class:`Refusal` saying why not."""
        world = self.world
        if not world.source_allowed(peer):
            raise Refusal(protocol.ERROR_SOURCE_NOT_ALLOWED)
        auth = head.get(b"proxy-authorization")
        if auth is None:
            raise Refusal(protocol.ERROR_AUTH_FAILED, "Proxy-Authorization is missing")
        pair = self._auth_cache.get(auth)
        if pair is None:
            pair = decode_basic(auth)
            if len(self._auth_cache) >= _CACHE_MAX:
                self._auth_cache.clear()
            self._auth_cache[auth] = pair
        if isinstance(pair, str):
            raise Refusal(protocol.ERROR_AUTH_FAILED, pair)
        username, password = pair
        # Checked on every request: the password may have been rotated out a moment ago.
        if not world.check_gateway_auth(base_username(username), password):
            raise Refusal(protocol.ERROR_AUTH_FAILED)
        t = self._targeting(username)
        if t.asn is not None and not world.asn_allowed():
            raise Refusal(protocol.ERROR_SCOPE_REQUIRED)
        return t

    def _targeting(self, username: str) -> Targeting:
        cached = self._usernames.get(username)
        if cached is None:
            try:
                cached = parse_username(username)
                # Countries' exit classes are static, so this check can be cached with it.
                check_against_pool(cached, self._exit_classes)
            except TargetingError as exc:
                cached = exc
            if len(self._usernames) >= _CACHE_MAX:
                self._usernames.clear()
            self._usernames[username] = cached
        if isinstance(cached, TargetingError):
            raise Refusal(protocol.ERROR_BAD_TARGETING, f"{cached.param}: {cached}")
        return cached


class Stage:
    """What serving a client's request needs, whichever way it travels (forwarded or
    tunnelled): the world, the admission checks, the exit chooser, the upstream pool and the
    accounting.  The forwarder and the tunneller are the two stages."""

    def __init__(
        self,
        world: World,
        admission: Admission,
        exits: ExitChooser,
        pool: UpstreamPool,
        accounting: Accounting,
    ) -> None:
        self.world = world
        self._admission = admission
        self._exits = exits
        self._pool = pool
        self._accounting = accounting
