"""pytest plugin (registered by entry point): the ``proxaro_sandbox`` fixture.

Put a whole local Proxaro under your own tests::

    def test_my_spider(proxaro_sandbox):
        settings = {"PROXARO_API_KEY": proxaro_sandbox.api_key,
                    "PROXARO_BASE_URL": proxaro_sandbox.api_url}
        ...

The sandbox runs on its own loop in a background thread, on free loopback ports, and is closed
at the end of the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proxaro_scrape.sandbox import Sandbox


@pytest.fixture
def proxaro_sandbox() -> Iterator[Sandbox]:
    """A running :class:`~proxaro_scrape.sandbox.Sandbox` (seed 0, Growth plan)."""
    with Sandbox(seed=0) as sandbox:
        yield sandbox
