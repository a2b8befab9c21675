"""httpx (async) through the Proxaro gateway: per-request targeting and a sticky session.

python examples/httpx_async.py
"""

from __future__ import annotations

import asyncio

import httpx
from _demo import proxaro, show

from proxaro_scrape import GatewayManager
from proxaro_scrape.integrations.httpx import AsyncProxaroTransport, exit_of


async def run(api_key: str, base_url: str | None, url: str) -> None:
    async with GatewayManager(api_key, base_url, target={"country": "us"}) as mgr:
        transport = AsyncProxaroTransport(mgr)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            # Three countries at once, each request with its own target.
            replies = await asyncio.gather(
                *(
                    client.get(url, extensions={"proxaro": {"country": c}})
                    for c in ("de", "fr", "jp")
                )
            )
            for country, r in zip(("de", "fr", "jp"), replies):
                show(f"country={country}", r.status_code, exit_of(r))
            for _ in range(3):  # one exit while the session lives
                r = await client.get(url, extensions={"proxaro_session": "cart42"})
                show("sticky cart42", r.status_code, exit_of(r))


def main() -> None:
    with proxaro() as (api_key, base_url, url):
        asyncio.run(run(api_key, base_url, url))


if __name__ == "__main__":
    main()
