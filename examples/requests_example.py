"""requests through the Proxaro gateway: per-request targeting and a sticky session.

python examples/requests_example.py
"""

from __future__ import annotations

from _demo import proxaro, show

from proxaro_scrape import GatewayManager
from proxaro_scrape.integrations.requests import ProxaroSession, exit_of


def main() -> None:
    with proxaro() as (api_key, base_url, url):
        with (
            GatewayManager(api_key, base_url, target={"country": "us"}) as mgr,
            ProxaroSession(mgr) as session,
        ):
            r = session.get(url, timeout=30)  # the manager's default target: the US
            show("default (us)", r.status_code, exit_of(r))
            for country in ("de", "jp"):  # this request only
                r = session.get(url, proxaro={"country": country}, timeout=30)
                show(f"country={country}", r.status_code, exit_of(r))
            for _ in range(3):  # one exit while the session lives
                r = session.get(url, proxaro_session="cart42", timeout=30)
                show("sticky cart42", r.status_code, exit_of(r))


if __name__ == "__main__":
    main()
