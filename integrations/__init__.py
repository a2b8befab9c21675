"""One module per client stack: ``scrapy`` (with scrapy-playwright's browser pages), ``httpx``,
``requests``, ``aiohttp`` and ``playwright``.

Installed as ``proxaro_scrape.integrations``; each module imports its framework at the top and
fails with a sentence that names the extra to install.  Every one is a thin edge on the
integration contract, :mod:`proxaro_scrape.gateway.edge`.
"""
