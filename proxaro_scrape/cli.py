"""The ``proxaro-scrape`` command: the account, the gateway and a local Proxaro from the shell.

The commands live in :mod:`proxaro_scrape._cli`; this module is the group and its options
(the console script is ``proxaro_scrape.cli:main``).  The command needs the ``cli`` extra
(click, rich); the console script is installed with the package whatever the extras, so without
them :func:`main` prints the one line that says what to install and exits 1.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import click

__all__ = ["CLI_EXTRA_MISSING", "main"]

#: What ``proxaro-scrape`` prints when the ``cli`` extra is not installed.
CLI_EXTRA_MISSING = (
    'proxaro-scrape: the command line needs the cli extra: pip install "proxaro-scrape[cli]"'
)


def _cli_extra_missing() -> bool:
    """Whether click or rich is missing (any other import error is a bug, and raised)."""
    try:
        import click  # noqa: F401
        import rich  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name in ("click", "rich"):
            return True
        raise
    return False


def _without_the_extra() -> NoReturn:
    """The console script without the ``cli`` extra: one line to stderr, exit status 1."""
    print(CLI_EXTRA_MISSING, file=sys.stderr)
    raise SystemExit(1)


def _group() -> click.Group:
    """The ``proxaro-scrape`` group with every command (imports click, rich and the commands)."""
    import click

    from proxaro_scrape._cli import account, demo, gateway, local, manage
    from proxaro_scrape._cli._common import ENV_API_KEY, ENV_BASE_URL, CLIConfig, ProxaroGroup

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

    for module in (account, manage, gateway, local, demo):
        for cmd in module.COMMANDS:
            main.add_command(cmd)
    return main


#: The console script: the click group, or, without the ``cli`` extra, the one-line refusal.
main = _without_the_extra if _cli_extra_missing() else _group()

if __name__ == "__main__":  # python -m proxaro_scrape.cli
    main()
