"""A local Proxaro: the v1 API emulator, a forward-proxy gateway and a demo shop, on loopback.

The sandbox shares nothing with the client side but :mod:`proxaro_scrape.protocol` (names and
tables), so that the two cannot agree on the same mistake.
"""

from proxaro_scrape.sandbox._runner import Sandbox, SandboxConfigError
from proxaro_scrape.sandbox.world import Clock, World

__all__ = ["Clock", "Sandbox", "SandboxConfigError", "World"]
