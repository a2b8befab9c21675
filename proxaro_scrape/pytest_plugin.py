"""pytest plugin (registered by entry point): the ``proxaro_sandbox`` fixture.

Put a whole local Proxaro under your own tests::

    def test_my_spider(proxaro_sandbox):
        settings = {"PROXARO_API_KEY": proxaro_sandbox.api_key,
                    "PROXARO_BASE_URL": proxaro_sandbox.api_url}
        ...

The sandbox runs on its own loop in a background thread, on free loopback ports, and is closed
at the end of the test.

Every pytest run of a machine that has proxaro-scrape installed loads this module, so it costs
nothing until the fixture is used: it lives outside :mod:`proxaro_scrape.sandbox` (importing a
submodule would import that package, and with it aiohttp) and imports the sandbox, which needs
the ``sandbox`` extra, inside the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from proxaro_scrape.sandbox import Sandbox

__all__ = ["proxaro_sandbox"]


@pytest.fixture
def proxaro_sandbox() -> Iterator[Sandbox]:
    """A running :class:`~proxaro_scrape.sandbox.Sandbox` (seed 0, Growth plan)."""
    try:
        from proxaro_scrape.sandbox import Sandbox
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("aiohttp", "trustme"):
            raise
        raise ImportError(
            'the proxaro_sandbox fixture needs the sandbox: pip install "proxaro-scrape[sandbox]"'
        ) from exc

    with Sandbox(seed=0) as sandbox:
        yield sandbox
