"""Account commands: status, account, usage, orders, plans, credentials, rotate, sessions,
countries, asns.  Each is one or two REST calls and a table (or ``--json``)."""

from __future__ import annotations

import itertools
import os
import sys
import time
from typing import Any

import click

from proxaro_scrape import protocol
from proxaro_scrape._cli._common import (
    ENV_API_KEY,
    CLIConfig,
    bar,
    command,
    console,
    dash,
    echo_json,
    human_bytes,
    iso,
    pass_config,
    reveal_option,
    table,
    when,
)
from proxaro_scrape._cli._tables import Fields, show
from proxaro_scrape._secrets import Secret
from proxaro_scrape.api import _validate
from proxaro_scrape.errors import ConfigurationError

__all__ = ["COMMANDS"]


def _grid(title: str, rows: list[tuple[str, Any]]) -> Fields:
    # One field per line, values never folded: ids, hosts and passwords are copied from here.
    return Fields(title, [(n, v if not isinstance(v, (int, float)) else str(v)) for n, v in rows])


@command("status")
@pass_config
def status(cfg: CLIConfig, as_json: bool) -> None:
    """Is the API up, which key is in use, how much of the rate limit is left."""
    with cfg.session(need_key=False) as client:
        started = time.perf_counter()
        st = client.status()
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        account = client.account.get() if client.has_key else None
        key = cfg.api_key if cfg.api_key is not None else os.environ.get(ENV_API_KEY)
        rl = client.rate_limit
        data = {
            "base_url": client.base_url,
            "api_version": client.api_version,
            "status": st.status,
            "latency_ms": latency_ms,
            "api_key": str(Secret(key)) if client.has_key and key else None,
            "mode": ("test" if client.is_test else "live") if client.has_key else None,
            "account": account.id if account is not None else None,
            "plan": account.plan.id if account is not None and account.plan else None,
            "rate_limit": (
                {
                    "limit": rl.limit,
                    "remaining": rl.remaining,
                    "reset": iso(rl.reset) if rl.reset is not None else None,
                }
                if rl is not None
                else None
            ),
        }
    if as_json:
        echo_json(data)
        return
    rows: list[tuple[str, Any]] = [
        ("API", f"{data['base_url']} (v1, {data['api_version']})"),
        ("status", f"[green]{data['status']}[/] in {latency_ms} ms"),
    ]
    if account is None:
        rows.append(("key", f"none (pass --api-key or set {ENV_API_KEY})"))
    else:
        rows.append(("key", f"{data['api_key']} ({data['mode']})"))
        rows.append(("account", f"{account.id} ({account.email})"))
        rows.append(("plan", dash(data["plan"])))
    if rl is not None:
        rows.append(("rate limit", f"{dash(rl.remaining)} of {dash(rl.limit)} left this minute"))
    show(_grid("Proxaro API", rows))


@command("account")
@pass_config
def account(cfg: CLIConfig, as_json: bool) -> None:
    """The account tied to the key, with its plan."""
    with cfg.session() as client:
        acct = client.account.get()
    if as_json:
        echo_json(acct)
        return
    plan = acct.plan
    rows: list[tuple[str, Any]] = [
        ("id", acct.id),
        ("email", dash(acct.email)),
        ("created", when(acct.created_at)),
    ]
    if plan is not None:
        rows += [
            ("plan", f"{plan.name} ({plan.id}), {plan.status}"),
            ("period ends", when(plan.current_period_end)),
        ]
    show(_grid("Account", rows))


def _period(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # Checked while parsing, so that a bad month is a usage error (exit 2) like a bad choice.
    try:
        return _validate.period(value)
    except ConfigurationError:
        raise click.BadParameter(
            f"{value!r} is not current, previous or a month YYYY-MM (01..12)"
        ) from None


@command("usage")
@click.option(
    "--period",
    default=None,
    callback=_period,
    help="current (default), previous, or a month YYYY-MM.",
)
@click.option(
    "--group-by",
    type=click.Choice(["class", "country"]),
    default=None,
    help="Break down by exit class (default) or by country.",
)
@pass_config
def usage(cfg: CLIConfig, as_json: bool, period: str | None, group_by: str | None) -> None:
    """Bandwidth used in a billing period: a bar chart by exit class or country."""
    with cfg.session() as client:
        u = client.usage.get(period=period, group_by=group_by)
    if as_json:
        echo_json(u)
        return
    out = console()
    total = u.total_bytes or 0
    head = f"Usage {when(u.period_start)[:10]} → {when(u.period_end)[:10]}: {human_bytes(total)}"
    if u.cap_bytes:
        frac = total / u.cap_bytes
        style = "green" if frac < 0.8 else "yellow" if frac < 1 else "red"
        out.print(f"[bold]{head}[/] of {human_bytes(u.cap_bytes)} ({frac:.1%})")
        out.print(bar(frac, 40, style))
    else:
        out.print(f"[bold]{head}[/]")
    key = "country" if group_by == "country" else "exit_class"
    rows = sorted(u.breakdown or [], key=lambda b: b.bytes or 0, reverse=True)
    biggest = max((b.bytes or 0 for b in rows), default=0)
    t = table(None, "country" if key == "country" else "exit class", "used:right", "share:right")
    t.add_column("", no_wrap=True)
    for b in rows:
        n = b.bytes or 0
        share = n / total if total else 0.0
        t.add_row(
            dash(getattr(b, key, None)),
            human_bytes(n),
            f"{share:.1%}",
            bar(n / biggest if biggest else 0.0, 30),
        )
    out.print(t)


def stdin_is_terminal() -> bool:
    """Whether a prompt can be answered (a test replaces this)."""
    return sys.stdin.isatty()


def _first(iterable: Any, limit: int) -> list[Any]:
    return list(itertools.islice(iterable, limit))


@command("orders")
@click.option(
    "--status",
    "order_status",
    type=click.Choice(list(_validate.ORDER_STATUSES)),
    default=None,
    help="Only orders in this status.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=25, show_default=True, help="Orders to show."
)
@pass_config
def orders(cfg: CLIConfig, as_json: bool, order_status: str | None, limit: int) -> None:
    """Orders on the account, newest first."""
    per_page = min(limit, _validate.ORDERS_MAX_LIMIT)
    with cfg.session() as client:
        items = _first(client.orders.list(status=order_status, limit=per_page), limit)
    if as_json:
        echo_json(items)
        return
    t = table(
        f"Orders ({len(items)})",
        "id:keep",
        "plan",
        "amount:right",
        "status",
        "paid with",
        "created",
    )
    colour = {"paid": "green", "pending": "yellow", "cancelled": "red", "expired": "dim"}
    for o in items:
        amount = f"${o.amount_usd:,.2f}" if isinstance(o.amount_usd, float) else "-"
        st = dash(o.status)
        t.add_row(
            o.id,
            dash(o.plan_id),
            amount,
            f"[{colour.get(st, 'white')}]{st}[/]",
            dash(o.payment_method),
            when(o.created_at),
        )
    show(t)


@command("plans")
@pass_config
def plans(cfg: CLIConfig, as_json: bool) -> None:
    """The public plan catalogue (no key needed)."""
    with cfg.session(need_key=False) as client:
        items = client.plans.list()
    if as_json:
        echo_json(items)
        return
    t = table("Plans", "id:keep", "name", "price / month:right", "bandwidth:right")
    for p in items:
        price = f"${p.price_usd:,.0f}" if p.price_usd is not None else "custom"
        gb = f"{p.bandwidth_gb:g} GB" if p.bandwidth_gb is not None else "custom"
        t.add_row(p.id, dash(p.name), price, gb)
    show(t)


@command("credentials")
@reveal_option("gateway password")
@pass_config
def credentials(cfg: CLIConfig, as_json: bool, reveal: bool) -> None:
    """The gateway credentials your scrapers use (password masked unless --reveal)."""
    with cfg.session() as client:
        cred = client.credentials.get()
    if as_json:
        echo_json(cred, reveal=reveal)
        return
    password = cred.password
    shown = password.reveal() if reveal and password is not None else str(password)
    used, cap = cred.bandwidth_gb_used, cred.bandwidth_gb_cap
    rows: list[tuple[str, Any]] = [
        ("id", cred.id),
        ("gateway", f"{cred.gateway}:{cred.port}"),
        ("username", cred.username),
        ("password", shown),
        ("bandwidth", f"{dash(used)} of {dash(cap)} GB"),
        ("expires", when(cred.expires_at)),
    ]
    if cred.rotated_at is not None:
        rows.append(("rotated", when(cred.rotated_at)))
    show(_grid("Gateway credentials", rows))


@command("rotate")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@reveal_option("new gateway password")
@pass_config
def rotate(cfg: CLIConfig, as_json: bool, yes: bool, reveal: bool) -> None:
    """Rotate the gateway password (the old one keeps working for 60 seconds)."""
    if not yes and not stdin_is_terminal():
        # No one to answer a prompt: say how to go on instead of reading an empty stdin.
        raise click.UsageError(
            "rotate asks for confirmation, and stdin is not a terminal: pass --yes to rotate "
            "without asking"
        )
    with cfg.session() as client:
        if not yes:
            click.confirm(
                "Rotate the gateway password? Scrapers using the old one must pick up the new "
                f"one within {protocol.ROTATION_GRACE_SECONDS:g} seconds",
                abort=True,
                err=True,
            )
        rotated = client.credentials.rotate()
    if as_json:
        echo_json(rotated, reveal=reveal)
        return
    password = rotated.password
    shown = password.reveal() if reveal and password is not None else str(password)
    show(
        _grid(
            "Gateway password rotated",
            [
                ("id", rotated.id),
                ("rotated", when(rotated.rotated_at)),
                ("password", shown),
                (
                    "old password",
                    f"accepted for {protocol.ROTATION_GRACE_SECONDS:g} more seconds",
                ),
            ],
        )
    )


@command("sessions")
@click.option(
    "--exit-class",
    type=click.Choice(list(protocol.EXIT_CLASSES)),
    default=None,
    help="Only sessions of this exit class.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Sessions to show."
)
@pass_config
def sessions(cfg: CLIConfig, as_json: bool, exit_class: str | None, limit: int) -> None:
    """Recent gateway sessions (last 24 hours; observability, not billing)."""
    per_page = min(limit, _validate.SESSIONS_MAX_LIMIT)
    with cfg.session() as client:
        items = _first(client.sessions.list(exit_class=exit_class, limit=per_page), limit)
    if as_json:
        echo_json(items)
        return
    t = table(
        f"Gateway sessions ({len(items)})",
        "id:keep",
        "started",
        "exit ip:keep",
        "class",
        "country",
        "asn",
        "sent:right",
        "received:right",
    )
    for s in items:
        t.add_row(
            s.id,
            when(s.started_at),
            dash(s.exit_ip),
            dash(s.exit_class),
            dash(s.exit_country),
            dash(s.exit_asn),
            human_bytes(s.bytes_sent),
            human_bytes(s.bytes_recv),
        )
    show(t)


def _health(value: Any) -> str:
    colour = {"healthy": "green", "degraded": "yellow", "down": "red"}.get(str(value), "white")
    return f"[{colour}]{dash(value)}[/]"


@command("countries")
@pass_config
def countries(cfg: CLIConfig, as_json: bool) -> None:
    """Countries with live coverage, their exit classes and pool health."""
    with cfg.session() as client:
        items = client.countries.list()
    if as_json:
        echo_json(items)
        return
    t = table(
        f"Countries ({len(items)})",
        "code:keep",
        "name",
        "continent",
        "exit classes",
        "cities:right",
        "pool size:right",
        "health",
    )
    for c in items:
        size = c.estimated_pool_size
        t.add_row(
            dash(c.code),
            dash(c.name),
            dash(c.continent),
            ", ".join(c.exit_classes or []),
            dash(c.cities_available),
            f"{size:,}" if isinstance(size, int) else "-",
            _health(c.pool_health),
        )
    show(t)


@command("asns")
@click.argument("code")
@pass_config
def asns(cfg: CLIConfig, as_json: bool, code: str) -> None:
    """ASNs sizeable in country CODE (Growth plan and above)."""
    with cfg.session() as client:
        items = client.countries.asns(code)
    if as_json:
        echo_json(items)
        return
    t = table(f"ASNs in {code.lower()} ({len(items)})", "asn:keep", "org", "exit class", "health")
    for a in items:
        t.add_row(dash(a.asn), dash(a.org), dash(a.exit_class), _health(a.pool_health))
    show(t)


COMMANDS = (
    status,
    account,
    usage,
    orders,
    plans,
    credentials,
    rotate,
    sessions,
    countries,
    asns,
)
