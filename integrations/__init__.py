"""One module per client stack: ``scrapy``, ``httpx``, ``requests``, ``aiohttp``.

Installed as ``proxaro_scrape.integrations``; each module imports its framework at the top and
fails with a sentence that names the extra to install.
"""
