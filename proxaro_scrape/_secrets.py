"""Secrets are masked where they are stored, not where they are printed.

A :class:`Secret` holds an API key, a gateway password or a webhook secret.  Its ``str`` and
``repr`` show only a masked form, so it cannot leak into a log line, an exception message, a
``repr`` or a stats value by accident; code that needs the value calls :meth:`Secret.reveal`.
:func:`write_secret_file` is the one way a secret is written to disk: mode 0600, atomically,
never through a symbolic link.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import tempfile
from pathlib import Path
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


def check_secret_path(path: str | os.PathLike[str], *, param: str = "path") -> Path:
    """Where :func:`write_secret_file` may write: refused (a ``ConfigurationError`` naming
    ``param``) when it is a symbolic link, a directory or another non-regular file, or its
    directory does not exist.  Call it before asking the API for the secret, so that nothing is
    sent for a secret that could not be kept."""
    from proxaro_scrape.errors import ConfigurationError

    target = Path(path)
    if target.is_symlink():
        # Following a link would write the secret wherever the link points (another user's
        # file, a world-readable place); replacing it would surprise whoever made it.
        raise ConfigurationError(f"{param} {target} is a symbolic link; refusing", param=param)
    if target.exists() and not target.is_file():
        raise ConfigurationError(f"{param} {target} exists and is not a file", param=param)
    parent = target.parent
    if not parent.is_dir():
        raise ConfigurationError(f"{param}: the directory {parent} does not exist", param=param)
    return target


def write_secret_file(path: str | os.PathLike[str], secret: Secret, *, param: str = "path") -> Path:
    """Write ``secret`` and a newline to ``path``, readable by its owner only (mode 0600).

    Atomic: the value goes to a new file in the same directory (created 0600, so it is never
    readable by others, even for a moment), which then replaces ``path`` by a rename; an
    existing file's mode (0644, say) is therefore not kept, and a reader sees the old secret or
    the new one, never half of it.  A symbolic link at ``path`` is refused, never followed.
    """
    target = check_secret_path(path, param=param)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secret.reveal() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        # os.replace renames over ``path`` itself: a link made there meanwhile is replaced,
        # not followed.
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target
