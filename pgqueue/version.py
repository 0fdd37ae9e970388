"""pgqueue's version, in one place (the package, the worker registry, `--version`)."""

__version__ = "0.1.0"
