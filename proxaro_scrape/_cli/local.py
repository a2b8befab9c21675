"""Commands that run a local Proxaro: ``sandbox`` (and ``demo``)."""

from __future__ import annotations

import click

from proxaro_scrape._cli._common import CommandError, sigterm_as_interrupt

__all__ = ["COMMANDS"]


@click.command("sandbox")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="API port; 0 picks free ports for every component.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic world.")
@click.option("--plan", default="growth", show_default=True, help="Plan of the sandbox account.")
@click.option("--json", "as_json", is_flag=True, help="Print the addresses as one JSON line first.")
def sandbox(port: int, seed: int, plan: str, as_json: bool) -> None:
    """Run a local Proxaro (API, gateway, demo site) on loopback until interrupted.

    Its API key is a test key of the local world only: it is printed so that you can use it.
    """
    try:
        from proxaro_scrape.sandbox import Sandbox
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("aiohttp", "trustme"):
            raise
        raise CommandError(
            f'the sandbox needs {exc.name}: pip install "proxaro-scrape[sandbox]"'
        ) from None

    try:
        sb = Sandbox(seed=seed, plan=plan, api_port=port)
    except ValueError as exc:  # an unknown plan, say: a refused value, so a usage error
        raise click.BadParameter(str(exc), param_hint="'--plan'") from None
    with sigterm_as_interrupt(), sb:
        # From the first line printed on, a stop is a clean one (exit 0): whoever read that
        # line may stop the sandbox at once, before it even reaches wait().
        try:
            if as_json:
                click.echo(sb.dumps(), nl=True)
            else:
                info = sb.info()
                for key, value in info.items():
                    click.echo(f"{key:15} {value}")
                click.echo(
                    f"Try: proxaro-scrape --api-key {info['api_key']} "
                    f"--base-url {info['api_url']} status"
                )
                click.echo("Press Ctrl+C to stop.")
            sb.wait()
        except KeyboardInterrupt:
            pass


COMMANDS = (sandbox,)
