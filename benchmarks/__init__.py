"""Benchmarks: ratios and counts measured side by side against the sandbox.

They are run from a clone, not shipped in the wheel: ``python -m benchmarks`` from the root of
the checkout runs them all (see :mod:`.suite`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ROOT", "child_env", "child_python", "compile_package"]

#: The root of the clone: the directory that holds ``benchmarks/``.
ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """This process's environment with the clone first on ``PYTHONPATH``.

    The modules start children with ``python -m benchmarks.<name>``; the package is not
    installed, so a child finds it only through the path, whatever its working directory.
    """
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def child_python() -> str:
    """The interpreter the crawler children run on: ``PROXARO_BENCH_PYTHON``, else this one.

    Point it at a virtual environment that holds only what a Scrapy user installs
    (``proxaro-scrape[scrapy]`` and the peer, scrapy-rotating-proxies): a clone's dev
    environment also holds click and rich, which ``import httpx`` then loads for its own
    command line (some 40 ms of start-up that a user without them never pays).
    """
    return os.environ.get("PROXARO_BENCH_PYTHON") or sys.executable


def compile_package(python: str | None = None) -> None:
    """Byte-compile the package in the clone, as pip does for an installed wheel.

    From an editable install, with ``PYTHONDONTWRITEBYTECODE`` set (as on this project's
    machines), every process would compile the package's sources again at import, a start-up
    cost a user's installed wheel never has, and the static side (Scrapy alone) never pays.
    """
    import subprocess

    subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [python or sys.executable, "-m", "compileall", "-q", "proxaro_scrape", "integrations"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
