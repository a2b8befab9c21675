"""README.md, tested as a user reads it.

- Every ```python block runs as written, in a subprocess of its own, against a running sandbox:
  ``PROXARO_API_KEY`` / ``PROXARO_BASE_URL`` / ``SITE`` in the environment, as the README tells
  users to set them, and it must exit 0 (the snippets assert what they claim).
- A block may carry one marker, the HTML comment on the line before its fence:
  ``<!-- not-run: why -->`` only for Scrapy ``settings.py`` fragments, which are checked instead
  by building the middleware from them (add-on applied); ``<!-- run: COMMAND -->`` saves the
  block under the file name COMMAND names and runs COMMAND (``scrapy ...`` / ``pytest ...``),
  which must also be shown to the reader in a ```bash block.  Any other marker fails.
- The commands of "The two commands" are the ones ``.ci/run`` runs, and the sandbox set-up
  block of "Try it against the local sandbox" really exports a working environment.

The snippets run a few at a time (they mostly wait on sockets) so the file stays well under a
minute; each gets an API key of its own, so no snippet meets another's rate limit.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxaro_scrape.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
SNIPPET_TIMEOUT = 50.0
WORKERS = 3
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(not-run|run):\s*(.+?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    marker: tuple[str, str] | None  # ("run" | "not-run", text) from the line before
    section: str  # the last "## " heading above it

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def parse(text: str) -> list[Block]:
    """Every fenced block, with the marker on the non-blank line before its fence."""
    lines = text.splitlines()
    out: list[Block] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = _FENCE.match(line)
        if fence is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"README.md:{start + 1}: unclosed code fence"
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = None
        if prev.startswith("<!--"):
            m = _MARKER.match(prev)
            assert m is not None, f"README.md:{start}: unknown marker {prev!r}"
            marker = (m.group(1), m.group(2))
        out.append(Block(fence.group(1), "\n".join(body) + "\n", start + 1, marker, section))
        i += 1
    return out


BLOCKS = parse(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]
RUNNABLE = [b for b in PYTHON if b.marker is None or b.marker[0] == "run"]
SETTINGS = [b for b in PYTHON if b.marker is not None and b.marker[0] == "not-run"]
BASH = [b for b in BLOCKS if b.lang == "bash"]


def _bash_commands(block: Block) -> list[str]:
    """The commands of a bash block: one per line, comments dropped."""
    out = []
    for raw in block.code.splitlines():
        cmd = raw.split(" #", 1)[0].strip()
        if cmd and not cmd.startswith("#"):
            out.append(cmd)
    return out


def _ci_command(marker: str) -> str:
    """The command on the line after ``# README: <marker>`` in .ci/run."""
    lines = CI_RUN.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"# README: {marker}":
            return lines[i + 1].strip()
    raise AssertionError(f".ci/run has no '# README: {marker}' line")


def _child_env(**values: str) -> dict[str, str]:
    """The user's environment minus anything that would steer a snippet elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROXARO_", "PYTEST_", "SITE")) and "proxy" not in k.lower()
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(values)
    return env


@dataclass
class Ran:
    """What one snippet did."""

    args: list[str]
    returncode: int | None
    output: str
    workdir: Path

    def report(self) -> str:
        return f"$ {shlex.join(self.args)}\nexit {self.returncode}\n{self.output[-6000:]}"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Ran:
    """Run ``args`` in its own process group; on a timeout the whole group is killed."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, _ = proc.communicate()
        return Ran(args, None, f"TIMEOUT after {timeout} s\n{out}", cwd)
    finally:
        _kill_group(proc.pid)  # anything the command left running in the background
    return Ran(args, proc.returncode, out, cwd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _args_for(block: Block) -> tuple[str, list[str]]:
    """The file to save ``block`` as, and the command that runs it."""
    if block.marker is None:
        return "snippet.py", [sys.executable, "snippet.py"]
    words = shlex.split(block.marker[1])
    files = [w for w in words if w.endswith(".py")]
    assert words[0] in ("scrapy", "pytest") and len(files) == 1, (
        f"{block.id}: a run marker is 'scrapy ... FILE.py' or 'pytest FILE.py', got {words}"
    )
    return files[0], [sys.executable, "-m", *words]


@pytest.fixture(scope="module")
def ran() -> Iterator[dict[str, Ran]]:
    """Every runnable snippet, run against one sandbox, a few at a time."""
    with (
        Sandbox(seed=0) as sb,
        tempfile.TemporaryDirectory(prefix="proxaro-readme-") as tmp,
        concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool,
    ):
        futures: dict[str, concurrent.futures.Future[Ran]] = {}
        for block in RUNNABLE:
            workdir = Path(tmp) / f"line{block.line}"
            workdir.mkdir()
            name, args = _args_for(block)
            (workdir / name).write_text(block.code, encoding="utf-8")
            env = _child_env(
                PROXARO_API_KEY=sb.control("keys", scope="admin")["api_key"],
                PROXARO_BASE_URL=sb.api_url,
                SITE=sb.site_url,
            )
            futures[block.id] = pool.submit(_run, args, workdir, env, SNIPPET_TIMEOUT)
        yield {key: fut.result() for key, fut in futures.items()}


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_snippet_runs_as_written(block: Block, ran: dict[str, Ran]) -> None:
    result = ran[block.id]
    assert result.returncode == 0, f"{block.id} ({block.section}) failed:\n{result.report()}"
    if block.marker is not None:
        shown = {cmd for b in BASH for cmd in _bash_commands(b)}
        assert block.marker[1] in shown, (
            f"{block.id}: the README runs {block.marker[1]!r} but never shows it in a bash block"
        )
    if "runspider" in result.args:
        # The spider's four requests each gave an item: two German exits (the spider's target,
        # sticky), one French (meta), and one sent direct (no exit).
        out = result.args[result.args.index("-O") + 1]
        items = [json.loads(x) for x in (result.workdir / out).read_text().splitlines()]
        assert sorted(str(i["exit"]) for i in items) == ["None", "de", "de", "fr"], items


def test_the_readme_has_snippets_of_every_kind() -> None:
    sections = {b.section for b in RUNNABLE}
    assert {"Quick start", "Settings and options", "Targeting", "Webhooks", "The sandbox"} <= (
        sections
    )
    assert any(b.marker and b.marker[1].startswith("scrapy runspider") for b in RUNNABLE)
    assert any(b.marker and b.marker[1].startswith("pytest") for b in RUNNABLE)
    # Skipping is for Scrapy settings fragments only.
    for block in SETTINGS:
        assert block.section == "Quick start" and "settings" in block.marker[1], block.id


@pytest.mark.parametrize("block", SETTINGS, ids=lambda b: b.id)
def test_scrapy_settings_fragment_is_accepted(block: Block) -> None:
    from scrapy.utils.test import get_crawler

    from proxaro_scrape.gateway import GatewayManager, Target
    from proxaro_scrape.integrations.scrapy import (
        MIDDLEWARE_PRIORITY,
        ProxaroDownloaderMiddleware,
    )

    namespace: dict[str, Any] = {}
    exec(compile(block.code, block.id, "exec"), namespace)  # noqa: S102 - our own README
    settings = {k: v for k, v in namespace.items() if k.isupper()}
    assert settings, f"{block.id} sets no setting"
    crawler = get_crawler(settings_dict={**settings, "PROXARO_API_KEY": "proxaro_test_" + "0" * 32})
    middlewares = crawler.settings.get_component_priority_dict_with_base("DOWNLOADER_MIDDLEWARES")
    mine = {
        k: v
        for k, v in middlewares.items()
        if k is ProxaroDownloaderMiddleware or str(k).endswith("ProxaroDownloaderMiddleware")
    }
    assert list(mine.values()) == [MIDDLEWARE_PRIORITY], middlewares

    mw = ProxaroDownloaderMiddleware.from_crawler(crawler)  # every setting checked here
    assert isinstance(mw.manager, GatewayManager)
    for name, value in settings.items():
        if not name.startswith("PROXARO_"):
            continue
        if name.startswith("PROXARO_PLAYWRIGHT_"):  # the browser side's, not the manager's
            got = getattr(mw.playwright, name.removeprefix("PROXARO_PLAYWRIGHT_").lower())
            assert got == value, (name, got, value)
            continue
        got = getattr(mw.config, name.removeprefix("PROXARO_").lower())
        if name == "PROXARO_TARGET":
            value = Target.coerce(value)
        elif name == "PROXARO_BAN_STATUS_CODES":
            value = tuple(value)
        assert got == value, (name, got, value)


def test_the_two_commands_are_the_ones_ci_runs() -> None:
    blocks = [b for b in BASH if b.section == "The two commands"]
    assert len(blocks) == 1, "one bash block in 'The two commands'"
    commands = _bash_commands(blocks[0])
    install, test = _ci_command("install"), _ci_command("tests")
    assert commands == [install, "proxaro-scrape demo", test]
    assert install == 'python -m pip install -e ".[dev]"'
    assert test == "python -m pytest -q -n 4"
    # The second command exists: the console script and its demo subcommand.
    from proxaro_scrape.cli import main

    assert 'proxaro-scrape = "proxaro_scrape.cli:main"' in (ROOT / "pyproject.toml").read_text()
    assert "demo" in main.commands


def test_the_sandbox_setup_block_exports_a_working_environment(tmp_path: Path) -> None:
    blocks = [b for b in BASH if b.section == "Try it against the local sandbox"]
    assert len(blocks) == 1
    check = (
        "import os, httpx\n"
        "from proxaro_scrape import Proxaro\n"
        "assert os.environ['PROXARO_API_KEY'].startswith('proxaro_test_')\n"
        "print(Proxaro().account.get().id)\n"
        "assert httpx.get(os.environ['SITE'] + '/catalog.json').status_code == 200\n"
    )
    (tmp_path / "check.py").write_text(check, encoding="utf-8")
    # The trap stops the background sandbox however the script ends (the README: kill %1).
    script = f"set -eu\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{blocks[0].code}"
    script += "python check.py\n"
    result = _run(["bash", "-c", script], tmp_path, _child_env(), 40.0)
    assert result.returncode == 0, result.report()
    assert "acct_" in result.output, result.report()
