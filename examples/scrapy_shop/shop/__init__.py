"""An example Scrapy project that crawls the Proxaro sandbox's demo shop through the gateway."""
