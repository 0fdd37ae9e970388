"""`pgqueue queue pause|resume Q`: stop and restart the claims of one queue."""

from __future__ import annotations

import click

from pgqueue.cli.output import admin_session, json_option, print_json


@click.group(name="queue")
def queue() -> None:
    """Pause and resume queues: workers keep running, a paused queue is not claimed."""


@queue.command()
@click.argument("name")
@json_option
def pause(name: str, as_json: bool) -> None:
    """Stop claiming from a queue; running tasks finish, new ones wait."""
    with admin_session() as admin:
        changed = admin.pause_queue(name)
    if as_json:
        print_json({"queue": name, "paused": True, "changed": changed})
    elif changed:
        click.echo(f"paused queue {name!r}: workers skip it until `pgqueue queue resume`")
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
