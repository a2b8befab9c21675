"""``proxy-url`` and ``check``: the gateway, through the :class:`GatewayManager`.

Both build their routes with the manager (and so with :class:`Target`, the one encoder of the
username grammar): the CLI never writes ``-country-us`` itself.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from proxaro_scrape import protocol
from proxaro_scrape._cli._common import (
    CLIConfig,
    CommandError,
    command,
    console,
    dash,
    echo_json,
    err_console,
    error_line,
    pass_config,
    reveal_option,
    table,
)
from proxaro_scrape._cli._tables import show
from proxaro_scrape.api import Proxaro
from proxaro_scrape.errors import ProxaroError, TargetError
from proxaro_scrape.gateway import GatewayManager, Target
from proxaro_scrape.gateway.outcome import Outcome

__all__ = ["COMMANDS"]

_BODY_SHOWN = 4000


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The targeting options, named after :class:`Target`'s fields."""
    for opt in reversed(
        (
            click.option("--country", default=None, help="Exit country (ISO code, e.g. us)."),
            click.option("--city", default=None, help="Exit city (needs --country)."),
            click.option(
                "--asn", default=None, help="Exit ASN, e.g. 7922 (needs --country; Growth+)."
            ),
            click.option(
                "--exit-class",
                type=click.Choice(list(protocol.EXIT_CLASSES)),
                default=None,
                help="Exit class.",
            ),
            click.option(
                "--session", default=None, help="Sticky session id: the same exit while it lives."
            ),
            click.option(
                "--session-ttl",
                type=click.IntRange(protocol.MIN_SESSTIME_MINUTES, protocol.MAX_SESSTIME_MINUTES),
                default=None,
                help="Sticky session lifetime in minutes (1..1440; needs --session).",
            ),
        )
    ):
        fn = opt(fn)
    return fn


def build_target(
    country: str | None,
    city: str | None,
    asn: str | None,
    exit_class: str | None,
    session: str | None,
    session_ttl: int | None,
) -> Target:
    """The :class:`Target` of the options (syntax checked here, before any request)."""
    if asn is not None and asn[:2].upper() == "AS" and asn[2:].isdigit():
        asn = asn[2:]  # `proxaro-scrape asns` lists them as AS7922
    try:
        return Target(
            country=country.lower() if country else country,
            city=city,
            asn=asn,
            exit_class=exit_class,
            session=session,
            session_ttl=session_ttl,
        )
    except TargetError as exc:
        # Target's messages name its fields; the user typed options.
        option = "--" + (exc.param or "target").replace("_", "-")
        raise TargetError(f"{option}: {exc}", param=exc.param) from None


def target_dict(target: Target) -> dict[str, Any]:
    """The target's fields that are set."""
    fields = {
        "country": target.country,
        "city": target.city,
        "asn": target.asn,
        "exit_class": target.exit_class,
        "session": target.session,
        "session_ttl": target.session_ttl,
    }
    return {k: v for k, v in fields.items() if v is not None}


@contextlib.contextmanager
def started_manager(client: Proxaro) -> Iterator[GatewayManager]:
    """A manager for one command: credentials and pool view fetched, and no background driver.

    ``start()`` costs three API calls (credentials, countries, usage); a target that names an
    ASN costs one more, the country's ASN listing, which ``check_target`` fetches.  The
    background driver that would keep them fresh has nothing to do in a one-shot command, so it
    is stopped at once; the routing state stays, and a 407 still refreshes the credentials
    through ``client``.
    """
    mgr = GatewayManager(
        client=client,
        pool_ttl=None,
        usage_poll_interval=None,
        credentials_poll_interval=3600.0,
    )
    mgr.start()
    mgr.close()
    yield mgr


@command("proxy-url")
@target_options
@reveal_option("gateway password")
@pass_config
def proxy_url(
    cfg: CLIConfig,
    as_json: bool,
    country: str | None,
    city: str | None,
    asn: str | None,
    exit_class: str | None,
    session: str | None,
    session_ttl: int | None,
    reveal: bool,
) -> None:
    """The gateway URL for a target, for any HTTP client's proxy setting.

    \b
    export HTTPS_PROXY="$(proxaro-scrape proxy-url --country de --reveal)"
    """
    target = build_target(country, city, asn, exit_class, session, session_ttl)
    with cfg.session() as client, started_manager(client) as mgr:
        # The manager checks the target against the pool view (a country it does not have,
        # an exit class that country lacks, an ASN the plan or the country lacks: one more
        # call then, for the country's ASN listing) and encodes the username.
        target = mgr.check_target(target)
        route = mgr.request("http://proxy-url.invalid/", target).next_route()
        url = route.proxy_url if reveal else route.proxy_url_masked
        data = {
            "proxy_url": url,
            "username": route.username,
            "gateway": route.gateway_host,
            "port": route.gateway_port,
            "target": target_dict(target),
        }
    if as_json:
        echo_json(data)
        return
    click.echo(url)
    if not reveal:
        err_console().print("(password masked: pass --reveal to use the URL)")


def _with_default_path(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # past 65535, or not digits: httpx would reach some other port
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            f"{url!r} is not an http:// or https:// URL with a host", param_hint="'--url'"
        )
    if port is not None and not 1 <= port <= 65535:
        raise click.BadParameter(f"{url!r} has no port from 1 to 65535", param_hint="'--url'")
    if parts.path == "":
        # A bare site address: its /ip page echoes the exit (the sandbox's demo site does).
        return url + "/ip"
    return url


class _Seen:
    """Response heads httpx read for one attempt, via its trace hook: for HTTPS the CONNECT
    answer (where the gateway puts X-Proxaro-Exit-*), then the site's."""

    def __init__(self) -> None:
        self.heads: list[tuple[int, list[tuple[bytes, bytes]]]] = []

    def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith("receive_response_headers.complete"):
            _version, status, _reason, headers = info["return_value"]
            self.heads.append((int(status), list(headers)))

    def gateway_headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for _status, headers in self.heads:
            for k, v in headers:
                name = k.decode("latin-1")
                if name.lower().startswith("x-proxaro-"):
                    out[name] = v.decode("latin-1")
        return out


def _attempt(
    url: str, proxy: str, verify: ssl.SSLContext | bool, timeout: float
) -> tuple[httpx.Response | None, _Seen, BaseException | None]:
    seen = _Seen()
    try:
        with httpx.Client(proxy=proxy, verify=verify, timeout=timeout, trust_env=False) as http:
            resp = http.get(url, extensions={"trace": seen})
            resp.read()
    except httpx.HTTPError as exc:
        return None, seen, exc
    return resp, seen, None


def _cert_failure(exc: BaseException) -> str | None:
    """The verification error somewhere in ``exc``'s chain, if that is what failed."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or str(cur)
        if "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return "certificate verify failed"
        cur = cur.__cause__ or cur.__context__
    return None


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


@command("check")
@click.option(
    "--url",
    required=True,
    help="URL to fetch through the gateway; a bare site address gets /ip appended "
    "(the sandbox demo site's echo of the exit).",
)
@target_options
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA bundle (PEM) to verify an HTTPS site with (e.g. the sandbox's ca_cert).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds per attempt.",
)
@pass_config
def check(
    cfg: CLIConfig,
    as_json: bool,
    url: str,
    country: str | None,
    city: str | None,
    asn: str | None,
    exit_class: str | None,
    session: str | None,
    session_ttl: int | None,
    ca_cert: str | None,
    request_timeout: float,
) -> None:
    """One request through the gateway: which exit carried it, where, and the answer."""
    url = _with_default_path(url)
    target = build_target(country, city, asn, exit_class, session, session_ttl)
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=ca_cert) if ca_cert is not None else True
    )
    passwords: set[str] = set()
    attempts: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        with cfg.session() as client, started_manager(client) as mgr:
            rr = mgr.request(url, mgr.check_target(target))
            while True:
                route = rr.next_route()  # AttemptsExhaustedError when the budget is spent
                passwords.add(route.password.reveal())
                resp, seen, exc = _attempt(url, route.proxy_url, verify, request_timeout)
                if exc is not None and _cert_failure(exc):
                    # Deterministic: another exit would meet the same certificate.
                    raise CommandError(
                        f"the site's TLS certificate did not verify ({_cert_failure(exc)}); "
                        "pass --ca-cert with the CA that signed it (the sandbox prints ca_cert)"
                    )
                outcome: Outcome
                if resp is not None:
                    headers = dict(resp.headers)
                    headers.update(seen.gateway_headers())
                    outcome = rr.observe(
                        status=resp.status_code, headers=headers, body=resp.content
                    )
                elif seen.heads and seen.heads[0][0] != 200:
                    # A refused CONNECT: classify the gateway's own answer, not httpx's error.
                    outcome = rr.observe(status=seen.heads[0][0], headers=seen.gateway_headers())
                else:
                    outcome = rr.observe(exception=exc)
                attempts.append(
                    {
                        "attempt": route.attempt,
                        "target": target_dict(route.target),
                        "session": route.session_id,
                        "outcome": outcome.kind,
                        "status": outcome.status,
                    }
                )
                if outcome.ok and resp is not None:
                    break
                if not outcome.retry:
                    if outcome.error is not None:
                        raise outcome.error
                    raise CommandError(
                        f"the request failed: {outcome.kind}"
                        + (f" ({type(exc).__name__}: {exc})" if exc is not None else "")
                    )
                if outcome.refresh:
                    mgr.refresh_credentials(route.credentials_version)
    except (ProxaroError, click.ClickException) as exc:
        # Whatever a lower layer put into a message, no gateway password leaves this command.
        text = exc.format_message() if isinstance(exc, click.ClickException) else error_line(exc)
        for pw in passwords:
            if pw:
                text = text.replace(pw, "****")
        raise CommandError(text) from exc
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    ex = outcome.exit
    exit_data = {
        "ip": ex.ip if ex else None,
        "country": ex.country if ex else None,
        "asn": ex.asn if ex else None,
        "exit_class": ex.exit_class if ex else None,
        "session": ex.session if ex else None,
    }
    body = _body(resp)
    data = {
        "url": url,
        "status": resp.status_code,
        "elapsed_ms": elapsed_ms,
        "target": target_dict(target),
        "exit": exit_data,
        "attempts": attempts,
        "body": body,
    }
    if as_json:
        echo_json(data)
        return
    out = console()
    n = len(attempts)
    out.print(
        f"[bold]GET {url}[/] → {resp.status_code} in {elapsed_ms:g} ms "
        f"({n} attempt{'s' if n != 1 else ''}; target {target.describe()})"
    )
    t = table("Exit", "ip:keep", "country", "asn:keep", "class", "session:keep")
    t.add_row(*(dash(exit_data[k]) for k in ("ip", "country", "asn", "exit_class", "session")))
    show(t)
    if n > 1:
        tried = table("Attempts", "#:right", "target:keep", "outcome", "status:right")
        for a in attempts:
            tried.add_row(
                str(a["attempt"]),
                " ".join(f"{k}={v}" for k, v in a["target"].items()) or "any",
                a["outcome"],
                dash(a["status"]),
            )
        show(tried)
    text = json.dumps(body, indent=2, ensure_ascii=False) if not isinstance(body, str) else body
    if len(text) > _BODY_SHOWN:
        text = text[:_BODY_SHOWN] + f"\n… ({len(text) - _BODY_SHOWN} more characters)"
    out.print("[bold]Body[/]")
    out.print(text, markup=False)


COMMANDS = (proxy_url, check)
