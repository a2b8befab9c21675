"""Benchmarks: ratios and counts measured side by side against the sandbox (``python -m proxaro_scrape.bench``)."""
