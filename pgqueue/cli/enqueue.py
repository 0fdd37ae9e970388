"""`pgqueue enqueue NAME`: queue one task by name from the shell."""

from __future__ import annotations

import json
from typing import Any

import click

from pgqueue.cli.output import DURATION, Duration, admin_session, print_json
from pgqueue.settings import get_settings
from pgqueue.task_manager import TaskManager
from pgqueue.tasks.definition import RESERVED_OPTIONS
from pgqueue.tasks.registry import import_task_modules


def _kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.UsageError(f"--kwargs is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise click.UsageError(
            f'--kwargs must be a JSON object such as \'{{"to": "a@example.com"}}\', not {text}'
        )
    clashes = sorted(set(value) & (RESERVED_OPTIONS | {"task"}))
    if clashes:
        raise click.UsageError(
            f"--kwargs cannot hold {', '.join(clashes)}: use the options of `pgqueue enqueue`"
        )
    return value


@click.command()
@click.argument("name")
@click.option("--queue", "-q", default=None, help="Queue [default: the task's, or settings'].")
@click.option("--priority", "-p", default=None, type=int, help="Higher runs first.")
@click.option(
    "--delay", "-d", default=None, type=DURATION, help="Run after this long: 30 (s), 90s, 5m, 2h."
)
@click.option("--max-retries", default=None, type=click.IntRange(min=0), help="Retries.")
@click.option(
    "--kwargs",
    "kwargs_json",
    default="{}",
    metavar="JSON",
    help="The task's keyword arguments as one JSON object, quoted for the shell: "
    """--kwargs '{"to":"a@example.com","count":2}' [default: {}].""",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    help="Module defining the task, to apply its declared queue and options and check "
    "the arguments against its signature.",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"id": ..., "name": ...} instead of the id.'
)
def enqueue(
    name: str,
    queue: str | None,
    priority: int | None,
    delay: Duration | None,
    max_retries: int | None,
    kwargs_json: str,
    imports: tuple[str, ...],
    as_json: bool,
) -> None:
    """Queue one run of the task NAME; prints its id.

    \b
    pgqueue enqueue myapp.tasks.send_email --kwargs '{"to": "a@example.com"}'
    """
    kwargs = _kwargs(kwargs_json)
    settings = get_settings()
    import_task_modules([module for item in imports for module in item.split(",") if module])
    manager = TaskManager(settings=settings)
    options: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "delay": None if delay is None else float(delay),
        "max_retries": max_retries,
    }
    try:
        if settings.broker == "database":
            # One plain connection: an unreachable database fails at once, in one line.
            with admin_session(settings) as admin:
                task_id = manager.queue_task(name, connection=admin.connection, **options, **kwargs)
        else:
            task_id = manager.queue_task(name, **options, **kwargs)
    finally:
        manager.close()
    if as_json:
        print_json({"id": task_id, "name": name})
    else:
        click.echo(str(task_id))
