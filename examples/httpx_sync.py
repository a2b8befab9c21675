"""httpx (sync) through the Proxaro gateway: per-request targeting and a sticky session.

python examples/httpx_sync.py
"""

from __future__ import annotations

import httpx
from _demo import proxaro, show

from proxaro_scrape import GatewayManager
from proxaro_scrape.integrations.httpx import ProxaroTransport, exit_of


def main() -> None:
    with proxaro() as (api_key, base_url, url):
        with (
            GatewayManager(api_key, base_url, target={"country": "us"}) as mgr,
            httpx.Client(transport=ProxaroTransport(mgr), timeout=30) as client,
        ):
            r = client.get(url)  # the manager's default target: the US
            show("default (us)", r.status_code, exit_of(r))
            for country in ("de", "jp"):  # this request only
                r = client.get(url, extensions={"proxaro": {"country": country}})
                show(f"country={country}", r.status_code, exit_of(r))
            for _ in range(3):  # one exit while the session lives
                r = client.get(url, extensions={"proxaro_session": "cart42"})
                show("sticky cart42", r.status_code, exit_of(r))
            print("stats:", {k: v for k, v in mgr.stats().items() if k.startswith("requests")})


if __name__ == "__main__":
    main()
