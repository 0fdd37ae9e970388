"""pgqueue's version and distribution name, in one place (the package, the worker registry,
`--version`, install hints)."""

__version__ = "0.1.0"

DISTRIBUTION = "pgqueue-tasks"
"""The name on the package index (`pip install pgqueue-tasks`): `pgqueue` there is another
project. The import name and the command stay `pgqueue`."""
