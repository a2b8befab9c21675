"""Scrapy commands that know Proxaro's close reasons.

In ``settings.py``::

    COMMANDS_MODULE = "proxaro_scrape.integrations.scrapy.commands"

``scrapy crawl`` then exits 1 when the spider closed because Proxaro could not route at all (a
wrong setting or spider target: ``proxaro_config``; the API unable to start routing:
``proxaro_start_failed``).  Scrapy's own ``crawl`` exits 0 whatever the close reason, and no
component of a crawl can change that, hence a command of our own.  Everything else is Scrapy's
``crawl``.
"""
