"""The ``X-NB-Signature`` check: HMAC-SHA256 of the raw body, exactly as the reference does it.

Framework-free and I/O-free: this module is what a receiver written for any web framework
needs, and the first thing :class:`~proxaro_scrape.webhooks.WebhookReceiver` runs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from proxaro_scrape import protocol
from proxaro_scrape._secrets import Secret
from proxaro_scrape.errors import ConfigurationError

__all__ = [
    "SIGNATURE_HEADER",
    "SecretLike",
    "as_secrets",
    "compute_signature",
    "verify_signature",
]

#: The header that carries the signature.
SIGNATURE_HEADER = protocol.SIGNATURE_HEADER

#: A webhook secret as the caller may hold it: a plain ``str`` or a masked :class:`Secret`.
SecretLike = str | Secret


def _secret_bytes(secret: object) -> bytes | None:
    if isinstance(secret, Secret):
        secret = secret.reveal()
    if not isinstance(secret, str) or not secret:
        return None
    return secret.encode("utf-8")


def compute_signature(body: bytes, secret: SecretLike) -> str:
    """The ``X-NB-Signature`` value for ``body``: lower-case hex HMAC-SHA256 under ``secret``.

    What Proxaro sends; useful to sign test deliveries.  Raises :class:`ConfigurationError` for
    an empty secret.
    """
    key = _secret_bytes(secret)
    if key is None:
        raise ConfigurationError("a webhook secret is a non-empty str", param="secret")
    return hmac.new(key, bytes(body), hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str, secret: SecretLike) -> bool:
    """Does ``header`` sign ``body`` under ``secret``?  Exactly the reference's Node snippet.

    The expected value is the lower-case hex HMAC-SHA256 of the raw body, compared with the
    header byte for byte in constant time.  So an upper-case hex header does *not* verify (the
    snippet compares the two strings, not the digests), nor does one with a ``sha256=`` prefix
    or surrounding spaces.  Returns ``False``, never raises, for any mismatch or bad input:
    an empty, short, long, non-hex, non-ASCII or non-``str`` header, a non-bytes body, an empty
    or non-``str`` secret.

    >>> verify_signature(b"{}", compute_signature(b"{}", "whsec_test_x"), "whsec_test_x")
    True
    """
    try:
        if not isinstance(header, str) or not header:
            return False
        if isinstance(body, str):
            body = body.encode("utf-8")  # Node's update(string) hashes the UTF-8 bytes too
        if not isinstance(body, (bytes, bytearray, memoryview)):
            return False
        key = _secret_bytes(secret)
        if key is None:
            return False
        expected = hmac.new(key, bytes(body), hashlib.sha256).hexdigest().encode("ascii")
        # Compare bytes, not str: compare_digest refuses non-ASCII str, and a header with
        # non-ASCII characters must simply not match.
        given = header.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(expected, given)
    except Exception:  # noqa: BLE001 - the contract is "False, never raises"
        return False


def as_secrets(secret: SecretLike | Iterable[SecretLike]) -> tuple[Secret, ...]:
    """One secret or several (old and new during a rotation) as a non-empty tuple of Secrets.

    Raises :class:`ConfigurationError` (``param="secret"``) for an empty list or any item that
    is not a non-empty ``str`` or :class:`Secret`; the message never holds the value.
    """
    if isinstance(secret, (str, Secret)):
        items: list[object] = [secret]
    else:
        try:
            items = list(secret)
        except TypeError:
            raise ConfigurationError(
                "secret is a str, a Secret or a list of them", param="secret"
            ) from None
    out: list[Secret] = []
    for item in items:
        if not isinstance(item, (str, Secret)) or not item:
            raise ConfigurationError("a webhook secret is a non-empty str", param="secret")
        out.append(item if isinstance(item, Secret) else Secret(item))
    if not out:
        raise ConfigurationError("at least one webhook secret is needed", param="secret")
    return tuple(out)
