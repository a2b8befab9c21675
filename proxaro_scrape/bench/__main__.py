"""``python -m proxaro_scrape.bench``: every benchmark figure in one run (see :mod:`.suite`)."""

from __future__ import annotations

import sys

from proxaro_scrape.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
