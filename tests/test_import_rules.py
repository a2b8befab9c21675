"""The architecture's import rules, checked over the source of every module.

STYLE.md: arrows point one way.  The core (the REST client, the gateway logic, the webhook core)
knows no framework and none of the optional parts; the sandbox shares only the protocol module
with the client, so the two cannot agree on a mistake by sharing code; integrations stand on the
core's public API only.

Every ``.py`` file under ``proxaro_scrape/`` and ``integrations/`` (installed as
``proxaro_scrape.integrations``) is parsed, never imported.  Every import counts: at module
level, inside functions, under ``if TYPE_CHECKING:``, in ``try`` blocks, relative ones resolved
to absolute names, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal
name.  ``from a import b`` counts as importing ``a.b`` (a module or a name, the rules treat both
alike).  A violation is reported as ``path:line: rule: what``.
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (
    (ROOT / "proxaro_scrape", "proxaro_scrape"),
    (ROOT / "integrations", "proxaro_scrape.integrations"),
)

#: Third-party frameworks the core must not import.  httpx is not one: it is the REST
#: client's own transport.
FRAMEWORKS = frozenset(
    {
        "scrapy",
        "twisted",
        "aiohttp",
        "requests",
        "urllib3",
        "click",
        "rich",
        "trustme",
        "playwright",
        "scrapy_playwright",
        "redis",
        "scrapy_redis",
    }
)
#: First-party code the core must not import: the optional parts built on it.
NOT_FOR_THE_CORE = (
    "proxaro_scrape.integrations",
    "proxaro_scrape.sandbox",
    "proxaro_scrape._cli",
    "proxaro_scrape.cli",
    "proxaro_scrape.bench",
    "benchmarks",
)
#: The webhooks package is core except its servers, which may import aiohttp (lazily).
WEBHOOK_SERVERS = frozenset({"proxaro_scrape.webhooks._server", "proxaro_scrape.webhooks._listen"})
#: Core modules by name (and every module of these packages).
CORE_MODULES = frozenset(
    {
        "proxaro_scrape",
        "proxaro_scrape.errors",
        "proxaro_scrape.protocol",
        "proxaro_scrape._secrets",
    }
)
CORE_PACKAGES = ("proxaro_scrape.api", "proxaro_scrape.gateway", "proxaro_scrape.webhooks")
#: Parts of proxaro_scrape an integration may not reach into, public-looking or not.
NOT_FOR_INTEGRATIONS = frozenset({"sandbox", "_cli", "cli", "bench"})


# ---------------------------------------------------------------------------- the checker


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name: "aiohttp.web", "proxaro_scrape.errors.ProxaroError"
    line: int
    at_import_time: bool  # runs when the module is imported: module level, not TYPE_CHECKING


def discover() -> list[Module]:
    """Every module of the two source trees, named as it is installed."""
    found = []
    for base, prefix in SOURCES:
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found.append(Module(".".join([prefix, *parts]), path, is_package))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        # The package a relative import is relative to.
        self.package = module if is_package else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self._deferred = 0  # inside a function or a TYPE_CHECKING block

    def _add(self, target: str, node: ast.AST) -> None:
        self.imports.append(Import(target, getattr(node, "lineno", 0), self._deferred == 0))

    def _resolve(self, level: int, module: str | None) -> str:
        if level == 0:
            return module or ""
        parts = self.package.split(".")
        if level - 1 >= len(parts):
            raise ValueError(f"relative import beyond the top-level package from {self.package}")
        base = parts[: len(parts) - (level - 1)]  # level 1: this package, 2: its parent...
        return ".".join([*base, *([module] if module else [])])

    def _deferring(self, node: ast.AST) -> None:
        self._deferred += 1
        self.generic_visit(node)
        self._deferred -= 1

    visit_FunctionDef = _deferring
    visit_AsyncFunctionDef = _deferring
    visit_Lambda = _deferring

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._deferred += 1
            for child in node.body:
                self.visit(child)
            self._deferred -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node.level, node.module)
        for alias in node.names:
            self._add(base if alias.name == "*" else f"{base}.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                text = first.value
                level = len(text) - len(text.lstrip("."))
                self._add(self._resolve(level, text[level:] or None), node)
        self.generic_visit(node)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source``, the source of ``module``."""
    collector = _Collector(module, is_package)
    collector.visit(ast.parse(source))
    return collector.imports


MODULES = discover()
# By name, a list: while a module becomes a package, both files may exist side by side.
BY_NAME: dict[str, list[Module]] = {}
for _module in MODULES:
    BY_NAME.setdefault(_module.name, []).append(_module)
IMPORTS = {m: imports_of(m.path.read_text("utf-8"), m.name, m.is_package) for m in MODULES}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_core(name: str) -> bool:
    if name in CORE_MODULES:
        return True
    return any(_within(name, p) for p in CORE_PACKAGES) and name not in WEBHOOK_SERVERS


def top(name: str) -> str:
    return name.split(".")[0]


def report(violations: Iterable[str]) -> None:
    found = sorted(set(violations))
    assert not found, f"{len(found)} import rule violation(s):\n" + "\n".join(found)


def violations_of_the_core(imp: Import) -> Iterator[str]:
    if top(imp.target) in FRAMEWORKS:
        yield f"imports the framework {imp.target}"
    for area in NOT_FOR_THE_CORE:
        if _within(imp.target, area):
            yield f"imports {imp.target} ({area} is built on the core, not under it)"


# ---------------------------------------------------------------------------- the rules


def test_every_module_is_found_and_parsed() -> None:
    # Fail-safe: a rule over zero modules passes whatever the code does.
    assert len(MODULES) >= 40, [m.name for m in MODULES]
    for must in (
        "proxaro_scrape",
        "proxaro_scrape.errors",
        "proxaro_scrape.protocol",
        "proxaro_scrape.api",
        "proxaro_scrape.gateway",
        "proxaro_scrape.webhooks",
        "proxaro_scrape.webhooks._core",
        "proxaro_scrape.webhooks._server",
        "proxaro_scrape.sandbox",
        "proxaro_scrape.integrations",
    ):
        assert must in BY_NAME, must
    core = [m for m in MODULES if is_core(m.name)]
    sandbox = [m for m in MODULES if _within(m.name, "proxaro_scrape.sandbox")]
    integrations = [m for m in MODULES if _within(m.name, "proxaro_scrape.integrations")]
    assert len(core) >= 15 and len(sandbox) >= 5 and len(integrations) >= 4
    assert sum(len(IMPORTS[m]) for m in MODULES) >= 200


def test_core_imports_no_framework_and_nothing_built_on_it() -> None:
    """(a) api, gateway, errors, protocol, _secrets, the package root and the webhook core."""
    checked = [m for m in MODULES if is_core(m.name)]
    assert checked
    report(
        f"{m.where}:{imp.line}: rule (a) core: {what}"
        for m in checked
        for imp in IMPORTS[m]
        for what in violations_of_the_core(imp)
    )


def _loaded_with(target: str) -> list[Module]:
    """The first-party modules an import of ``target`` runs: the module and its parents."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):  # "pkg.mod.Name" -> "pkg.mod"
        if ".".join(parts[:end]) in BY_NAME:
            names = (".".join(parts[:i]) for i in range(1, end + 1))
            return [m for name in names for m in BY_NAME.get(name, [])]
    return []


def test_importing_the_core_loads_no_framework() -> None:
    """(a) at import time: following module-level imports from any core module through
    first-party modules (the package root, the webhook servers...) reaches no framework, so
    ``import proxaro_scrape`` works with none installed.  Lazy imports inside functions are
    what keeps this true for the webhook server."""
    problems: dict[tuple[Path, int, str], str] = {}  # one line per import, first chain found
    for start in [m for m in MODULES if is_core(m.name)]:
        via: dict[Module, Module | None] = {start: None}
        queue = collections.deque([start])
        while queue:
            module = queue.popleft()
            for imp in IMPORTS[module]:
                if not imp.at_import_time:
                    continue
                for what in violations_of_the_core(imp):
                    chain = [module]
                    while (back := via[chain[-1]]) is not None:
                        chain.append(back)
                    path = " -> ".join(m.name for m in reversed(chain))
                    problems.setdefault(
                        (module.path, imp.line, what),
                        f"{module.where}:{imp.line}: rule (a) core at import time: "
                        f"importing {start.name} {what}, via {path}",
                    )
                for dep in _loaded_with(imp.target):
                    if dep not in via:
                        via[dep] = module
                        queue.append(dep)
    report(problems.values())


def test_sandbox_shares_only_the_protocol_module() -> None:
    """(b) proxaro_scrape.sandbox imports from proxaro_scrape only protocol and itself."""
    checked = [m for m in MODULES if _within(m.name, "proxaro_scrape.sandbox")]
    assert checked
    report(
        f"{m.where}:{imp.line}: rule (b) sandbox: imports {imp.target}"
        " (the sandbox shares only proxaro_scrape.protocol with the client)"
        for m in checked
        for imp in IMPORTS[m]
        if top(imp.target) == "proxaro_scrape"
        and not _within(imp.target, "proxaro_scrape.protocol")
        and not _within(imp.target, "proxaro_scrape.sandbox")
    )


def _private_part(target: str) -> str | None:
    for part in target.split(".")[1:]:
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return part
    return None


def test_integrations_use_only_the_public_core() -> None:
    """(c) integrations import public core modules and names only (their own package aside)."""
    checked = [m for m in MODULES if _within(m.name, "proxaro_scrape.integrations")]
    assert checked
    problems = []
    for m in checked:
        for imp in IMPORTS[m]:
            target = imp.target
            if top(target) != "proxaro_scrape" or _within(target, "proxaro_scrape.integrations"):
                continue
            parts = target.split(".")
            if len(parts) > 1 and parts[1] in NOT_FOR_INTEGRATIONS:
                problems.append(
                    f"{m.where}:{imp.line}: rule (c) integrations: imports {target}"
                    f" ({parts[1]} is not the core's public API)"
                )
            elif (private := _private_part(target)) is not None:
                problems.append(
                    f"{m.where}:{imp.line}: rule (c) integrations: imports {target}"
                    f" ({private} is private to the core)"
                )
    report(problems)


def test_webhook_servers_import_aiohttp_lazily() -> None:
    """Only the webhook server module imports aiohttp, and only when a server is built, so
    ``import proxaro_scrape.webhooks`` and ``verify_signature`` work without it."""
    checked = [m for m in MODULES if _within(m.name, "proxaro_scrape.webhooks")]
    assert any(m.name in WEBHOOK_SERVERS for m in checked)
    problems = []
    for m in checked:
        for imp in IMPORTS[m]:
            if top(imp.target) != "aiohttp":
                continue
            if m.name != "proxaro_scrape.webhooks._server":
                problems.append(f"{m.where}:{imp.line}: webhooks: only _server imports aiohttp")
            elif imp.at_import_time:
                problems.append(f"{m.where}:{imp.line}: webhooks: aiohttp at import time")
    report(problems)


# ---------------------------------------------------------------------------- the checker itself

SAMPLE = """
import os, aiohttp.web as web
from typing import TYPE_CHECKING
from . import sibling
from .. import errors
from ..errors import ProxaroError as E
from .._secrets import *
import importlib
if TYPE_CHECKING:
    import scrapy
else:
    import httpx
try:
    import requests
except ImportError:
    requests = None

def lazy():
    from twisted.internet import reactor
    importlib.import_module("playwright.async_api")
    return __import__("redis")

class K:
    async def m(self):
        import rich
"""


def test_the_checker_sees_every_kind_of_import() -> None:
    got = {
        (imp.target, imp.at_import_time)
        for imp in imports_of(SAMPLE, "proxaro_scrape.gateway.sample")
    }
    assert got == {
        ("os", True),
        ("aiohttp.web", True),
        ("typing.TYPE_CHECKING", True),
        ("proxaro_scrape.gateway.sibling", True),
        ("proxaro_scrape.errors", True),
        ("proxaro_scrape.errors.ProxaroError", True),
        ("proxaro_scrape._secrets", True),
        ("importlib", True),
        ("scrapy", False),
        ("httpx", True),
        ("requests", True),
        ("twisted.internet.reactor", False),
        ("playwright.async_api", False),
        ("redis", False),
        ("rich", False),
    }
    # A package's own relative imports resolve inside it, not next to it.
    (imp,) = imports_of("from . import _core", "proxaro_scrape.webhooks", is_package=True)
    assert imp.target == "proxaro_scrape.webhooks._core"
    (imp,) = imports_of("from ._common import x", "proxaro_scrape.integrations.httpx")
    assert imp.target == "proxaro_scrape.integrations._common.x"


@pytest.mark.parametrize(
    ("source", "module", "flagged"),
    [
        ("import aiohttp", "proxaro_scrape.gateway.x", True),
        ("def f():\n    import scrapy", "proxaro_scrape.api.x", True),
        ("from proxaro_scrape import sandbox", "proxaro_scrape.errors", True),
        ("from ..integrations import httpx", "proxaro_scrape.gateway.x", True),
        ("import benchmarks.core", "proxaro_scrape.gateway.x", True),
        ("from proxaro_scrape._cli import main", "proxaro_scrape.webhooks._core", True),
        ("import httpx", "proxaro_scrape.api.x", False),
        ("from proxaro_scrape import protocol", "proxaro_scrape.gateway.x", False),
    ],
)
def test_the_core_rule_flags_what_it_should(source: str, module: str, flagged: bool) -> None:
    found = [v for imp in imports_of(source, module) for v in violations_of_the_core(imp)]
    assert bool(found) is flagged, found


def test_the_scrapy_integration_loads_only_what_a_crawl_needs() -> None:
    """The package root is lazy (PEP 562): a crawl's start imports neither the webhook receiver
    and its gate, nor the sandbox, nor the fleet, nor ``importlib.metadata`` for
    ``__version__``, nor tenacity (until a retry), nor httpcore and anyio (never)."""
    import subprocess
    import sys

    code = (
        "import sys, scrapy.crawler\n"
        "before = set(sys.modules)\n"
        "import proxaro_scrape.integrations.scrapy\n"
        "from proxaro_scrape import GatewayManager\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert "proxaro_scrape.gateway.manager" in out
    unwanted = (
        "proxaro_scrape.webhooks",
        "proxaro_scrape.sandbox",
        "proxaro_scrape.fleet",
        "proxaro_scrape.gateway._events",  # the webhook gate: on the first event
        "tenacity",  # on the first retry
        "httpcore",
        "anyio",
    )
    assert not [m for m in out if m.startswith(unwanted) or m == "importlib.metadata"]


def test_every_public_name_of_the_package_root_resolves() -> None:
    import proxaro_scrape

    for name in proxaro_scrape.__all__:
        assert getattr(proxaro_scrape, name) is not None, name
    assert set(proxaro_scrape.__all__) <= set(dir(proxaro_scrape))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        proxaro_scrape.Nope  # noqa: B018 - the attribute access is the test
    from proxaro_scrape import GatewayManager
    from proxaro_scrape.gateway.manager import GatewayManager as Home

    assert GatewayManager is Home
