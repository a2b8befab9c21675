"""aiohttp through the Proxaro gateway: per-request targeting and a sticky session.

python examples/aiohttp_example.py
"""

from __future__ import annotations

import asyncio

import aiohttp
from _demo import proxaro, show

from proxaro_scrape import GatewayManager
from proxaro_scrape.integrations.aiohttp import ProxaroMiddleware, exit_of


async def run(api_key: str, base_url: str | None, url: str) -> None:
    async with GatewayManager(api_key, base_url, target={"country": "us"}) as mgr:
        proxaro = ProxaroMiddleware(mgr)
        async with aiohttp.ClientSession(middlewares=(proxaro,)) as session:
            async with session.get(url) as r:  # the manager's default target: the US
                show("default (us)", r.status, exit_of(r))
            for country in ("de", "jp"):  # this request only
                target = proxaro.using({"country": country})
                async with session.get(url, middlewares=(target,)) as r:
                    show(f"country={country}", r.status, exit_of(r))
            sticky = proxaro.using(session_key="cart42")  # one exit while the session lives
            for _ in range(3):
                async with session.get(url, middlewares=(sticky,)) as r:
                    show("sticky cart42", r.status, exit_of(r))


def main() -> None:
    with proxaro() as (api_key, base_url, url):
        asyncio.run(run(api_key, base_url, url))


if __name__ == "__main__":
    main()
