"""Playwright (async) through the Proxaro gateway: a browser context per route.

python examples/playwright_example.py

Needs ``pip install "proxaro-scrape[playwright]"`` and a Chromium (``apt-get install
chromium``).  Without ``PROXARO_API_KEY`` it starts a local sandbox and renders the demo shop's
JavaScript pages, whose content only a browser shows.
"""

from __future__ import annotations

import asyncio

from _demo import proxaro, show
from playwright.async_api import async_playwright

from proxaro_scrape import GatewayManager
from proxaro_scrape.integrations.playwright import ProxaroBrowser, launch_chromium


async def run(api_key: str, base_url: str | None, url: str) -> None:
    sandbox = url.endswith("/ip")
    async with GatewayManager(api_key, base_url) as mgr, async_playwright() as pw:
        browser = await launch_chromium(pw)  # the system Chromium, headless
        try:
            async with ProxaroBrowser(
                mgr,
                browser,
                max_contexts=4,  # at most four contexts alive; the oldest idle one closes
                block_resources=True,  # no images, fonts or media: residential bytes cost money
                context_options={"ignore_https_errors": sandbox},  # the sandbox's own CA
            ) as pages:
                for country in ("us", "de", "jp"):
                    async with pages.open(url, target={"country": country}) as visit:
                        show(f"country={country}", visit.status or 0, visit.exit)
                if sandbox:
                    shop = url.removesuffix("/ip")
                    # One sticky session: the page and everything its script fetches leave
                    # through one exit.
                    async with pages.open(
                        f"{shop}/js/product/7", target={"country": "de"}, session_key="cart42"
                    ) as visit:
                        name = visit.page.locator("#app[data-rendered=true] h1.name")
                        print(f"rendered by script: {await name.inner_text()!r}")
                    async with pages.open(
                        f"{shop}/js/ip", target={"country": "de"}, session_key="cart42"
                    ) as visit:
                        same = visit.page.locator("#app[data-rendered=true] dd.same-exit")
                        print(f"the fetch left through the page's exit: {await same.inner_text()}")
        finally:
            await browser.close()


def main() -> None:
    with proxaro() as (api_key, base_url, url):
        asyncio.run(run(api_key, base_url, url))


if __name__ == "__main__":
    main()
