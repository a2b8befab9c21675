"""Names and secrets of one account's fleet state in Redis.

Every key lives under ``<prefix>:<account>:``, where ``<account>`` is an HMAC-SHA256 digest of
the API key (16 hex digits): workers on one key meet, workers on another key never do, and
the key itself is never written.  The gateway credentials are the one secret the fleet shares;
they are stored sealed (Fernet: AES-128-CBC plus HMAC-SHA256) under a key derived from the API
key with HKDF, which every worker has and Redis never sees.  Someone who can read Redis learns
which exits were banned and which breakers are open, not how to use the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Hashable
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxaro_scrape._secrets import Secret

__all__ = ["Keyspace"]


class Keyspace:
    """Key names, the sealing of credentials and stable digests, for one API key.

    >>> ks = Keyspace(Secret("proxaro_test_abc"), "proxaro")
    >>> ks.key("lease")  # doctest: +ELLIPSIS
    'proxaro:...:lease'
    """

    def __init__(self, api_key: Secret, prefix: str) -> None:
        raw = api_key.reveal().encode("utf-8")
        #: The account's digest: the key's name in Redis, never the key.
        self.account = hmac.new(b"proxaro-fleet/account", raw, hashlib.sha256).hexdigest()[:16]
        self.base = f"{prefix}:{self.account}"
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=64,
            salt=None,
            info=b"proxaro-fleet/v1",
        ).derive(raw)
        self._fernet = Fernet(base64.urlsafe_b64encode(derived[:32]))
        # Names sessions and digests session keys: derived too, so that a reader of Redis
        # cannot match a digest to a guessed session key (a user id, say).
        self._mac_key = derived[32:]

    def __repr__(self) -> str:
        return f"<Keyspace {self.base}>"

    def key(self, *parts: str) -> str:
        """``<prefix>:<account>:<part>:<part>...``."""
        return ":".join((self.base, *parts))

    @property
    def channel(self) -> str:
        """The pub/sub channel of the account's fleet."""
        return self.key("events")

    def seal(self, data: dict[str, Any]) -> bytes:
        """Encrypt and authenticate a JSON object (credentials) for Redis."""
        return self._fernet.encrypt(json.dumps(data, default=_plain).encode("utf-8"))

    def open(self, token: bytes | str | None) -> dict[str, Any] | None:
        """Decrypt what :meth:`seal` wrote; ``None`` when absent, tampered or another key's."""
        if not token:
            return None
        try:
            data = json.loads(self._fernet.decrypt(token))
        except (InvalidToken, ValueError, TypeError):
            return None
        return data if isinstance(data, dict) else None

    def digest(self, key: Hashable) -> str:
        """A stable digest of a session key (its ``repr``: the same in every process)."""
        return hmac.new(self._mac_key, repr(key).encode("utf-8"), hashlib.sha256).hexdigest()[:24]

    def mac(self, text: str, length: int) -> str:
        """``length`` hex digits of an HMAC of ``text``: session ids and picks."""
        return hmac.new(self._mac_key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:length]


def _plain(value: Any) -> Any:
    # Sealing is the one place a secret is revealed on purpose: into ciphertext.
    if isinstance(value, Secret):
        return value.reveal()
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"cannot store a {type(value).__name__} in the fleet state")
