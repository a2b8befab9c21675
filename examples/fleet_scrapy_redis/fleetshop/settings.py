"""N Scrapy workers, one scrapy-redis queue and dupefilter, one Proxaro state, one Redis.

Every worker runs ``scrapy crawl shop`` with the same environment:

- ``PROXARO_REDIS_URL``: the Redis both scrapy-redis (requests, fingerprints) and Proxaro (sticky
  sessions, bans, breakers, credentials, the leader's pool view, the API budget) share;
- ``PROXARO_API_KEY`` / ``PROXARO_BASE_URL``: the account (``proxaro-scrape sandbox --json``
  prints both for the local sandbox);
- ``SHOP_URL``: the demo shop.

Requests pass through Redis pickled: Proxaro keeps no live object and no secret in them (the
gateway credentials are put on at download time), so retries go back to the shared queue and
any worker may send them.
"""

import os

BOT_NAME = "fleetshop"
SPIDER_MODULES = ["fleetshop.spiders"]
NEWSPIDER_MODULE = "fleetshop.spiders"

ADDONS = {"proxaro_scrape.integrations.scrapy.ProxaroAddon": 0}
COMMANDS_MODULE = "proxaro_scrape.integrations.scrapy.commands"
# One exit per site for the whole fleet: every worker names the session alike, and a ban
# seen by one moves all of them to a new exit.
PROXARO_STICKY = "domain"
PROXARO_MAX_ATTEMPTS = 6
PROXARO_REDIS_URL = os.environ.get("PROXARO_REDIS_URL")

# scrapy-redis: one queue and one dupefilter for every worker.
SCHEDULER = "scrapy_redis.scheduler.Scheduler"
DUPEFILTER_CLASS = "scrapy_redis.dupefilter.RFPDupeFilter"
# Kept when a worker stops: the others may still be crawling from it.
SCHEDULER_PERSIST = True
SCHEDULER_QUEUE_CLASS = "scrapy_redis.queue.FifoQueue"
REDIS_URL = PROXARO_REDIS_URL
# An idle worker waits this long for the others to queue more before it stops (seconds).
SCHEDULER_IDLE_BEFORE_CLOSE = 2

ROBOTSTXT_OBEY = False
CONCURRENT_REQUESTS = 16
DOWNLOAD_TIMEOUT = 30
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"
FEED_EXPORT_ENCODING = "utf-8"
