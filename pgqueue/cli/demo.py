"""`pgqueue demo`: see pgqueue work in one command (what `make demo` runs)."""

from __future__ import annotations

import sys

import click


@click.command()
def demo() -> None:
    """Queue a realistic mixed workload and watch a worker drain it."""
    from pgqueue.contrib.demo import main

    sys.exit(main())
