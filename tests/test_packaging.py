"""The distribution as a user gets it: the wheel holds the library (and the sandbox and the CLI
behind extras), not the workshop; a bare install pulls in httpx and tenacity only; the demo runs
from ``pip install 'proxaro-scrape[all]'`` in an empty directory; the pytest plugin costs nothing
until its fixture is used.

The fresh virtual environments install with ``pip --no-index --find-links`` from a wheelhouse
re-packed from the distributions this environment already has (same interpreter, so compiled
ones fit), so these tests need no network and download nothing.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from proxaro_scrape.sandbox import Sandbox

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which `build` (in the test extra) brings there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: What the repository holds but the wheel must not: the workshop.
NOT_SHIPPED = ("benchmarks/", "tests/", "examples/", "integrations/", "proxaro_scrape/bench/")
#: The one line every missing extra's ImportError carries.
INSTALL_HINT = re.compile(r'pip install "proxaro-scrape\[(\w+)\]"')


# ------------------------------------------------------------------------------ fast checks


def test_editable_install_imports_integrations() -> None:
    import proxaro_scrape.integrations as integrations

    assert Path(integrations.__file__).resolve().parent == ROOT / "integrations"


def test_every_package_of_the_tree_is_in_the_distribution() -> None:
    """pyproject lists the packages (package-dir maps integrations/): a new subpackage left
    out of the list would be missing from the wheel."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(prefix + p.parent.relative_to(ROOT / folder).parts)
        for folder, prefix in (
            ("proxaro_scrape", ("proxaro_scrape",)),
            ("integrations", ("proxaro_scrape", "integrations")),
        )
        for p in (ROOT / folder).rglob("__init__.py")
    }
    assert on_disk == listed


def test_the_version_is_written_once_and_is_the_metadatas() -> None:
    import proxaro_scrape

    # Written once, in proxaro_scrape/_version.py, which setuptools reads without importing
    # (a plain attribute: no importlib.metadata at run time, 5 ms of a crawl's start).
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "proxaro_scrape._version.__version__"
    assert proxaro_scrape.__version__ == metadata.version("proxaro-scrape")
    for path in (ROOT / "proxaro_scrape").rglob("*.py"):
        if path.name != "_version.py":
            source = path.read_text(encoding="utf-8")
            assert f'"{proxaro_scrape.__version__}"' not in source, path


def test_runtime_dependencies_are_httpx_and_tenacity_and_extras_cover_the_rest() -> None:
    project = PYPROJECT["project"]
    assert {Requirement(r).name for r in project["dependencies"]} == {"httpx", "tenacity"}
    extras = project["optional-dependencies"]
    names = {extra: {Requirement(r).name for r in reqs} for extra, reqs in extras.items()}
    assert names["cli"] == {"click", "rich"}
    assert names["sandbox"] == {"aiohttp", "trustme"}
    assert {"scrapy", "requests", "aiohttp", "cli", "sandbox"} <= set(extras)
    # `all` is every user-facing extra; `test` and `dev` build on it.
    all_of = Requirement(extras["all"][0]).extras
    assert all_of == set(extras) - {"all", "test", "dev", "httpx"}
    assert "pytest-asyncio" not in names["test"]  # one async test runner: conftest's


@pytest.mark.parametrize("missing", ["click", "rich"])
def test_the_command_without_the_cli_extra_is_one_line_and_exit_1(missing: str) -> None:
    # As if the extra were not installed: the module cannot be imported.
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "from proxaro_scrape.cli import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_clean_env()
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        'proxaro-scrape: the command line needs the cli extra: pip install "proxaro-scrape[cli]"'
    ]


def test_ci_runs_the_oldest_and_the_newest_python_the_project_claims() -> None:
    claimed = sorted(
        (
            c.rsplit(" ", 1)[1]
            for c in PYPROJECT["project"]["classifiers"]
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
        ),
        key=lambda v: tuple(map(int, v.split("."))),
    )
    assert PYPROJECT["project"]["requires-python"] == f">={claimed[0]}"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    extra = re.search(r"^EXTRA_PYTHONS=\((.*)\)$", ci, re.MULTILINE)
    assert extra is not None and extra.group(1).split() == [claimed[0], claimed[-1]]


def test_the_pytest_plugin_imports_neither_the_sandbox_nor_aiohttp(tmp_path: Path) -> None:
    """pytest starts on a machine with proxaro-scrape installed: the plugin is loaded (its
    fixture is there) and nothing heavy came with it."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_startup.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_nothing_heavy_at_start_up(request):
                assert "proxaro_scrape.pytest_plugin" in sys.modules
                assert request.config.pluginmanager.get_plugin("proxaro_sandbox") is not None
                heavy = {"aiohttp", "trustme", "proxaro_scrape.sandbox"} & set(sys.modules)
                assert not heavy, heavy
            """
        ),
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_startup.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


# ------------------------------------------------------------------------------ the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout (a build in place would leave a
    ``proxaro_scrape.egg-info`` in the checkout, which pytest would then read)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), "."],
        check=True,
        capture_output=True,
        cwd=src,
        timeout=300,
    )
    (built,) = out.glob("proxaro_scrape-*.whl")
    return built


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of every distribution ``proxaro-scrape[all]`` and pytest need, re-packed from
    this environment."""
    house = tmp_path_factory.mktemp("wheelhouse")
    wanted = _closure(["proxaro-scrape[all]", "pytest"])
    wanted.discard("proxaro-scrape")
    for name in sorted(wanted):
        _repack(metadata.distribution(name), house)
    return house


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_holds_the_library_not_the_workshop(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for must in (
        "proxaro_scrape/__init__.py",
        "proxaro_scrape/py.typed",
        "proxaro_scrape/integrations/__init__.py",
        "proxaro_scrape/integrations/httpx.py",
        "proxaro_scrape/sandbox/__init__.py",
        "proxaro_scrape/cli.py",
        "proxaro_scrape/pytest_plugin.py",
        "proxaro_scrape/_cli/_demo_spider.py",
    ):
        assert must in names, must
    # Every module of the tree, integrations/ under its installed name.
    tree = {
        f"proxaro_scrape/{prefix}{path.relative_to(ROOT / folder).as_posix()}"
        for folder, prefix in (("proxaro_scrape", ""), ("integrations", "integrations/"))
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert tree - set(names) == set()
    shipped = [n for n in names if n.startswith(NOT_SHIPPED) or "/test_" in n or "bench" in n]
    assert shipped == []
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    license_text = zipfile.ZipFile(wheel).read(f"{dist_info}/licenses/LICENSE").decode()
    assert license_text.startswith("MIT License") and "proxaro-scrape developers" in license_text
    meta = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    runtime = [
        Requirement(line.split(":", 1)[1].strip())
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    assert {r.name for r in runtime if r.marker is None} == {"httpx", "tenacity"}
    assert f"Version: {_version_file()}" in meta


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_bare_install_pulls_httpx_and_tenacity_and_routes_httpx(
    wheel: Path, wheelhouse: Path, tmp_path: Path, sandbox: Sandbox
) -> None:
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, wheelhouse, str(wheel))
    installed = _installed(python)
    assert installed == {"proxaro-scrape"} | _closure(["httpx", "tenacity"]), installed

    # The core and the httpx integration, through the sandbox this test runs (in this process:
    # the fresh environment has no aiohttp to run one).
    script = textwrap.dedent(
        """
        import json, os, sys, httpx
        import proxaro_scrape
        from proxaro_scrape import GatewayManager
        from proxaro_scrape.integrations.httpx import ProxaroTransport, exit_of

        with (
            GatewayManager(target={"country": "de"}) as mgr,
            httpx.Client(transport=ProxaroTransport(mgr), timeout=30) as client,
        ):
            r = client.get(os.environ["SITE"] + "/ip")
        errors = {}
        for module in ("scrapy", "requests", "aiohttp"):
            try:
                __import__("proxaro_scrape.integrations." + module)
            except ImportError as exc:
                errors[module] = str(exc)
        try:
            import proxaro_scrape.sandbox
        except ImportError as exc:
            errors["sandbox"] = str(exc)
        heavy = sorted({"aiohttp", "click", "rich", "trustme", "scrapy"} & set(sys.modules))
        print(json.dumps({"version": proxaro_scrape.__version__, "status": r.status_code,
                          "country": exit_of(r).country, "errors": errors, "heavy": heavy}))
        """
    )
    env = _clean_env(
        PROXARO_API_KEY=sandbox.api_key, PROXARO_BASE_URL=sandbox.api_url, SITE=sandbox.site_url
    )
    done = _run([str(python), "-c", script], tmp_path, env)
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["version"] == _version_file()
    assert (out["status"], out["country"]) == (200, "de")
    assert out["heavy"] == []
    # The console script is there without the cli extra: one line, exit status 1.
    cli = _run([str(python.with_name("proxaro-scrape")), "status"], tmp_path, env, check=False)
    assert cli.returncode == 1 and cli.stdout == ""
    assert cli.stderr.strip().splitlines() == [
        'proxaro-scrape: the command line needs the cli extra: pip install "proxaro-scrape[cli]"'
    ]

    # pytest in that environment: the plugin is loaded and costs nothing; its fixture, used,
    # says which extra it needs.
    _pip_install(python, wheelhouse, "pytest")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_start_up_imports_nothing_heavy():
                assert "proxaro_scrape.pytest_plugin" in sys.modules
                assert "aiohttp" not in sys.modules

            def test_the_fixture_needs_the_sandbox_extra(proxaro_sandbox):
                pass
            """
        ),
        encoding="utf-8",
    )
    run = _run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        tmp_path,
        env,
        check=False,
    )
    assert "1 passed, 1 error" in run.stdout, run.stdout[-3000:]
    assert 'pip install "proxaro-scrape[sandbox]"' in run.stdout

    # Every import that needs an extra names it.
    expected = {
        "scrapy": "scrapy",
        "requests": "requests",
        "aiohttp": "aiohttp",
        "sandbox": "sandbox",
    }
    hints = {mod: INSTALL_HINT.search(text) for mod, text in out["errors"].items()}
    assert {mod: m.group(1) for mod, m in hints.items() if m} == expected, out["errors"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_demo_runs_from_the_wheel_in_an_empty_directory(
    wheel: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, wheelhouse, f"{wheel}[all]")
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _run(
        [str(python.with_name("proxaro-scrape")), "demo", "--quick", "--json"],
        empty,
        _clean_env(),
        timeout=300,
    )
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["problems"] == [], report["problems"]
    assert report["products"] == report["expected"]["products"] and report["lost"] == 0
    assert sorted(p.name for p in empty.iterdir()) == ["proxaro-demo-report.json"]


# ------------------------------------------------------------------------------ helpers


def _clean_env(**values: str) -> dict[str, str]:
    """This environment minus anything that would steer a child elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROXARO_", "PYTHON", "PYTEST_", "VIRTUAL_ENV", "PIP_"))
        and "proxy" not in k.lower()
    }
    env.update(values)
    return env


def _run(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    *,
    check: bool = True,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr[-4000:]}"
    return done


def _fresh_venv(path: Path) -> Path:
    """A virtual environment with nothing in it (not even pip: this pip installs into it)."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    return path / "bin" / "python"


def _pip_install(python: Path, wheelhouse: Path, *requirements: str) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            *requirements,
        ],
        wheelhouse,
        _clean_env(),
        timeout=240,
    )


def _installed(python: Path) -> set[str]:
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"
    done = _run([str(python), "-I", "-c", code], python.parent, _clean_env())
    return {canonicalize_name(n) for n in done.stdout.split()}


def _closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of the distributions ``requirements`` install here, transitively."""
    names: set[str] = set()
    expanded: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements are in
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()  # extra: the one of the distribution that asked for req
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        names.add(name)
        for wanted in ("", *sorted(req.extras)):
            if (name, wanted) not in expanded:
                expanded.add((name, wanted))
                todo += [(Requirement(r), wanted) for r in metadata.requires(name) or []]
    return names


def _repack(dist: metadata.Distribution, house: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists."""
    base = Path(str(dist.locate_file("")))
    info = next((f for f in dist.files or [] if f.parent.name.endswith(".dist-info")), None)
    assert info is not None, dist.metadata["Name"]
    info_dir = str(info.parent)
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")
    ]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    tag = "-".join(".".join(p) for p in parts)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = house / f"{name}-{dist.version}-{tag}.whl"
    rows: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for f in dist.files or []:
            arc = f.as_posix()
            if arc.startswith("..") or "__pycache__" in arc:
                continue  # scripts (pip writes them anew from entry points) and byte code
            if arc.startswith(info_dir + "/") and f.name in (
                "RECORD",
                "INSTALLER",
                "REQUESTED",
                "direct_url.json",
            ):
                continue
            data = (base / f).read_bytes()
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append((arc, f"sha256={digest.decode()}", str(len(data))))
        record = io.StringIO()
        writer = csv.writer(record, lineterminator="\n")
        writer.writerows([*rows, (f"{info_dir}/RECORD", "", "")])
        zf.writestr(f"{info_dir}/RECORD", record.getvalue())
    return path


def _version_file() -> str:
    """The version as ``proxaro_scrape/_version.py`` writes it."""
    source = (ROOT / "proxaro_scrape" / "_version.py").read_text(encoding="utf-8")
    return str(ast.literal_eval(source.split("__version__ =", 1)[1].strip()))
