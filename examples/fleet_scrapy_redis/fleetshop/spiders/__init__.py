"""The spiders of the fleet example."""
