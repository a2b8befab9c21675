"""``python -m benchmarks``: every benchmark figure in one run (see :mod:`.suite`)."""

from __future__ import annotations

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
