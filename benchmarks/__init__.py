"""Benchmarks: ratios and counts measured side by side against the sandbox.

They are run from a clone, not shipped in the wheel: ``python -m benchmarks`` from the root of
the checkout runs them all (see :mod:`.suite`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT", "child_env"]

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
