"""Shared by the example scripts: a Proxaro to talk to, and one way to print an exit.

With ``PROXARO_API_KEY`` set, the scripts use your account (``PROXARO_BASE_URL`` if set) and
fetch ``PROXARO_EXAMPLE_URL`` (default ``http://example.com/``; plain HTTP shows the exit on
every stack).  Without it they start a local sandbox (API, gateway and demo shop on loopback)
and fetch the shop's ``/ip``, so they run on a fresh machine with no account and no network.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def proxaro() -> Iterator[tuple[str, str | None, str]]:
    """``(api_key, base_url, url)``: your account's, or a local sandbox's."""
    if os.environ.get("PROXARO_API_KEY"):
        yield (
            os.environ["PROXARO_API_KEY"],
            os.environ.get("PROXARO_BASE_URL"),
            os.environ.get("PROXARO_EXAMPLE_URL", "http://example.com/"),
        )
        return
    from proxaro_scrape.sandbox import Sandbox

    with Sandbox() as sb:
        print(f"no PROXARO_API_KEY: using a local sandbox ({sb.api_url})")
        yield sb.api_key, sb.api_url, f"{sb.site_url}/ip"


def show(label: str, status: int, exit: Any) -> None:
    """One line per response: what was asked, and the exit that carried it."""
    if exit is None:
        print(f"{label:<22} {status}  exit not reported")
    else:
        print(
            f"{label:<22} {status}  exit {exit.ip} country={exit.country} "
            f"asn={exit.asn} class={exit.exit_class}"
        )
