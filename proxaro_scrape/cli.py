"""The ``proxaro-scrape`` command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="proxaro-scrape")
def main() -> None:
    """Route scraping traffic through the Proxaro gateway; run and script a local Proxaro."""


@main.command()
@click.option(
    "--port",
    type=int,
    default=0,
    show_default=True,
    help="API port; 0 picks free ports for every component.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic world.")
@click.option("--plan", default="growth", show_default=True, help="Plan of the sandbox account.")
@click.option("--json", "as_json", is_flag=True, help="Print the addresses as one JSON line first.")
def sandbox(port: int, seed: int, plan: str, as_json: bool) -> None:
    """Run a local Proxaro (API, gateway, demo site) on loopback until interrupted."""
    from proxaro_scrape.sandbox import Sandbox

    sb = Sandbox(seed=seed, plan=plan, api_port=port)
    with sb:
        if as_json:
            click.echo(sb.dumps(), nl=True)
        else:
            info = sb.info()
            for key in (
                "api_url",
                "api_key",
                "gateway_host",
                "gateway_port",
                "site_url",
                "site_https_url",
                "ca_cert",
            ):
                click.echo(f"{key:15} {info[key]}")
            click.echo("Press Ctrl+C to stop.")
        try:
            sb.wait()
        except KeyboardInterrupt:
            pass
