"""``allowlist list|add|remove`` and ``webhooks list|create|rotate|listen``."""

from __future__ import annotations

import importlib
import json
import os
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import click

from proxaro_scrape import protocol
from proxaro_scrape._cli._common import (
    CLIConfig,
    CommandError,
    api_options,
    command,
    console,
    dash,
    echo_json,
    err_console,
    jsonable,
    pass_config,
    reveal_option,
    sigterm_as_interrupt,
    table,
    when,
)
from proxaro_scrape._cli._listen_sandbox import sandbox_listener
from proxaro_scrape._cli._tables import show
from proxaro_scrape._secrets import Secret, check_secret_path, write_secret_file
from proxaro_scrape.api import Webhook

__all__ = ["COMMANDS"]

ENV_WEBHOOK_SECRET = "PROXARO_WEBHOOK_SECRET"


# ---------------------------------------------------------------------------- allowlist


@click.group("allowlist")
@api_options
def allowlist() -> None:
    """Source IPs allowed to use the gateway (empty: credentials alone suffice)."""


@command("list")
@pass_config
def allowlist_list(cfg: CLIConfig, as_json: bool) -> None:
    """The allowlisted addresses and networks."""
    with cfg.session() as client:
        items = client.allowlist.list()
    if as_json:
        echo_json(items)
        return
    if not items:
        console().print("The allowlist is empty: the gateway accepts credentials from anywhere.")
        return
    t = table(f"Allowlist ({len(items)})", "id:keep", "cidr:keep", "label", "created")
    for e in items:
        t.add_row(e.id, dash(e.cidr), dash(e.label), when(e.created_at))
    show(t)


@command("add")
@click.argument("cidr")
@click.option("--label", default=None, help="A note (at most 80 characters).")
@pass_config
def allowlist_add(cfg: CLIConfig, as_json: bool, cidr: str, label: str | None) -> None:
    """Allow CIDR (an address, or a network up to /24 IPv4 or /48 IPv6)."""
    with cfg.session() as client:
        entry = client.allowlist.add(cidr, label=label)
    if as_json:
        echo_json(entry)
        return
    console().print(
        f"Added {entry.cidr} as {entry.id}" + (f" ({entry.label})" if entry.label else "")
    )


@command("remove")
@click.argument("entry_id", metavar="ID")
@pass_config
def allowlist_remove(cfg: CLIConfig, as_json: bool, entry_id: str) -> None:
    """Remove the allowlist entry ID (al_...)."""
    with cfg.session() as client:
        deleted = client.allowlist.remove(entry_id)
    if as_json:
        echo_json(deleted)
        return
    console().print(f"Removed {deleted.id}")


for _cmd in (allowlist_list, allowlist_add, allowlist_remove):
    allowlist.add_command(_cmd)


# ---------------------------------------------------------------------------- webhooks


@click.group("webhooks")
@api_options
def webhooks() -> None:
    """Webhook endpoints: list, create, rotate a secret, or receive events here."""


def _check_secret_file(path: str | None) -> None:
    """Refuse a --secret-file that cannot be written safely, before the API is asked."""
    if path is not None:
        check_secret_path(path, param="--secret-file")


def _save_secret(hook: Webhook, path: str | None) -> None:
    """Write the signing secret to ``path`` (0600, atomically, never through a link)."""
    if path is None or hook.secret is None:
        return
    target = write_secret_file(path, hook.secret, param="--secret-file")
    err_console().print(f"Secret written to {target}")


def _json_note(hook: Webhook, reveal: bool, secret_file: str | None) -> None:
    """With --json and a masked secret, say on stderr how a script gets the real one."""
    if hook.secret is not None and not reveal and secret_file is None:
        err_console().print(
            "The secret in this JSON is masked and is shown only now: pass --reveal to have "
            "it in the JSON, or --secret-file PATH to have it written to a file (mode 0600)."
        )


def _show_hook(hook: Webhook, reveal: bool, title: str) -> None:
    secret = hook.secret
    shown = "-" if secret is None else secret.reveal() if reveal else str(secret)
    t = table(title, "id:keep", "url:keep", "events", "label", "secret:keep")
    t.add_row(hook.id, dash(hook.url), ", ".join(hook.events or []), dash(hook.label), shown)
    show(t)
    if secret is not None and not reveal:
        err_console().print(
            "The secret is shown only now: pass --reveal, or --secret-file PATH to save it."
        )


_secret_file_option = click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the signing secret to this file (mode 0600, replaced atomically; a symbolic "
    "link is refused).",
)


@command("list")
@pass_config
def webhooks_list(cfg: CLIConfig, as_json: bool) -> None:
    """Registered webhook endpoints (secrets are only shown on creation and rotation)."""
    with cfg.session() as client:
        items = client.webhooks.list()
    if as_json:
        echo_json(items)
        return
    if not items:
        console().print("No webhook endpoints.")
        return
    t = table(f"Webhooks ({len(items)})", "id:keep", "url:keep", "events", "label", "created")
    for h in items:
        t.add_row(h.id, dash(h.url), ", ".join(h.events or []), dash(h.label), when(h.created_at))
    show(t)


@command("create")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    help=f"An event to subscribe to (repeatable; default: all). One of: "
    f"{', '.join(protocol.WEBHOOK_EVENTS)}, *.",
)
@click.option("--label", default=None, help="A note (at most 80 characters).")
@reveal_option("signing secret")
@_secret_file_option
@pass_config
def webhooks_create(
    cfg: CLIConfig,
    as_json: bool,
    url: str,
    events: tuple[str, ...],
    label: str | None,
    reveal: bool,
    secret_file: str | None,
) -> None:
    """Register the HTTPS endpoint URL for events."""
    _check_secret_file(secret_file)
    with cfg.session() as client:
        hook = client.webhooks.create(url, list(events) or ["*"], label=label)
    _save_secret(hook, secret_file)
    if as_json:
        echo_json(hook, reveal=reveal)
        _json_note(hook, reveal, secret_file)
        return
    _show_hook(hook, reveal, "Webhook created")


@command("rotate")
@click.argument("webhook_id", metavar="ID")
@reveal_option("new signing secret")
@_secret_file_option
@pass_config
def webhooks_rotate(
    cfg: CLIConfig, as_json: bool, webhook_id: str, reveal: bool, secret_file: str | None
) -> None:
    """Give webhook ID (wh_...) a new signing secret."""
    _check_secret_file(secret_file)
    with cfg.session() as client:
        hook = client.webhooks.rotate_secret(webhook_id)
    _save_secret(hook, secret_file)
    if as_json:
        echo_json(hook, reveal=reveal)
        _json_note(hook, reveal, secret_file)
        return
    _show_hook(hook, reveal, "Webhook secret rotated")


def _server_context(
    host: str, cert: str | None, key: str | None, ca_out: str | None
) -> tuple[ssl.SSLContext, str | None, tempfile.TemporaryDirectory[str] | None]:
    """The TLS context to serve with: the given cert/key, or a fresh one from a new local CA.

    Returns the context, the path of the CA PEM senders must trust (when made here) and the
    temporary directory holding it (to clean up).
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
        return ctx, None, None
    if key is not None:
        raise CommandError("--key needs --cert")
    import trustme  # checked for by _require_server_modules

    ca = trustme.CA(organization_name="proxaro-scrape webhooks listen")
    names = {host, "localhost", "127.0.0.1", "::1"}
    ca.issue_cert(*sorted(names)).configure_cert(ctx)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if ca_out is None:
        tmp = tempfile.TemporaryDirectory(prefix="proxaro-webhooks-")
        ca_out = str(Path(tmp.name) / "ca.pem")
    ca.cert_pem.write_to_path(ca_out)
    return ctx, ca_out, tmp


def _require_server_modules(names: tuple[str, ...]) -> None:
    """Import ``names``; one missing is one error line naming the extra that brings it."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != name:
                raise  # one of its own dependencies: a broken install, not a missing extra
            raise CommandError(
                f'webhooks listen needs {name}: pip install "proxaro-scrape[sandbox]"'
            ) from None


def _describe(event: Any) -> str:
    """One line for an event: what happened, without any secret (events carry none)."""
    if event.order is not None:
        o = event.order
        return f"order {dash(o.id)} {dash(o.status)} ({dash(o.plan_id)})"
    if event.credentials is not None:
        return f"credentials {dash(event.credentials.id)} rotated"
    if event.usage is not None:
        u = event.usage
        return f"usage reached {u.threshold}%"
    if event.allowlist is not None:
        a = event.allowlist
        what = "removed" if a.deleted else a.action or "updated"
        return f"allowlist {dash(a.cidr)} {what}"
    return json.dumps(jsonable(dict(event.data)), ensure_ascii=False)[:200]


@webhooks.command("listen")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8443, show_default=True, help="0: any."
)
@click.option("--path", default=None, help="Only accept POSTs to this path (default: any).")
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    help=f"Signing secret (repeatable while rolling a rotation out; else {ENV_WEBHOOK_SECRET}).",
)
@click.option(
    "--cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate chain (PEM)."
)
@click.option(
    "--key",
    "keyfile",
    type=click.Path(exists=True, dir_okay=False),
    help="TLS private key (PEM; default: in --cert).",
)
@click.option(
    "--ca-out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Without --cert: where to write the self-made CA that senders must trust.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line.")
@click.option(
    "--sandbox",
    "to_sandbox",
    is_flag=True,
    help="The API (--base-url) is a local `proxaro-scrape sandbox`: take a certificate from it "
    "and register this listener for every event (no --secret, --cert or --ca-out).",
)
@api_options
@pass_config
def webhooks_listen(
    cfg: CLIConfig,
    host: str,
    port: int,
    path: str | None,
    secrets: tuple[str, ...],
    cert: str | None,
    keyfile: str | None,
    ca_out: str | None,
    as_json: bool,
    to_sandbox: bool,
) -> None:
    """Receive events over HTTPS here and print each verified one until Ctrl+C.

    With --sandbox, from a local sandbox: run `proxaro-scrape sandbox`, then
    `proxaro-scrape --api-key KEY --base-url URL webhooks listen --sandbox` with what it prints.
    """
    from proxaro_scrape.webhooks import listen

    # Checked before anything is printed: aiohttp serves, trustme makes a CA when no --cert.
    own_ca = cert is None and not to_sandbox
    _require_server_modules(("aiohttp", "trustme") if own_ca else ("aiohttp",))

    registered: str | None = None
    ca_path: str | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if to_sandbox:
        given = {"--secret": bool(secrets), "--cert": cert is not None}
        given.update({"--key": keyfile is not None, "--ca-out": ca_out is not None})
        port, held, ctx, registered = sandbox_listener(cfg, host, port, path, given)
    else:
        values = list(secrets) or (
            [os.environ[ENV_WEBHOOK_SECRET]] if os.environ.get(ENV_WEBHOOK_SECRET) else []
        )
        if not values:
            raise CommandError(f"no signing secret: pass --secret or set {ENV_WEBHOOK_SECRET}")
        held = [Secret(v) for v in values]
        ctx, ca_path, tmp = _server_context(host, cert, keyfile, ca_out)
    notes = err_console()
    lock = threading.Lock()

    def ready(url: str) -> None:
        if registered is not None:
            notes.print(registered)
        notes.print(f"Listening on {url}")
        if ca_path is not None:
            notes.print(f"Self-signed: senders must trust the CA in {ca_path}")
        notes.print("Press Ctrl+C to stop.")

    def on_event(event: Any) -> None:
        line = (
            json.dumps(jsonable(dict(event.payload)), ensure_ascii=False)
            if as_json
            else f"{when(event.created_at)}  {event.id}  {event.type}  {_describe(event)}"
        )
        with lock:
            click.echo(line)

    try:
        with sigterm_as_interrupt():
            listen(
                held,
                host=host,
                port=port,
                ssl_context=ctx,
                on_event=on_event,
                on_ready=ready,
                path=path,
            )
    finally:
        if tmp is not None:
            tmp.cleanup()


for _cmd in (webhooks_list, webhooks_create, webhooks_rotate):
    webhooks.add_command(_cmd)

COMMANDS = (allowlist, webhooks)
