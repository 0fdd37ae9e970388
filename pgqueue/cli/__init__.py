"""The `pgqueue` command line: one module per command group, errors as one readable line."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
import psycopg

from pgqueue.errors import PgQueueError


class Main(click.Group):
    """Turns pgqueue's and the database's errors into one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PgQueueError as error:
            raise click.ClickException(str(error)) from None
        except psycopg.Error as error:
            raise click.ClickException(
                f"database error: {str(error).strip().splitlines()[0]}"
            ) from None


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default=lambda: os.environ.get("PGQUEUE_LOG_LEVEL", "INFO"),
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging level (env PGQUEUE_LOG_LEVEL).",
)
def main(log_level: str) -> None:
    """pgqueue: a Postgres-native background task queue."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Users run `pgqueue worker --import myapp.tasks` from their project folder.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _register_commands() -> None:
    from pgqueue.cli.db import db
    from pgqueue.cli.migrate import migrate
    from pgqueue.cli.worker import worker

    main.add_command(db)
    main.add_command(migrate)
    main.add_command(worker)


_register_commands()
