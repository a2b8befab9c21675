"""``POST /_sandbox/server_cert``: a server certificate from the sandbox CA, for loopback only.

The sandbox delivers webhooks over HTTPS and trusts only its own CA (as Proxaro trusts only the
public ones).  A receiver running in this process gets a certificate with
:meth:`Sandbox.server_ssl_context`; one in another process (``proxaro-scrape webhooks listen
--sandbox``, as ``stripe listen`` is to Stripe) asks this control for one instead.

Body ``{"hosts": ["127.0.0.1", "localhost"]}`` (the default) → ``{"hosts", "cert_pem",
"key_pem", "ca_pem"}``: a fresh key and a certificate for exactly those names, signed by the
sandbox CA.  Only loopback names are issued (``localhost``, 127.0.0.0/8, ``::1``; at most 8),
and only to a caller on loopback: the CA is trusted by nothing but the sandbox's own deliverer
and clients, and a certificate it issues can name nothing a browser or another machine would
reach.  The private key is the new certificate's, never the CA's.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from aiohttp import web

__all__ = ["MAX_HOSTS", "PATH", "add_cert_route", "is_loopback_name"]

PATH = "/_sandbox/server_cert"
#: The most names one certificate may carry.
MAX_HOSTS = 8
_DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def is_loopback_name(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ``::1``); no name is resolved."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # Python 3.13 counts ::ffff:127.0.0.1 as loopback, older ones do not: refused on every
        # version, so the sandbox answers the same everywhere.
        return False
    return address.is_loopback


def add_cert_route(app: web.Application, ca: Any) -> None:
    """Serve ``POST /_sandbox/server_cert`` on ``app`` with ``ca`` (a ``trustme.CA``)."""

    async def server_cert(request: web.Request) -> web.Response:
        if not is_loopback_name(request.remote or ""):
            return _refusal("the sandbox issues certificates to loopback callers only", None, 403)
        raw = await request.read()
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError):
            return _refusal("the body is not valid JSON", None)
        if not isinstance(body, dict) or set(body) - {"hosts"}:
            return _refusal("the body is an object with at most 'hosts'", "hosts")
        hosts = body.get("hosts", list(_DEFAULT_HOSTS))
        if (
            not isinstance(hosts, list)
            or not 1 <= len(hosts) <= MAX_HOSTS
            or not all(isinstance(h, str) for h in hosts)
        ):
            return _refusal(f"'hosts' is a list of 1 to {MAX_HOSTS} host names", "hosts")
        refused = [h for h in hosts if not is_loopback_name(h)]
        if refused:
            return _refusal(
                f"only loopback names are issued (localhost, 127.0.0.0/8, ::1), not {refused[0]!r}",
                "hosts",
            )
        cert = ca.issue_cert(*hosts)
        return web.json_response(
            {
                "hosts": hosts,
                "cert_pem": "".join(blob.bytes().decode("ascii") for blob in cert.cert_chain_pems),
                "key_pem": cert.private_key_pem.bytes().decode("ascii"),
                "ca_pem": ca.cert_pem.bytes().decode("ascii"),
            }
        )

    app.router.add_post(PATH, server_cert)


def _refusal(message: str, param: str | None, status: int = 400) -> web.Response:
    # The controls' error shape (controls.py), so one client reads both.
    error = {"type": "invalid_request", "code": "invalid_control", "message": f"{PATH}: {message}"}
    return web.json_response({"error": {**error, "param": param}}, status=status)
