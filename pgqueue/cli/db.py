"""The ``pgqueue db`` commands: start, stop and inspect the embedded PostgreSQL server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pgqueue.contrib import embedded
from pgqueue.errors import PgQueueError

F = TypeVar("F", bound=Callable[..., Any])


def _data_dir_option(func: F) -> F:
    return click.option(
        "--data-dir",
        envvar="PGQUEUE_DATA_DIR",
        default=".pgqueue",
        show_default=True,
        show_envvar=True,
        type=click.Path(file_okay=False),
        help="Folder of the embedded server (shared by every process that uses it).",
    )(func)


@click.group(name="db")
def db() -> None:
    """Manage the embedded PostgreSQL used when no database is configured."""


@db.command()
@_data_dir_option
def start(data_dir: str) -> None:
    """Start the server (or find the running one) and print its DSN."""
    try:
        dsn = embedded.ensure_server(data_dir)
    except PgQueueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(dsn)


@db.command()
@_data_dir_option
def stop(data_dir: str) -> None:
    """Stop the server, whichever process started it."""
    try:
        stopped = embedded.stop_server(data_dir)
    except PgQueueError as err:
        raise click.ClickException(str(err)) from err
    where = embedded.server_status(data_dir)["data_dir"]
    if stopped:
        click.echo(f"stopped the embedded PostgreSQL of {where}")
    else:
        click.echo(f"no embedded PostgreSQL is running for {where}")


@db.command()
@_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
def status(data_dir: str, as_json: bool) -> None:
    """Say whether the server runs, with its pid, DSN and PostgreSQL version.

    Exits with 0 when it runs and 3 when it does not (like pg_ctl status).
    """
    try:
        info = embedded.server_status(data_dir)
    except PgQueueError as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
    else:
        click.echo(f"running:     {'yes' if info['running'] else 'no'}")
        for key in ("pid", "dsn", "data_dir", "cluster_dir", "postgres_major"):
            if info[key] is not None:
                click.echo(f"{key + ':':<12} {info[key]}")
    if not info["running"]:
        click.get_current_context().exit(3)


@db.command()
@_data_dir_option
def url(data_dir: str) -> None:
    """Print the DSN of the running server."""
    try:
        dsn = embedded.server_url(data_dir)
    except PgQueueError as err:
        raise click.ClickException(str(err)) from err
    if dsn is None:
        raise click.ClickException(
            f"no embedded PostgreSQL is running for {data_dir}; start it with `pgqueue db start`"
        )
    click.echo(dsn)
