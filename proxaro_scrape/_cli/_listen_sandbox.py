"""``webhooks listen --sandbox``: receive a local sandbox's events, as ``stripe listen`` does.

The sandbox delivers over HTTPS and trusts only its own CA, and its API takes only HTTPS
endpoint URLs on loopback.  So the listener, pointed at a sandbox by ``--base-url`` (or
``PROXARO_BASE_URL``):

1. asks the sandbox for a server certificate signed by its CA
   (``POST /_sandbox/server_cert``, :mod:`proxaro_scrape.sandbox._tls`; loopback names only);
2. registers ``https://<host>:<port><path>`` for every event (``POST /v1/webhooks``), or, when
   an endpoint with that URL is already registered (a previous run on the same port), gives
   it a new secret (``POST /v1/webhooks/{id}/rotate``): the API has no delete, and a secret is
   shown only when made;
3. verifies deliveries with that secret, which it never prints.

Only a loopback API is accepted: a real Proxaro neither issues certificates nor can reach a
port on this machine.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from proxaro_scrape._cli._common import CLIConfig
from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import Proxaro
from proxaro_scrape.errors import ProxaroError

__all__ = [
    "LABEL",
    "free_port",
    "register_listener",
    "sandbox_listener",
    "sandbox_origin",
    "sandbox_server_context",
]

#: The label of the endpoints this command registers.
LABEL = "proxaro-scrape webhooks listen"
_TIMEOUT = 10.0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def sandbox_origin(base_url: str) -> str:
    """``scheme://host:port`` of a loopback sandbox API; a usage error for anything else."""
    parts = urlsplit(base_url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise click.BadParameter(
            f"--sandbox needs the sandbox's API URL as --base-url (http://127.0.0.1:PORT, "
            f"printed by `proxaro-scrape sandbox`), not {base_url!r}",
            param_hint="'--sandbox'",
        )
    if not _loopback(parts.hostname):
        raise click.BadParameter(
            f"--sandbox needs a local sandbox; the API at {parts.hostname} is not on loopback "
            "(a real Proxaro reaches only a public HTTPS URL: use --cert/--key behind it)",
            param_hint="'--sandbox'",
        )
    shown = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{shown}:{port}"


def sandbox_server_context(origin: str, host: str) -> ssl.SSLContext:
    """A server TLS context with a certificate for ``host`` from the sandbox CA at ``origin``."""
    hosts = sorted({host, "127.0.0.1", "localhost"})
    try:
        with httpx.Client(timeout=_TIMEOUT, trust_env=False) as http:
            resp = http.post(f"{origin}/_sandbox/server_cert", json={"hosts": hosts})
    except httpx.HTTPError as exc:
        raise ProxaroError(f"could not reach the sandbox at {origin}: {exc}") from None
    if resp.status_code == 404:
        raise ProxaroError(
            f"{origin} issues no certificates: is it a proxaro-scrape sandbox (of this version)?"
        )
    if resp.status_code != 200:
        raise ProxaroError(f"the sandbox refused a certificate (HTTP {resp.status_code})")
    answer: dict[str, Any] = resp.json()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # ssl loads a chain from files only: a private directory, gone once the chain is loaded.
    with tempfile.TemporaryDirectory(prefix="proxaro-listen-") as tmp:
        pem = Path(tmp) / "server.pem"
        pem.touch(mode=0o600)
        pem.write_text(answer["key_pem"] + answer["cert_pem"], encoding="ascii")
        ctx.load_cert_chain(str(pem))
    return ctx


def free_port(host: str) -> int:
    """A port free on ``host`` now (the endpoint URL must name it before the server starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])


def register_listener(client: Proxaro, url: str) -> tuple[str, Secret]:
    """``(webhook id, secret)`` of an endpoint for ``url`` receiving every event."""
    for hook in client.webhooks.list():
        if hook.url == url:
            rotated = client.webhooks.rotate_secret(hook.id)
            if rotated.secret is None:
                raise ProxaroError(f"the API gave webhook {hook.id} no new secret")
            return hook.id, _secret(rotated.secret)
    made = client.webhooks.create(url, ["*"], label=LABEL)
    if made.secret is None:
        raise ProxaroError("the API registered the endpoint without a secret")
    return made.id, _secret(made.secret)


def sandbox_listener(
    cfg: CLIConfig, host: str, port: int, path: str | None, given: dict[str, bool]
) -> tuple[int, list[Secret], ssl.SSLContext, str]:
    """Set ``webhooks listen --sandbox`` up: ``(port, secrets, TLS context, note to print)``.

    ``given`` says which options that the sandbox replaces were passed (a usage error).
    """
    clash = [name for name, passed in given.items() if passed]
    if clash:
        raise click.UsageError(
            f"--sandbox takes the certificate and the secret from the sandbox: drop {clash[0]}"
        )
    if not _loopback(host):
        raise click.BadParameter(
            f"the sandbox delivers only to loopback; listen on 127.0.0.1, not {host!r}",
            param_hint="'--host'",
        )
    with cfg.session() as client:
        origin = sandbox_origin(client.base_url)
        ctx = sandbox_server_context(origin, host)
        port = port or free_port(host)
        shown = f"[{host}]" if ":" in host else host
        url = f"https://{shown}:{port}{path or '/'}"
        hook_id, secret = register_listener(client, url)
    return port, [secret], ctx, f"Registered {hook_id} for every event of the sandbox at {origin}"


def _secret(value: Any) -> Secret:
    return value if isinstance(value, Secret) else Secret(str(value))
