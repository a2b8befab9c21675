"""The package's version: the one source, which ``pyproject.toml`` reads (setuptools' ``attr:``)."""

__version__ = "0.1.0"
