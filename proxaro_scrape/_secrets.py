"""Secrets are masked where they are stored, not where they are printed.

A :class:`Secret` holds an API key, a gateway password or a webhook secret.  Its ``str`` and
``repr`` show only a masked form, so it cannot leak into a log line, an exception message, a
``repr`` or a stats value by accident; code that needs the value calls :meth:`Secret.reveal`.
"""

from __future__ import annotations

import hmac
from typing import Any


def mask(value: str, keep: int = 4) -> str:
    """``proxaro_test_0123…cdef`` → ``proxaro_test_…cdef``; short values → ``****``."""
    if not value:
        return ""
    for prefix in ("proxaro_live_", "proxaro_test_", "whsec_live_", "whsec_test_", "whsec_"):
        if value.startswith(prefix) and len(value) > len(prefix) + keep:
            return f"{prefix}…{value[-keep:]}"
    return "****"


class Secret:
    """A string that does not print.  Compare with ``==`` (constant time) or :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("a secret is a str")
        self._value = value

    def reveal(self) -> str:
        """The real value.  Never log it."""
        return self._value

    def __str__(self) -> str:
        return mask(self._value)

    def __repr__(self) -> str:
        return f"Secret({mask(self._value)!r})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("secrets are not pickled")
