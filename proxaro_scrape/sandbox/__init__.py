"""A local Proxaro: the v1 API emulator, a forward-proxy gateway and a demo shop, on loopback.

The sandbox shares nothing with the client side but :mod:`proxaro_scrape.protocol` (names and
tables), so that the two cannot agree on the same mistake.

Needs the ``sandbox`` extra (aiohttp serves it, trustme makes its local CA):
``pip install "proxaro-scrape[sandbox]"``.
"""

try:
    import aiohttp as _aiohttp  # noqa: F401 - only checked for here
    import trustme as _trustme  # noqa: F401 - only checked for here
except ModuleNotFoundError as _exc:
    if (_exc.name or "").partition(".")[0] not in ("aiohttp", "trustme"):
        raise  # something aiohttp itself needs: a broken install, not a missing extra
    # Still a ModuleNotFoundError naming the missing module, so that callers that tell a
    # missing extra by ``exc.name`` (the CLI's demo, the pytest plugin) keep doing so.
    raise ModuleNotFoundError(
        f'proxaro_scrape.sandbox needs {_exc.name}: pip install "proxaro-scrape[sandbox]"',
        name=_exc.name,
    ) from _exc

from proxaro_scrape.sandbox._runner import Sandbox, SandboxConfigError
from proxaro_scrape.sandbox.world import Clock, World

__all__ = ["Clock", "Sandbox", "SandboxConfigError", "World"]
