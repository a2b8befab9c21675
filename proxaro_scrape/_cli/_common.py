"""What every command shares: configuration, the one error line, JSON and rich output.

Rules every command follows:

- ``--json`` prints exactly one JSON document on stdout (``webhooks listen --json``: one per
  line) and nothing else there; prompts, notes and progress go to stderr.
- A secret (API key, gateway password, webhook secret) is shown masked unless the command has a
  ``--reveal`` flag and it is given.  Models keep secrets as :class:`Secret`, so the JSON
  encoder below decides in one place.
- A failure is ONE line on stderr, ``Error: <message> (request req_...)``, and a non-zero exit
  code; never a traceback (``--debug`` brings it back).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from proxaro_scrape._cli._tables import Listing, listing
from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import Model, Page, Proxaro
from proxaro_scrape.errors import APIError, ConfigurationError, ProxaroError

F = TypeVar("F", bound=Callable[..., Any])

ENV_API_KEY = "PROXARO_API_KEY"
ENV_BASE_URL = "PROXARO_BASE_URL"
ENV_ALLOW_INSECURE_HTTP = "PROXARO_ALLOW_INSECURE_HTTP"

#: Option names as the user typed them, for messages that name a client argument.
_PARAM_TO_OPTION = {
    "api_key": "--api-key",
    "base_url": "--base-url",
    "allow_insecure_http": "--allow-insecure-http",
    "timeout": "--timeout",
    "max_retries": "--max-retries",
}


# ---------------------------------------------------------------------------- configuration


@dataclass
class CLIConfig:
    """The group's options (and their per-command overrides), handed to every command.

    ``api_key`` / ``base_url`` stay ``None`` unless given as options, so that the REST client
    itself reads ``PROXARO_API_KEY`` / ``PROXARO_BASE_URL`` and its messages name the variable.
    """

    api_key: str | None = None
    base_url: str | None = None
    timeout: float | None = None
    max_retries: int = 2
    debug: bool = False
    allow_insecure_http: bool = False

    def client(self, *, need_key: bool = True) -> Proxaro:
        """A REST client; a command that needs a key refuses early, naming the option."""
        client = Proxaro(
            self.api_key,
            self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            allow_insecure_http=self.allow_insecure_http,
        )
        if need_key and not client.has_key:
            client.close()
            raise ConfigurationError(
                f"no API key: pass --api-key or set {ENV_API_KEY} "
                "(`proxaro-scrape sandbox` prints a test key for a local Proxaro)",
                param="api_key",
            )
        return client

    @contextlib.contextmanager
    def session(self, *, need_key: bool = True) -> Iterator[Proxaro]:
        """``with cfg.session() as client:`` a client that is closed afterwards."""
        client = self.client(need_key=need_key)
        try:
            yield client
        finally:
            client.close()


pass_config = click.make_pass_decorator(CLIConfig, ensure=True)


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(CLIConfig), name, value)

    return callback


def api_options(fn: F) -> F:
    """``--api-key`` / ``--base-url`` on a command too (they override the group's), and
    ``--allow-insecure-http``."""
    fn = click.option(
        "--allow-insecure-http",
        is_flag=True,
        default=None,
        expose_value=False,
        callback=_store("allow_insecure_http"),
        help=f"Allow a plain http:// --base-url off this machine (the key travels in clear "
        f"text; else {ENV_ALLOW_INSECURE_HTTP}=1).",
    )(fn)
    fn = click.option(
        "--base-url",
        metavar="URL",
        expose_value=False,
        callback=_store("base_url"),
        help=f"API base URL (else {ENV_BASE_URL}, else https://api.proxaro.io).",
    )(fn)
    fn = click.option(
        "--api-key",
        metavar="KEY",
        expose_value=False,
        callback=_store("api_key"),
        help=f"API key (else {ENV_API_KEY}).",
    )(fn)
    return fn


def json_option(fn: F) -> F:
    """``--json``: one JSON document on stdout, nothing else."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts (nothing else on stdout)."
    )(fn)


def reveal_option(what: str) -> Callable[[F], F]:
    """``--reveal``: show ``what`` instead of its masked form."""

    def deco(fn: F) -> F:
        return click.option("--reveal", is_flag=True, help=f"Show the {what} (masked otherwise).")(
            fn
        )

    return deco


def command(name: str | None = None, **kw: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """A command with ``--json`` and the per-command ``--api-key`` / ``--base-url``."""

    def deco(fn: Callable[..., Any]) -> click.Command:
        return click.command(name, **kw)(api_options(json_option(fn)))

    return deco


# ---------------------------------------------------------------------------- JSON


def jsonable(value: Any, *, reveal: bool = False) -> Any:
    """``value`` as plain JSON types: models as the API sent them, secrets masked unless
    ``reveal``, datetimes as ISO-8601 UTC."""
    if isinstance(value, Secret):
        return value.reveal() if reveal else str(value)
    if isinstance(value, Model):
        return jsonable(value.to_dict(), reveal=reveal)
    if isinstance(value, Page):
        return [jsonable(v, reveal=reveal) for v in value.data]
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, reveal=reveal) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, reveal=reveal) for v in value]
    return value


def echo_json(value: Any, *, reveal: bool = False) -> None:
    """Print ``value`` as one JSON document (one line) on stdout."""
    click.echo(json.dumps(jsonable(value, reveal=reveal), ensure_ascii=False))


# ---------------------------------------------------------------------------- rich output


def console() -> Console:
    """A rich console on the current stdout (read at call time, so CliRunner captures it)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def err_console() -> Console:
    """A rich console on stderr (notes, progress); long lines are not wrapped, so that a path
    or a URL stays whole for whoever reads the line."""
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def table(title: str | None, *columns: str, **kw: Any) -> Listing:
    """A table in the house style: ``"name:right"`` is right-aligned, ``"name:keep"`` (ids,
    IPs, URLs) is never folded across lines (see :mod:`._tables`); print it with :func:`show`."""
    return listing(title, *columns, **kw)


def iso(value: datetime) -> str:
    """``2026-04-22T14:30:00Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def when(value: Any) -> str:
    """A timestamp for a table: ``2026-04-22 14:30 UTC`` (``-`` for none)."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: Any) -> str:
    """``26843545600`` → ``25.0 GiB`` (Proxaro's plans count a GB as 2**30 bytes)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: float, width: int = 30, style: str = "cyan") -> Text:
    """A horizontal bar ``width`` cells wide, filled to ``fraction`` (eighth-cell precision)."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    cells = "█" * full + (_EIGHTHS[part] if part else "")
    return Text(cells.ljust(width), style=style)


def dash(value: Any) -> str:
    """``-`` for ``None``, else ``str(value)``."""
    return "-" if value is None else str(value)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops the command like Ctrl+C does: servers close their ports
    and temporary files go (a service manager or a test stops long-running commands so)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- errors


def error_line(exc: BaseException) -> str:
    """The one line a failure prints (without the ``Error:`` prefix); never a secret."""
    if isinstance(exc, APIError):
        text = exc.message
        bits = []
        if exc.status is not None:
            bits.append(f"HTTP {exc.status}")
        if exc.code:
            bits.append(exc.code)
        if exc.request_id:
            bits.append(f"request {exc.request_id}")
        if bits:
            text += f" ({', '.join(bits)})"
    elif isinstance(exc, ConfigurationError):
        text = str(exc)
        for param, option in _PARAM_TO_OPTION.items():
            # The client's messages name its arguments; a CLI user typed the options.
            if exc.param == param and text.startswith(f"{param} "):
                text = option + text[len(param) :]
    elif isinstance(exc, ProxaroError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    # One line, whatever the message carried (httpx messages sometimes span several).
    return " ".join(text.split())


#: The exit code of a usage error (click's, and gh's): bad options, refused values.
USAGE_ERROR = 2


class CommandError(click.ClickException):
    """A failure the CLI itself reports (bad combination of options, unreachable target...)."""


class ProxaroGroup(click.Group):
    """The command group; its ``main`` turns every failure into one line and an exit code."""

    #: Set by ``--debug``: let unexpected exceptions show their traceback.
    debug = False

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command; report failures as ``Error: ...`` on stderr."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        type(self).debug = False
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.exceptions.NoArgsIsHelpError as exc:
            # A bare group (`proxaro-scrape`, `proxaro-scrape webhooks`) asks what it can do:
            # its help, on stdout, and success, as gh and git answer.
            click.echo(
                exc.ctx.get_help() if exc.ctx is not None else self.get_help(click.Context(self))
            )
            sys.exit(0)
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"Error: {' '.join(exc.format_message().split())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except (ProxaroError, OSError) as exc:
            if type(self).debug:
                raise
            click.echo(f"Error: {error_line(exc)}", err=True)
            # Input refused before anything was sent is a usage error, wherever it was caught.
            sys.exit(USAGE_ERROR if isinstance(exc, ConfigurationError) else 1)
        except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
            if type(self).debug:
                raise
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {error_line(exc)} "
                "(run with --debug for the traceback)",
                err=True,
            )
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)
