"""The ``proxaro-scrape`` command: the account, the gateway and a local Proxaro from the shell.

The commands live in :mod:`proxaro_scrape._cli`; this module is the group and its options
(the console script is ``proxaro_scrape.cli:main``).
"""

from __future__ import annotations

import click

from proxaro_scrape._cli import account, demo, gateway, local, manage
from proxaro_scrape._cli._common import ENV_API_KEY, ENV_BASE_URL, CLIConfig, ProxaroGroup

__all__ = ["main"]


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ProxaroGroup.debug = True
    return value


@click.group(cls=ProxaroGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="proxaro-scrape")
@click.option("--api-key", metavar="KEY", default=None, help=f"API key (else {ENV_API_KEY}).")
@click.option(
    "--base-url",
    metavar="URL",
    default=None,
    help=f"API base URL (else {ENV_BASE_URL}, else https://api.proxaro.io).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds per API request (default 30).",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Retries of a failed API request (429, 503, connection errors...).",
)
@click.option(
    "--debug",
    is_flag=True,
    is_eager=True,
    callback=_debug,
    help="Show tracebacks instead of one error line.",
)
@click.pass_context
def main(
    ctx: click.Context,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    max_retries: int,
    debug: bool,
) -> None:
    """Route scraping traffic through the Proxaro gateway; script the account; run a local
    Proxaro.

    Every command takes --json (one JSON document on stdout, nothing else). Secrets are
    masked unless a command's --reveal is given. Errors are one line on stderr and a
    non-zero exit code.
    """
    cfg = ctx.ensure_object(CLIConfig)
    cfg.api_key = api_key if api_key is not None else cfg.api_key
    cfg.base_url = base_url if base_url is not None else cfg.base_url
    cfg.timeout = timeout
    cfg.max_retries = max_retries
    cfg.debug = debug


for _module in (account, manage, gateway, local, demo):
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)

if __name__ == "__main__":  # python -m proxaro_scrape.cli
    main()
