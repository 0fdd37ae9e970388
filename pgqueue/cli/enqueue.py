"""`pgqueue enqueue NAME`: queue one task by name from the shell."""

from __future__ import annotations

import json
from typing import Any

import click

from pgqueue.cli.output import DURATION, Duration, admin_session, print_json
from pgqueue.errors import ConfigurationError, closest
from pgqueue.settings import get_settings
from pgqueue.task_manager import TaskManager
from pgqueue.tasks import registry
from pgqueue.tasks.definition import RESERVED_OPTIONS
from pgqueue.tasks.options import check_queue
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


def check_task(name: str, imported: list[str]) -> None:
    """Refuse a task name this process cannot resolve (a typo queues a task no worker runs):
    its module part is imported if --import did not name one, and a name it does not
    register is refused with the closest one it does."""
    if registry.lookup(name) is not None:
        return
    module = name.rpartition(".")[0]
    unchecked = "; to queue it for workers that know it, add --unchecked"
    if module and module not in imported:
        try:
            import_task_modules([module])
        except ConfigurationError as error:
            missing = registry.module_missing(module, error.__cause__)
            hint = " (name the module that defines it with --import)" if missing else ""
            raise click.ClickException(
                f"cannot check task {name!r}: {error}{hint}{unchecked}"
            ) from None
        if registry.lookup(name) is not None:
            return
    where = f" in {', '.join(imported or [module])}" if imported or module else ""
    candidates = [
        known
        for known in registry.registered_names()
        if not module or imported or known.startswith(module + ".")
    ]
    close = closest(name, candidates)
    if close:
        meant = f": did you mean {close!r}?"
    elif candidates:
        meant = f" (registered: {', '.join(candidates[:10])})"
    else:
        meant = " (no task is registered: name the module that defines it with --import)"
    raise click.ClickException(f"no task {name!r} is registered{where}{meant}{unchecked}")


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
    "the arguments against its signature [default: NAME's module part].",
)
@click.option(
    "--unchecked",
    is_flag=True,
    help="Queue NAME even though this process cannot import it (a task only workers have); "
    "its queue and options then come from the command line and settings.",
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
    unchecked: bool,
    as_json: bool,
) -> None:
    """Queue one run of the task NAME; prints its id.

    \b
    pgqueue enqueue myapp.tasks.send_email --kwargs '{"to": "a@example.com"}'
    """
    kwargs = _kwargs(kwargs_json)
    settings = get_settings()
    modules = [module for item in imports for module in item.split(",") if module]
    import_task_modules(modules)
    if queue is not None:
        check_queue(queue)  # a bad --queue is the mistake to report, not the name it follows
    check = (lambda: None) if unchecked else (lambda: check_task(name, modules))
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
                check()  # after the connection: a wrong DSN is the first thing to fix
                task_id = manager.queue_task(name, connection=admin.connection, **options, **kwargs)
        else:
            check()
            task_id = manager.queue_task(name, **options, **kwargs)
    finally:
        manager.close()
    if as_json:
        print_json({"id": task_id, "name": name})
    else:
        click.echo(str(task_id))
