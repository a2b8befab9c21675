"""The ``proxaro-scrape`` command's private modules (the console script is
``proxaro_scrape.cli:main``).

- :mod:`._common`: configuration, the one error line, JSON and rich output helpers;
- :mod:`._tables`: tables whose ids, IPs and URLs are never folded across lines;
- :mod:`.account`: status, account, usage, orders, plans, credentials, rotate, sessions,
  countries, asns;
- :mod:`.manage`: the ``allowlist`` and ``webhooks`` groups;
- :mod:`.gateway`: ``proxy-url`` and ``check``;
- :mod:`.local`: ``sandbox``;
- :mod:`.demo`: ``demo`` (imports the example Scrapy project, and so Scrapy, only when run).
"""
