"""`pgqueue queue pause|resume Q`: stop and restart the claims of one queue."""

from __future__ import annotations

import click

from pgqueue.cli.output import admin_session, json_option, print_json
from pgqueue.errors import closest
from pgqueue.ops.admin import Admin
from pgqueue.settings import get_settings
from pgqueue.tasks.options import check_queue


@click.group(name="queue")
def queue() -> None:
    """Pause and resume queues: workers keep running, a paused queue is not claimed."""


def check_known(admin: Admin, name: str) -> None:
    """A queue never seen is most likely a typo: refuse it, naming the queues there are."""
    known = admin.known_queues()
    if name in known:
        return
    close = closest(name, known)
    meant = f"did you mean {close!r}? " if close else ""
    listed = ", ".join(known) if known else "none yet"
    raise click.ClickException(
        f"queue {name!r} is unknown (no task, worker or cron task uses it): {meant}"
        f"known queues: {listed}; pause it ahead of time with --force"
    )


@queue.command()
@click.argument("name")
@click.option(
    "--force", is_flag=True, help="Pause a queue that no task, worker or cron task uses yet."
)
@json_option
def pause(name: str, force: bool, as_json: bool) -> None:
    """Stop claiming from a queue; running tasks finish, new ones wait."""
    check_queue(name)
    settings = get_settings()
    if settings.broker == "rabbitmq" and settings.dsn is None and not settings.status_tracking:
        raise click.ClickException(
            "RabbitMQ workers without a database (no PGQUEUE_DSN, status tracking off) cannot "
            "see paused queues: stop the workers of the queue instead"
        )
    with admin_session(settings) as admin:
        if not force:
            check_known(admin, name)
        changed = admin.pause_queue(name)
    if as_json:
        print_json({"queue": name, "paused": True, "changed": changed})
    elif changed:
        within = " (RabbitMQ workers within a second)" if settings.broker == "rabbitmq" else ""
        click.echo(f"paused queue {name!r}: workers skip it{within} until `pgqueue queue resume`")
    else:
        click.echo(f"queue {name!r} was already paused")


@queue.command()
@click.argument("name")
@json_option
def resume(name: str, as_json: bool) -> None:
    """Claim from a paused queue again; its workers wake at once."""
    with admin_session() as admin:
        changed = admin.resume_queue(name)
    if as_json:
        print_json({"queue": name, "paused": False, "changed": changed})
    elif changed:
        click.echo(f"resumed queue {name!r}")
    else:
        click.echo(f"queue {name!r} was not paused")
