"""Benchmarks: ratios and counts measured side by side against the sandbox.

Run them all with ``python -m proxaro_scrape.bench``.
"""
