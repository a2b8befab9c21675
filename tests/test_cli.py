"""The ``proxaro-scrape`` CLI against the sandbox: every command, its ``--json`` checked against
the sandbox's state, secrets masked unless ``--reveal``, and every failure one line on stderr.

Most commands run in-process through click's ``CliRunner`` (fast); the console script itself
runs in a subprocess for the error paths, ``sandbox --json``, ``webhooks listen`` and a couple
of ``--json`` reads, so the installed entry point is what is tested there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from click.testing import CliRunner, Result

from proxaro_scrape.cli import main
from proxaro_scrape.sandbox import Sandbox
from tests._support import refused_port

EXE = str(Path(sys.executable).with_name("proxaro-scrape"))
WRONG_KEY = "proxaro_test_" + "0" * 32


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROXARO_API_KEY", "PROXARO_BASE_URL", "PROXARO_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROXARO_") and "proxy" not in k.lower()
    }
    env.update(COLUMNS="200", **extra)
    return env


def cli(sb: Sandbox | None, *args: str, input: str | None = None, **env: str) -> Result:
    """Run the CLI in-process with the sandbox's key and URL as group options."""
    base = ["--api-key", sb.api_key, "--base-url", sb.api_url] if sb is not None else []
    return CliRunner(env={"COLUMNS": "200", **env}).invoke(main, [*base, *args], input=input)


def cli_json(sb: Sandbox | None, *args: str, input: str | None = None) -> Any:
    result = cli(sb, *args, "--json", input=input)
    assert result.exit_code == 0, result.stderr or result.output
    return json.loads(result.stdout)


def one_error_line(result: Result | subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The failure is exactly one ``Error: ...`` line on stderr, a non-zero exit, no traceback."""
    exit_code = result.exit_code if isinstance(result, Result) else result.returncode
    stderr = result.stderr
    assert exit_code == code, (exit_code, stderr)
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    assert result.stdout == ""
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secrets_of(sb: Sandbox) -> list[str]:
    return [sb.api_key, sb.world.credentials.password]


# ---------------------------------------------------------------------------- account


def test_status_reports_api_key_mode_and_rate_limit(sandbox: Sandbox) -> None:
    data = cli_json(sandbox, "status")
    assert data["status"] == "ok" and data["base_url"] == sandbox.api_url
    assert data["account"] == sandbox.world.account.id and data["plan"] == "growth"
    assert data["mode"] == "test"
    assert data["api_key"] != sandbox.api_key and data["api_key"].endswith(sandbox.api_key[-4:])
    assert data["rate_limit"]["limit"] > 0 and data["rate_limit"]["remaining"] >= 0
    text = cli(sandbox, "status")
    assert text.exit_code == 0 and "ok" in text.stdout
    assert sandbox.api_key not in text.stdout


def test_status_without_key_checks_only_the_api(sandbox: Sandbox) -> None:
    data = cli_json(None, "--base-url", sandbox.api_url, "status")
    assert data["status"] == "ok" and data["api_key"] is None and data["account"] is None


def test_key_and_base_url_from_environment_and_per_command(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXARO_API_KEY", sandbox.api_key)
    monkeypatch.setenv("PROXARO_BASE_URL", sandbox.api_url)
    assert cli_json(None, "account")["id"] == sandbox.world.account.id
    monkeypatch.delenv("PROXARO_API_KEY")
    monkeypatch.delenv("PROXARO_BASE_URL")
    per_command = cli_json(
        None, "account", "--api-key", sandbox.api_key, "--base-url", sandbox.api_url
    )
    assert per_command["id"] == sandbox.world.account.id


def test_account(sandbox: Sandbox) -> None:
    data = cli_json(sandbox, "account")
    world = sandbox.world.account
    assert data["object"] == "account" and data["id"] == world.id
    assert data["email"] == world.email and data["plan"]["id"] == world.plan_id
    text = cli(sandbox, "account")
    assert text.exit_code == 0 and world.id in text.stdout and "Growth" in text.stdout


def test_usage_by_class_and_country_with_a_bar_chart(sandbox: Sandbox) -> None:
    by_class = cli_json(sandbox, "usage")
    assert by_class["total_bytes"] == sandbox.world.used_bytes()
    assert by_class["cap_bytes"] == sandbox.world.cap_bytes()
    assert sum(b["bytes"] for b in by_class["breakdown"]) == by_class["total_bytes"]
    assert {b["exit_class"] for b in by_class["breakdown"]} >= {"residential", "isp"}
    by_country = cli_json(sandbox, "usage", "--group-by", "country")
    assert all("country" in b for b in by_country["breakdown"])
    assert sum(b["bytes"] for b in by_country["breakdown"]) == by_country["total_bytes"]
    previous = cli_json(sandbox, "usage", "--period", "previous")
    assert previous["period_start"] < by_class["period_start"]
    chart = cli(sandbox, "usage", "--group-by", "country")
    assert chart.exit_code == 0
    assert "█" in chart.stdout and "country" in chart.stdout and "GiB" in chart.stdout
    bad = cli(sandbox, "usage", "--period", "last-year")
    assert "period" in one_error_line(bad, code=2)  # a usage error, found after parsing


def test_orders_filter_limit_and_pages(sandbox: Sandbox) -> None:
    mine = [o for o in sandbox.world.orders if o.account_id == sandbox.world.account.id]
    world = sorted(mine, key=lambda o: o.created_at, reverse=True)
    first = cli_json(sandbox, "orders", "--limit", "5")
    assert [o["id"] for o in first] == [o.id for o in world[:5]]
    paid = cli_json(sandbox, "orders", "--status", "paid", "--limit", "1000")
    assert paid and all(o["status"] == "paid" for o in paid)
    assert len(paid) == sum(1 for o in world if o.status == "paid")
    # More than one page (100 per page at most): every order, once each.
    everything = cli_json(sandbox, "orders", "--limit", "1000")
    assert len(everything) == len(world) == len({o["id"] for o in everything})
    text = cli(sandbox, "orders", "--limit", "3")
    assert text.exit_code == 0 and world[0].id in text.stdout


def test_plans_need_no_key(sandbox: Sandbox) -> None:
    plans = cli_json(None, "--base-url", sandbox.api_url, "plans")
    assert [p["id"] for p in plans] == ["starter", "growth", "scale", "network"]
    text = cli(None, "--base-url", sandbox.api_url, "plans")
    assert text.exit_code == 0 and "custom" in text.stdout


def test_credentials_masked_unless_reveal(sandbox: Sandbox) -> None:
    cred = sandbox.world.credentials
    masked = cli_json(sandbox, "credentials")
    assert masked["username"] == cred.username and masked["port"] == sandbox.gateway_port
    assert masked["password"] != cred.password and cred.password not in json.dumps(masked)
    revealed = cli_json(sandbox, "credentials", "--reveal")
    assert revealed["password"] == cred.password
    text = cli(sandbox, "credentials")
    assert text.exit_code == 0 and cred.username in text.stdout
    assert cred.password not in text.stdout + text.stderr
    shown = cli(sandbox, "credentials", "--reveal")
    assert cred.password in shown.stdout


def test_rotate_asks_unless_yes(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sandbox.world.credentials.password
    # No terminal (a script, CI): nothing is asked nor sent; the error says to pass --yes.
    refused = cli(sandbox, "rotate")
    assert refused.exit_code == 2 and "--yes" in one_error_line(refused, 2)
    assert sandbox.world.credentials.password == before

    monkeypatch.setattr("proxaro_scrape._cli.account.stdin_is_terminal", lambda: True)
    declined = cli(sandbox, "rotate", input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.stderr
    assert sandbox.world.credentials.password == before
    assert declined.stdout == ""  # the prompt went to stderr

    confirmed = cli(sandbox, "rotate", "--json", input="y\n")
    assert confirmed.exit_code == 0, confirmed.stderr
    data = json.loads(confirmed.stdout)
    after = sandbox.world.credentials.password
    assert after != before and data["password"] != after and after not in confirmed.stdout

    yes = cli_json(sandbox, "rotate", "--yes", "--reveal")
    assert yes["password"] == sandbox.world.credentials.password != after
    text = cli(sandbox, "rotate", "-y")
    assert text.exit_code == 0 and "rotated" in text.stdout
    assert sandbox.world.credentials.password not in text.stdout


def test_sessions_filter_and_limit(sandbox: Sandbox) -> None:
    sandbox.control("sessions", add=4, exit_class="isp")
    sandbox.control("sessions", add=3, exit_class="residential")
    isp = cli_json(sandbox, "sessions", "--exit-class", "isp")
    assert len(isp) == 4 and all(s["exit_class"] == "isp" for s in isp)
    assert len(cli_json(sandbox, "sessions", "--limit", "2")) == 2
    assert len(cli_json(sandbox, "sessions")) == 7
    text = cli(sandbox, "sessions")
    assert text.exit_code == 0 and "isp" in text.stdout


def test_countries_and_asns(sandbox: Sandbox) -> None:
    countries = cli_json(sandbox, "countries")
    assert [c["code"] for c in countries] == list(sandbox.world.countries)
    assert all(c["pool_health"] == "healthy" for c in countries)
    sandbox.control("country", code="de", pool_health="down")
    de = next(c for c in cli_json(sandbox, "countries") if c["code"] == "de")
    assert de["pool_health"] == "down"
    asns = cli_json(sandbox, "asns", "us")
    assert [a["asn"] for a in asns] == [a.asn for a in sandbox.world.asns["us"]]
    text = cli(sandbox, "asns", "US")
    assert text.exit_code == 0 and "AS7922" in text.stdout and "Comcast" in text.stdout
    # An API error: one line with the request id.
    sandbox.control("plan", plan="starter")
    refused = one_error_line(cli(sandbox, "asns", "us"))
    assert "HTTP 403" in refused and "scope_required" in refused and "request req_" in refused


# ---------------------------------------------------------------------------- allowlist, webhooks


def test_allowlist_add_list_remove(sandbox: Sandbox) -> None:
    assert cli_json(sandbox, "allowlist", "list") == []
    added = cli_json(sandbox, "allowlist", "add", "198.51.100.42/32", "--label", "crawler")
    assert added["cidr"] == "198.51.100.42/32" and added["label"] == "crawler"
    listed = cli_json(sandbox, "allowlist", "list")
    assert [e["id"] for e in listed] == [added["id"]]
    conflict = one_error_line(cli(sandbox, "allowlist", "add", "198.51.100.42/32"))
    assert "HTTP 409" in conflict and "request req_" in conflict
    text = cli(sandbox, "allowlist", "list")
    assert text.exit_code == 0 and "crawler" in text.stdout
    removed = cli_json(sandbox, "allowlist", "remove", added["id"])
    assert removed == {"object": "allowlist_entry", "id": added["id"], "deleted": True}
    assert cli_json(sandbox, "allowlist", "list") == []
    assert "/24" in one_error_line(cli(sandbox, "allowlist", "add", "10.0.0.0/8"), code=2)


def test_webhooks_create_list_rotate_secret_handling(sandbox: Sandbox, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    created = cli_json(
        sandbox,
        "webhooks",
        "create",
        "https://127.0.0.1:9/hook",
        "--event",
        "order.paid",
        "--event",
        "credentials.rotated",
        "--label",
        "ops",
        "--secret-file",
        str(secret_file),
    )
    (endpoint,) = sandbox.world.webhooks
    assert created["id"] == endpoint.id
    assert created["events"] == ["order.paid", "credentials.rotated"]
    assert created["secret"] != endpoint.secret and endpoint.secret not in json.dumps(created)
    assert secret_file.read_text().strip() == endpoint.secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    listed = cli_json(sandbox, "webhooks", "list")
    assert [h["id"] for h in listed] == [endpoint.id]
    old_secret = endpoint.secret
    rotated = cli_json(sandbox, "webhooks", "rotate", endpoint.id, "--reveal")
    assert rotated["secret"] == sandbox.world.webhooks[0].secret != old_secret
    text = cli(sandbox, "webhooks", "rotate", endpoint.id)
    assert text.exit_code == 0 and sandbox.world.webhooks[0].secret not in text.stdout
    everything = cli_json(sandbox, "webhooks", "create", "https://127.0.0.1:9/all")
    assert everything["events"] == ["*"]
    assert "https" in one_error_line(
        cli(sandbox, "webhooks", "create", "http://127.0.0.1:9/"), code=2
    )
    missing = one_error_line(cli(sandbox, "webhooks", "rotate", "wh_nope"))
    assert "HTTP 404" in missing and "request req_" in missing


class _Lines:
    """Lines of a subprocess stream, read in a thread so a test can wait with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.q.put(line)

    def next(self, timeout: float = 20.0) -> str:
        return self.q.get(timeout=timeout)

    def until(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(deadline - time.monotonic(), 0.01))
            if needle in line:
                return line


@pytest.fixture
def spawn() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, **env: str) -> tuple[subprocess.Popen[str], _Lines, _Lines]:
        proc = subprocess.Popen(
            [EXE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(**env),
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        return proc, _Lines(proc.stdout), _Lines(proc.stderr)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_webhooks_listen_prints_events_the_sandbox_delivers(
    sandbox: Sandbox, tmp_path: Path, spawn: Any
) -> None:
    cert = tmp_path / "receiver.pem"
    sandbox.ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(cert)
    )
    port = free_port()
    hook = cli_json(sandbox, "webhooks", "create", f"https://127.0.0.1:{port}/hooks", "--reveal")
    proc, out, err = spawn(
        "webhooks", "listen", "--port", str(port), "--cert", str(cert), "--json",
        PROXARO_WEBHOOK_SECRET=hook["secret"],
    )  # fmt: skip
    assert f"https://127.0.0.1:{port}/" in err.until("Listening on")
    sandbox.control("event", type="order.paid")
    event = json.loads(out.next())
    assert event["type"] == "order.paid" and event["id"].startswith("evt_")
    # A rotation of the gateway password is an event too; the password is never in it.
    cli(sandbox, "rotate", "--yes")
    rotated = out.next()
    assert json.loads(rotated)["type"] == "credentials.rotated"
    assert sandbox.world.credentials.password not in rotated
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_webhooks_listen_with_a_self_made_certificate(tmp_path: Path, spawn: Any) -> None:
    ca = tmp_path / "ca.pem"
    secret = "whsec_test_" + "k" * 32
    proc, out, err = spawn(
        "webhooks", "listen", "--port", "0", "--secret", secret, "--ca-out", str(ca)
    )
    url = err.until("Listening on").split()[-1]
    assert str(ca) in err.until("trust the CA")
    body = json.dumps(
        {
            "object": "event",
            "id": "evt_cli1",
            "type": "usage.threshold.80",
            "created_at": "2026-04-22T14:30:00Z",
            "data": {"total_bytes": 80, "cap_bytes": 100},
        }
    ).encode()
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), trust_env=False) as client:
        forged = client.post(url, content=body, headers={"X-NB-Signature": "0" * 64})
        assert forged.status_code == 400
        ok = client.post(url, content=body, headers={"X-NB-Signature": sig})
        assert ok.status_code == 200
    line = out.next()
    assert "evt_cli1" in line and "usage.threshold.80" in line and "80%" in line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert out.q.empty()  # the forged delivery printed nothing


def test_webhooks_listen_needs_a_secret() -> None:
    assert "PROXARO_WEBHOOK_SECRET" in one_error_line(cli(None, "webhooks", "listen"))


# ---------------------------------------------------------------------------- gateway


def test_proxy_url_encodes_the_target_and_masks_the_password(sandbox: Sandbox) -> None:
    cred = sandbox.world.credentials
    data = cli_json(
        sandbox, "proxy-url", "--country", "de", "--session", "abc", "--session-ttl", "30"
    )
    assert data["username"] == f"{cred.username}-country-de-session-abc-sesstime-30"
    assert data["gateway"] == sandbox.gateway_host and data["port"] == sandbox.gateway_port
    assert data["target"] == {"country": "de", "session": "abc", "session_ttl": 30}
    assert cred.password not in data["proxy_url"]
    text = cli(sandbox, "proxy-url", "--country", "us", "--asn", "AS7922")
    assert text.exit_code == 0 and cred.password not in text.stdout
    assert text.stdout.strip().startswith(f"http://{cred.username}-country-us-asn-7922:")
    assert "--reveal" in text.stderr


def test_proxy_url_works_as_a_proxy_with_httpx_and_curl(sandbox: Sandbox) -> None:
    url = cli(sandbox, "proxy-url", "--country", "jp", "--reveal").stdout.strip()
    with httpx.Client(proxy=url, trust_env=False) as client:
        seen = client.get(f"{sandbox.site_url}/ip").json()
    assert seen["country"] == "jp"
    sticky = cli_json(sandbox, "proxy-url", "--country", "fr", "--session", "s1", "--reveal")
    with httpx.Client(proxy=sticky["proxy_url"], trust_env=False) as client:
        ips = {client.get(f"{sandbox.site_url}/ip").json()["ip"] for _ in range(3)}
    assert len(ips) == 1
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    done = subprocess.run(
        [curl, "-s", "--noproxy", "", "-x", url, f"{sandbox.site_url}/ip"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
    )
    assert json.loads(done.stdout)["country"] == "jp"


def test_proxy_url_refuses_bad_targets_before_sending(sandbox: Sandbox) -> None:
    before = sandbox.world.counters["gateway.connections"]
    assert "did you mean" in one_error_line(cli(sandbox, "proxy-url", "--country", "zz"), code=2)
    assert "country" in one_error_line(cli(sandbox, "proxy-url", "--city", "berlin"), code=2)
    assert "session" in one_error_line(cli(sandbox, "proxy-url", "--session", "a b"), code=2)
    line = one_error_line(cli(sandbox, "proxy-url", "--session-ttl", "5"), code=2)
    assert line.startswith("Error: --session-ttl: ") and "sticky session" in line
    assert sandbox.world.counters["gateway.connections"] == before


def test_check_reports_the_exit_and_its_geo(sandbox: Sandbox) -> None:
    data = cli_json(sandbox, "check", "--url", sandbox.site_url, "--country", "jp")
    assert data["url"] == f"{sandbox.site_url}/ip"  # a bare site address gets /ip
    assert data["status"] == 200 and data["exit"]["country"] == "jp"
    assert data["body"]["ip"] == data["exit"]["ip"] and data["body"]["country"] == "jp"
    assert data["attempts"][0]["outcome"] == "success"
    # HTTPS: the exit headers come on the CONNECT answer; the sandbox CA verifies the site.
    tls = cli_json(
        sandbox,
        "check",
        "--url",
        f"{sandbox.site_https_url}/ip",
        "--ca-cert",
        sandbox.ca_cert,
        "--country",
        "us",
        "--exit-class",
        "mobile_4g",
        "--session",
        "cart42",
    )
    assert tls["exit"]["country"] == "us" and tls["exit"]["exit_class"] == "mobile_4g"
    assert tls["exit"]["session"] == "cart42" and tls["body"]["ip"] == tls["exit"]["ip"]
    text = cli(sandbox, "check", "--url", f"{sandbox.site_url}/ip", "--country", "de")
    assert text.exit_code == 0 and "de" in text.stdout and "Exit" in text.stdout
    assert sandbox.world.credentials.password not in text.stdout + text.stderr


def test_check_fails_over_from_a_dead_region_and_explains_failures(sandbox: Sandbox) -> None:
    sandbox.control("country", code="de", pool_health="down")
    data = cli_json(sandbox, "check", "--url", sandbox.site_url, "--country", "de")
    # The pool view says de is down: the manager fails over to a neighbour before sending.
    assert data["status"] == 200 and data["exit"]["country"] != "de"
    assert data["attempts"][-1]["target"]["country"] == data["exit"]["country"]
    assert data["body"]["country"] == data["exit"]["country"]
    unverified = one_error_line(cli(sandbox, "check", "--url", f"{sandbox.site_https_url}/ip"))
    assert "--ca-cert" in unverified
    assert "http://" in one_error_line(cli(sandbox, "check", "--url", "ftp://x"), code=2)
    cli_json(sandbox, "allowlist", "add", "198.51.100.42/32")
    refused = one_error_line(cli(sandbox, "check", "--url", sandbox.site_url))
    assert "allowlist" in refused


# ---------------------------------------------------------------------------- failures


def test_wrong_key_local_and_remote_is_one_line(sandbox: Sandbox) -> None:
    local = one_error_line(
        cli(None, "--api-key", "nope", "--base-url", sandbox.api_url, "account"), code=2
    )
    assert "--api-key" in local and "proxaro_live_" in local
    before = sandbox.world.counters["api.requests"]
    remote = one_error_line(
        cli(None, "--api-key", WRONG_KEY, "--base-url", sandbox.api_url, "account")
    )
    assert "HTTP 401" in remote and "request req_" in remote and WRONG_KEY not in remote
    assert sandbox.world.counters["api.requests"] == before + 1
    missing = one_error_line(cli(None, "--base-url", sandbox.api_url, "credentials"), code=2)
    assert "--api-key" in missing and "PROXARO_API_KEY" in missing


def test_unreachable_api_is_one_line() -> None:
    with refused_port() as port:
        line = one_error_line(
            cli(None, "--api-key", WRONG_KEY, "--base-url", f"http://127.0.0.1:{port}", "account")
        )
    assert "Could not reach" in line and f"127.0.0.1:{port}" in line


def test_api_errors_after_retries_are_one_line(sandbox: Sandbox) -> None:
    sandbox.control("faults", statuses=[500, 500])
    line = one_error_line(cli(sandbox, "--max-retries", "1", "account"))
    assert "HTTP 500" in line and "request req_" in line


def test_bad_input_is_one_line(sandbox: Sandbox) -> None:
    assert "--limit" in one_error_line(cli(sandbox, "orders", "--limit", "0"), code=2)
    assert "--exit-class" in one_error_line(
        cli(sandbox, "sessions", "--exit-class", "satellite"), code=2
    )
    assert "No such command" in one_error_line(cli(sandbox, "nope"), code=2)
    assert "code" in one_error_line(cli(sandbox, "asns", "usa"), code=2)
    assert "--base-url" in one_error_line(cli(None, "--base-url", "ftp://x", "plans"), code=2)


def test_console_script_errors_are_one_line(sandbox: Sandbox) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60, env=_env())

    wrong = one_error_line(run("--api-key", WRONG_KEY, "--base-url", sandbox.api_url, "account"))
    assert "HTTP 401" in wrong and "request req_" in wrong
    local = one_error_line(run("--api-key", "proxaro_test_123", "account"), code=2)
    assert "--api-key" in local
    with refused_port() as port:
        gone = one_error_line(
            run("--api-key", WRONG_KEY, "--base-url", f"http://127.0.0.1:{port}", "status")
        )
    assert "Could not reach" in gone
    ok = run("--api-key", sandbox.api_key, "--base-url", sandbox.api_url, "credentials", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["username"] == sandbox.world.credentials.username
    assert sandbox.world.credentials.password not in ok.stdout
    usage = run("--api-key", sandbox.api_key, "--base-url", sandbox.api_url, "usage", "--json")
    assert json.loads(usage.stdout)["total_bytes"] == sandbox.world.used_bytes()


def test_no_secret_in_any_text_output(sandbox: Sandbox) -> None:
    commands = [
        ["status"],
        ["account"],
        ["usage"],
        ["orders"],
        ["credentials"],
        ["sessions"],
        ["countries"],
        ["asns", "de"],
        ["allowlist", "list"],
        ["webhooks", "create", "https://127.0.0.1:9/x"],
        ["webhooks", "list"],
        ["proxy-url", "--country", "us"],
        ["check", "--url", sandbox.site_url],
        ["rotate", "--yes"],
        ["proxy-url"],
    ]
    seen = ""
    for args in commands:
        result = cli(sandbox, *args)
        assert result.exit_code == 0, (args, result.stderr)
        seen += result.stdout + result.stderr
    leaked = [s for s in [*secrets_of(sandbox), sandbox.world.webhooks[0].secret] if s in seen]
    assert not leaked


# ---------------------------------------------------------------------------- sandbox


def test_sandbox_json_prints_one_line_first_then_stops_on_sigterm(spawn: Any) -> None:
    proc, out, err = spawn("sandbox", "--json")
    info = json.loads(out.next(timeout=60))
    assert list(info) == [
        "api_url",
        "api_key",
        "gateway_host",
        "gateway_port",
        "site_url",
        "site_https_url",
        "ca_cert",
    ]
    assert Path(info["ca_cert"]).is_file()
    # The printed values work: the CLI itself against the sandbox it started.
    data = cli_json(None, "--api-key", info["api_key"], "--base-url", info["api_url"], "account")
    assert data["object"] == "account"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert out.q.empty()  # nothing after the one line
    assert not Path(info["ca_cert"]).exists()  # cleaned up on the way out


def test_sandbox_stopped_the_moment_its_line_is_read_exits_0() -> None:
    """A regression: SIGTERM between the printed line and the wait for Ctrl+C escaped as
    click's "Aborted!" (exit 1), about one stop in five when sent at once."""
    codes = []
    for _ in range(8):
        # Read straight from the pipe (no reader thread in between): the stop comes as soon
        # as the line exists, as a script that waits for it would send it.
        proc = subprocess.Popen(
            [EXE, "sandbox", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=_env(),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            json.loads(proc.stdout.readline())
            proc.send_signal(signal.SIGTERM)
            codes.append(proc.wait(timeout=30))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
    assert codes == [0] * 8


# ------------------------------------------------------------------- edges a new user meets


@pytest.mark.parametrize(
    "args",
    [(), ("webhooks",), ("allowlist",)],
    ids=["top", "webhooks", "allowlist"],
)
def test_a_bare_group_prints_its_help(args: tuple[str, ...]) -> None:
    result = cli(None, *args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Usage: ") and "Commands:" in result.stdout
    assert result.stderr == ""


def _api_requests(sb: Sandbox) -> int:
    return sb.world.counters.get("api.requests", 0)


# Usage errors, found while parsing or after it: exit 2, one line, nothing sent.
USAGE_ERRORS: list[tuple[str, tuple[str, ...], str]] = [
    ("period_month_13", ("usage", "--period", "2026-13"), "--period"),
    ("period_month_00", ("usage", "--period", "2026-00"), "--period"),
    ("period_word", ("usage", "--period", "last-year"), "--period"),
    (
        "session_ttl_5000",
        ("proxy-url", "--session", "s1", "--session-ttl", "5000"),
        "--session-ttl",
    ),
    (
        "session_ttl_1441",
        ("proxy-url", "--session", "s1", "--session-ttl", "1441"),
        "--session-ttl",
    ),
    ("session_ttl_0", ("proxy-url", "--session", "s1", "--session-ttl", "0"), "--session-ttl"),
    ("session_ttl_no_session", ("proxy-url", "--session-ttl", "5"), "--session-ttl"),
    (
        "session_ttl_check",
        ("check", "--url", "http://127.0.0.1:9", "--session-ttl", "5000"),
        "--session-ttl",
    ),  # fmt: skip
    ("city_without_country", ("proxy-url", "--city", "berlin"), "country"),
    ("session_space", ("proxy-url", "--session", "a b"), "session"),
    ("orders_limit_0", ("orders", "--limit", "0"), "--limit"),
    ("asns_code", ("asns", "usa"), "code"),
    ("cidr_too_wide", ("allowlist", "add", "10.0.0.0/8"), "/24"),
    ("hook_http", ("webhooks", "create", "http://127.0.0.1:9/"), "https"),
    ("base_url_port", ("--base-url", "http://127.0.0.1:70000", "plans"), "--base-url"),
    ("base_url_userinfo", ("--base-url", "http://u:pw@127.0.0.1:9", "plans"), "--base-url"),
    ("base_url_insecure", ("--base-url", "http://198.51.100.7:9", "plans"), "clear text"),
    ("api_key_shape", ("--api-key", "proxaro_test_123", "account"), "--api-key"),
    ("rotate_no_terminal", ("rotate",), "--yes"),
    ("unknown_command", ("nope",), "No such command"),
    ("check_url_port", ("check", "--url", "http://127.0.0.1:70000/ip"), "--url"),
    ("check_url_scheme", ("check", "--url", "ftp://127.0.0.1/ip"), "--url"),
    ("sandbox_plan", ("sandbox", "--plan", "platinum"), "--plan"),
    ("sandbox_port", ("sandbox", "--port", "65536"), "--port"),
    ("timeout_nan", ("--timeout", "nan", "plans"), "--timeout"),
    ("timeout_inf", ("--timeout", "inf", "plans"), "--timeout"),
]


@pytest.mark.parametrize(
    ("args", "words"), [u[1:] for u in USAGE_ERRORS], ids=[u[0] for u in USAGE_ERRORS]
)
def test_usage_errors_exit_2_and_send_nothing(
    sandbox: Sandbox, args: tuple[str, ...], words: str
) -> None:
    before = _api_requests(sandbox)
    line = one_error_line(cli(sandbox, *args), code=2)
    assert words in line
    assert "pw@" not in line
    assert _api_requests(sandbox) == before


@pytest.mark.parametrize(
    "args",
    [
        ("usage", "--period", "2026-12", "--json"),
        ("usage", "--period", "2026-01", "--json"),
        ("proxy-url", "--session", "s1", "--session-ttl", "1440", "--json"),
        ("proxy-url", "--session", "s1", "--session-ttl", "1", "--json"),
    ],
    ids=["period_12", "period_01", "session_ttl_1440", "session_ttl_1"],
)
def test_usage_bounds_on_the_accepted_side(sandbox: Sandbox, args: tuple[str, ...]) -> None:
    result = cli(sandbox, *args)
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)


def test_allow_insecure_http_is_an_option_of_every_command() -> None:
    from proxaro_scrape._cli._common import CLIConfig

    cfg = CLIConfig(base_url="http://198.51.100.7:9", allow_insecure_http=True)
    with cfg.session(need_key=False) as client:  # built, never used: nothing is sent
        assert client.base_url == "http://198.51.100.7:9"
    result = cli(None, "plans", "--help")
    assert "--allow-insecure-http" in result.stdout


def _whole_on_one_line(stdout: str, values: list[str]) -> None:
    lines = stdout.splitlines()
    for value in values:
        assert any(value in line for line in lines), (value, stdout)


@pytest.mark.parametrize("columns", ["200", "80", "40", "20"])
def test_ids_ips_and_urls_are_never_folded(sandbox: Sandbox, columns: str) -> None:
    long_label = "a label long enough to need folding in any narrow terminal " * 2
    entry = cli_json(sandbox, "allowlist", "add", "2001:db8:1234:5678::/64", "--label",
                     long_label[:80])  # fmt: skip
    hook = cli_json(sandbox, "webhooks", "create",
                    "https://127.0.0.1:9/a/rather/long/path/for/the/webhook/endpoint")  # fmt: skip
    cli(sandbox, "check", "--url", sandbox.site_url)  # one gateway session to list
    wide = cli(sandbox, "sessions", "--json")
    sessions = json.loads(wide.stdout)
    env = {"COLUMNS": columns}
    for args, values in [
        (("allowlist", "list"), [entry["id"], entry["cidr"]]),
        (("webhooks", "list"), [hook["id"], hook["url"]]),
        (("sessions",), [s["id"] for s in sessions] + [s["exit_ip"] for s in sessions]),
        (("credentials",), [sandbox.world.credentials.username]),
        (("orders",), [o["id"] for o in cli_json(sandbox, "orders")]),
    ]:
        result = cli(sandbox, *args, **env)
        assert result.exit_code == 0, result.stderr
        _whole_on_one_line(result.stdout, values)


def test_webhooks_json_says_how_to_get_the_masked_secret(sandbox: Sandbox, tmp_path: Path) -> None:
    masked = cli(sandbox, "webhooks", "create", "https://127.0.0.1:9/h", "--json")
    assert masked.exit_code == 0
    data = json.loads(masked.stdout)  # stdout stays one JSON document
    assert data["secret"] != sandbox.world.webhooks[-1].secret
    assert "--reveal" in masked.stderr and "--secret-file" in masked.stderr
    revealed = cli(sandbox, "webhooks", "rotate", data["id"], "--json", "--reveal")
    assert json.loads(revealed.stdout)["secret"] == sandbox.world.webhooks[-1].secret
    assert revealed.stderr == ""
    saved = cli(sandbox, "webhooks", "rotate", data["id"], "--json", "--secret-file",
                str(tmp_path / "s"))  # fmt: skip
    assert "--reveal" not in saved.stderr


def _plain(path: Path, mode: int) -> Path:
    path.write_text("old\n")
    path.chmod(mode)
    return path


def _link_to_victim(path: Path) -> Path:
    victim = _plain(path.with_name("victim"), 0o644)
    path.symlink_to(victim)
    return path


# (id, how to prepare the --secret-file path, whether it is written)
SECRET_FILES: list[tuple[str, Any, bool]] = [
    ("new_file", lambda p: p, True),
    ("existing_0644", lambda p: _plain(p, 0o644), True),
    ("existing_0666", lambda p: _plain(p, 0o666), True),
    ("existing_0600", lambda p: _plain(p, 0o600), True),
    ("existing_0400", lambda p: _plain(p, 0o400), True),
    ("symlink_to_file", _link_to_victim, False),
    ("dangling_symlink", lambda p: (p.symlink_to(p.with_name("nowhere")), p)[1], False),
    ("directory", lambda p: (p.mkdir(), p)[1], False),
    ("missing_directory", lambda p: p / "sub" / "secret", False),
]


@pytest.mark.parametrize("command", ["create", "rotate"])
@pytest.mark.parametrize(
    ("prepare", "written"), [s[1:] for s in SECRET_FILES], ids=[s[0] for s in SECRET_FILES]
)
def test_secret_files_are_0600_atomic_and_never_through_a_link(
    sandbox: Sandbox, tmp_path: Path, command: str, prepare: Any, written: bool
) -> None:
    hook = cli_json(sandbox, "webhooks", "create", "https://127.0.0.1:9/s")
    path = prepare(tmp_path / "secret")
    old_umask = os.umask(0)  # the mode must not depend on the user's umask
    try:
        before = _api_requests(sandbox)
        args = (
            ("create", "https://127.0.0.1:9/t") if command == "create" else ("rotate", hook["id"])
        )
        result = cli(sandbox, "webhooks", *args, "--json", "--secret-file", str(path))
    finally:
        os.umask(old_umask)
    if not written:
        assert "--secret-file" in one_error_line(result, code=2)
        assert _api_requests(sandbox) == before  # refused before the API was asked
        victim = tmp_path / "victim"
        if victim.exists():
            assert victim.read_text() == "old\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
        return
    assert result.exit_code == 0, result.stderr
    secret = (
        sandbox.world.webhooks[-1].secret
        if command == "create"
        else next(h.secret for h in sandbox.world.webhooks if h.id == hook["id"])
    )
    assert path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not path.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "calls"),
    [
        (("proxy-url", "--country", "de"), 3),
        (("proxy-url",), 3),
        (("check", "--url", "{site}"), 3),
        (("proxy-url", "--country", "us", "--asn", "{asn}"), 4),
        (("check", "--url", "{site}", "--country", "us", "--asn", "{asn}"), 4),
    ],
    ids=["proxy_url_country", "proxy_url_any", "check", "proxy_url_asn", "check_asn"],
)
def test_gateway_commands_cost_at_most_three_api_calls(
    sandbox: Sandbox, args: tuple[str, ...], calls: int
) -> None:
    """Credentials, countries, usage: a one-shot command spends no more of the key's budget
    (it spent twelve while the manager prefetched every country's ASNs); a target naming an
    ASN costs the one listing that checks it."""
    asn = cli_json(sandbox, "asns", "us")[0]["asn"]
    before = _api_requests(sandbox)
    filled = (a.replace("{site}", sandbox.site_url).replace("{asn}", asn) for a in args)
    result = cli(sandbox, *filled, "--json")
    assert result.exit_code == 0, result.stderr
    assert _api_requests(sandbox) - before <= calls


def test_an_asn_the_plan_lacks_is_refused_before_any_url_is_printed() -> None:
    with Sandbox(seed=0, plan="starter") as sb:
        line = one_error_line(cli(sb, "proxy-url", "--country", "us", "--asn", "7922"), code=2)
    assert "asn" in line.lower() and "growth" in line.lower()
