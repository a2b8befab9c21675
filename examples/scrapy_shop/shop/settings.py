"""Settings of the example project: the Proxaro add-on, a default target, sticky per domain.

The API key and base URL come from the environment (``PROXARO_API_KEY``, ``PROXARO_BASE_URL``),
never from this file: ``proxaro-scrape sandbox --json`` prints both for the local sandbox.
"""

BOT_NAME = "shop"
SPIDER_MODULES = ["shop.spiders"]
NEWSPIDER_MODULE = "shop.spiders"

# The add-on installs ProxaroDownloaderMiddleware before HttpProxyMiddleware, and a download
# handler for https that reads the gateway's CONNECT answer (the exit over HTTPS).
ADDONS = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}
# `scrapy crawl` exits 1 when Proxaro could not route at all (a wrong PROXARO_* setting, the
# API down at start); Scrapy's own crawl command exits 0 whatever the close reason.
COMMANDS_MODULE = "proxaro_scrape.integrations.scrapy.commands"

# The project's default exit: the US.  A spider's `proxaro_target` replaces it for that spider,
# and meta["proxaro"] for one request.
PROXARO_TARGET = {"country": "us"}
# One exit per site (and per target) while it works; a ban moves the session to a new exit.
PROXARO_STICKY = "domain"
PROXARO_SESSION_TTL = 10  # minutes
PROXARO_MAX_ATTEMPTS = 6

# The demo shop allows every path (its robots.txt says so): skip the extra request.
ROBOTSTXT_OBEY = False
# One shop host: let the gateway's exits carry the parallelism.
CONCURRENT_REQUESTS = 32
CONCURRENT_REQUESTS_PER_DOMAIN = 32
DOWNLOAD_DELAY = 0
DOWNLOAD_TIMEOUT = 30
# No consoles listening on local ports for a short demo crawl.
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
LOG_LEVEL = "INFO"
FEED_EXPORT_ENCODING = "utf-8"
