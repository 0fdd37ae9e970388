"""`pgqueue tasks list|show|explain|retry|cancel|purge`: look at tasks and steer them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pgqueue.brokers import get_broker
from pgqueue.cli.output import (
    DURATION,
    STATUS,
    TASK_ID,
    Duration,
    admin_session,
    cell,
    console,
    count,
    duration,
    json_option,
    jsonable,
    moment,
    print_json,
    short_ids,
    short_moment,
    status_text,
    table,
)
from pgqueue.cli.timeline import timeline
from pgqueue.errors import first_line
from pgqueue.ops.admin import Admin
from pgqueue.records import Task, TaskStatus
from pgqueue.settings import get_settings

LIST_COLUMNS = ("ID", "Name", "Queue", "Status", "Tries", "When", "Error")


@click.group(name="tasks")
def tasks() -> None:
    """Look at tasks and steer them: list, show, explain, retry, cancel, purge."""


@tasks.command(name="list")
@click.option("--queue", "-q", default=None, help="Only this queue.")
@click.option("--status", "-s", "status", default=None, type=STATUS, help="Only this status.")
@click.option("--name", "-n", default=None, help="Only tasks of this name.")
@click.option(
    "--limit", "-l", default=50, show_default=True, type=click.IntRange(min=1), help="At most."
)
@json_option
def list_tasks(
    queue: str | None, status: TaskStatus | None, name: str | None, limit: int, as_json: bool
) -> None:
    """The newest tasks, filtered by queue, status and name.

    ID is the end of each task's id: `tasks show`, `explain`, `retry` and `cancel` take it.
    When: when it finished, started (RUNNING) or runs (waiting), in UTC.
    """
    with admin_session() as admin:
        found = admin.list_tasks(queue=queue, status=status, name=name, limit=limit)
        total, exact = len(found), True
        if total == limit:  # there may be more
            total, exact = admin.count_tasks(queue=queue, status=status, name=name)
    if as_json:
        print_json(found)
        return
    out = console()
    out.print(_list_title(len(found), total, exact, queue, status, name))
    if not found:
        return
    # Names said once without the module they all share, so that they fit 80 columns.
    module = _common_module([task.name for task in found])
    if module:
        out.print(f"Names are in {cell(module)}.")
    # A column the filter makes the same on every row is said once, in the title.
    shown = [
        column
        for column, filtered in zip(
            LIST_COLUMNS, (None, name, queue, status, None, None, None), strict=True
        )
        if filtered is None
    ]
    rows = []
    for short_id, task in zip(short_ids([task.id for task in found]), found, strict=True):
        cells = {
            "ID": short_id,
            "Name": cell(task.name.removeprefix(module + ".") if module else task.name),
            "Queue": cell(task.queue),
            "Status": status_text(task.status),
            "Tries": f"{task.attempts}/{task.max_retries + 1}",
            "When": short_moment(_when(task)),
            "Error": cell(first_line(task.error, 200)),
        }
        rows.append([cells[column] for column in shown])
    out.print(
        table(
            shown,
            rows,
            width=out.width,
            right=("Tries",),
            folding=("Name", "Queue"),
            filling="Error",
        )
    )


def _common_module(names: list[str]) -> str:
    """The dotted module path every name starts with ('' if none), the function names left."""
    parts = [name.split(".")[:-1] for name in names]
    common: list[str] = []
    for segments in zip(*parts, strict=False):
        if len(set(segments)) != 1:
            break
        common.append(segments[0])
    return ".".join(common)


def _list_title(
    listed: int,
    total: int,
    exact: bool,
    queue: str | None,
    status: TaskStatus | None,
    name: str | None,
) -> str:
    """'50 of 10,001 FAILED tasks named app.send in queue 'emails', newest first'."""
    kind = f"{status.value} tasks" if status is not None else "tasks"
    named = f" named {cell(name)}" if name is not None else ""
    where = f" in queue {cell(repr(queue))}" if queue is not None else ""
    of = count(total) if exact else f"about {count(total)}"
    if not listed:
        return f"no {kind}{named}{where}"
    return f"{count(listed)} of {of} {kind}{named}{where}, newest first"


def _when(task: Task) -> Any:
    """What a listed task's time is: its end, its start while RUNNING, else its run_at."""
    if task.status.is_finished:
        return task.finished_at
    if task.status is TaskStatus.RUNNING:
        return task.started_at
    return task.run_at


def timings(task: Task) -> dict[str, float | None]:
    """Seconds it waited once due (to its last start) and its last run took."""
    waited = ran = None
    if task.started_at is not None:
        waited = max((task.started_at - task.run_at).total_seconds(), 0.0)
        if task.finished_at is not None:
            ran = (task.finished_at - task.started_at).total_seconds()
    return {"waited_seconds": waited, "ran_seconds": ran}


@tasks.command()
@click.argument("task_id", type=TASK_ID)
@json_option
def show(task_id: str, as_json: bool) -> None:
    """One task: arguments, attempts, result, timings, history, its last error.

    TASK_ID: the whole id, or its end as `tasks list` shows it."""
    with admin_session() as admin:
        task = admin.get_task(admin.find_task_id(task_id))
        events = admin.history(task.id)
        history_off = not events and not admin.history_enabled()
        relatives = admin.relatives(task.id)
    if as_json:
        print_json({**jsonable(task), **timings(task), "history": events, **relatives})
        return
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    spans = timings(task)
    for label, value in (
        ("ID", str(task.id)),
        ("Name", cell(task.name)),
        ("Queue", cell(task.queue)),
        ("Status", status_text(task.status)),
        ("Priority", str(task.priority)),
        ("Attempts", f"{task.attempts} of {task.max_retries + 1}"),
        ("Arguments", cell(_json_text(task.kwargs))),
        ("Created", moment(task.created_at)),
        ("Run at", moment(task.run_at)),
        ("Started", moment(task.started_at)),
        ("Finished", moment(task.finished_at)),
        ("Waited", duration(spans["waited_seconds"])),
        ("Ran", duration(spans["ran_seconds"])),
        ("Worker", cell(task.worker_id or "-")),
        ("Result", cell(_json_text(task.result))),
        ("Parents", _relatives_text(relatives["parents"], relatives["parent_count"])),
        ("Children", _relatives_text(relatives["children"], relatives["child_count"])),
    ):
        facts.add_row(label, value)
    parts: list[Any] = [facts, Text("\nHistory", style="bold")]
    parts.append(timeline(events) if events else _no_history(history_off))
    if task.error:
        parts.append(Panel(Text(task.error), title="Error", title_align="left", style="red"))
    console().print(Group(*parts))


@tasks.command()
@click.argument("task_id", type=TASK_ID)
@json_option
def explain(task_id: str, as_json: bool) -> None:
    """Why a task is not running: scheduled later, paused queue, no worker, backlog, ...

    TASK_ID: the whole id, or its end as `tasks list` shows it."""
    with admin_session() as admin:
        found = admin.explain(admin.find_task_id(task_id))
    task = found["task"]
    if as_json:
        print_json({"id": task.id, "status": task.status, "reasons": found["reasons"]})
        return
    click.echo(f"task {task.id} {task.name} ({task.status.value}, queue {task.queue}):")
    for reason in found["reasons"]:
        click.echo(f"  - {reason['message']}")


def _relatives_text(shown: list[dict[str, Any]], count: int) -> str:
    """Workflow members, one a line: id, name, status (a cleaned-up one: "cleaned up")."""
    if not count:
        return "-"
    lines = [
        f"{r['id']} {cell(r['name'] or '')} {r['status'] or 'cleaned up'}".rstrip() for r in shown
    ]
    if count > len(shown):
        lines.append(f"... {count - len(shown)} more")
    return "\n".join(lines)


def _no_history(history_off: bool) -> Text:
    if history_off:
        return Text("no events: history is off (`pgqueue history on`)", style="dim")
    return Text("no events (queued before history was kept, or while it was off)", style="dim")


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _task_ids(admin: Admin, values: tuple[str, ...]) -> list[uuid.UUID]:
    # All ids are found before any task is touched: a typo changes nothing.
    return [admin.find_task_id(value) for value in values]


def _report(done: list[uuid.UUID], refused: list[dict[str, Any]], verb: str, as_json: bool) -> None:
    if as_json:
        print_json({verb: done, "refused": refused})
    else:
        for task_id in done:
            click.echo(f"{verb} {task_id}")
        for item in refused:
            click.echo(f"not {verb}: {item['id']}: {item['reason']}", err=True)
        if not done and not refused:
            click.echo(f"no task {verb}")
    if refused:
        click.get_current_context().exit(1)


def _refusal(admin: Admin, task_id: uuid.UUID, allowed: str) -> dict[str, Any]:
    try:
        current = admin.get_task(task_id).status.value
    except LookupError as missing:
        return {"id": task_id, "status": None, "reason": str(missing)}
    return {"id": task_id, "status": current, "reason": f"it is {current}; {allowed}"}


@tasks.command()
@click.argument("task_ids", nargs=-1, type=TASK_ID)
@click.option("--failed", is_flag=True, help="Retry every FAILED task (of --queue, or all).")
@click.option("--queue", "-q", default=None, help="With --failed: only this queue.")
@json_option
def retry(task_ids: tuple[str, ...], failed: bool, queue: str | None, as_json: bool) -> None:
    """Run FAILED or CANCELLED tasks once more: `retry ID...` or `retry --failed`.

    ID: the whole id, or its end as `tasks list` shows it."""
    if bool(task_ids) == failed:
        raise click.UsageError("give task ids or --failed (not both)")
    if queue is not None and not failed:
        raise click.UsageError("--queue goes with --failed")
    settings = get_settings()
    done: list[uuid.UUID] = []
    refused: list[dict[str, Any]] = []
    with admin_session(settings) as admin:
        if failed:
            done = admin.retry_failed(queue)
        else:
            for task_id in _task_ids(admin, task_ids):
                if admin.retry(task_id):
                    done.append(task_id)
                else:
                    allowed = "only FAILED or CANCELLED tasks can be retried"
                    refused.append(_refusal(admin, task_id, allowed))
    if done and settings.broker != "database":
        broker = get_broker(settings)  # RabbitMQ: the retried tasks travel again
        for task_id in done:
            broker.resubmit(task_id)
    _report(done, refused, "retried", as_json)


@tasks.command()
@click.argument("task_ids", nargs=-1, required=True, type=TASK_ID)
@json_option
def cancel(task_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel tasks that have not finished (a RUNNING one's worker stops it at once).

    TASK_IDS: whole ids, or their ends as `tasks list` shows them."""
    done: list[uuid.UUID] = []
    refused: list[dict[str, Any]] = []
    with admin_session() as admin:
        for task_id in _task_ids(admin, task_ids):
            if admin.cancel(task_id):
                done.append(task_id)
            else:
                allowed = "only PENDING, RETRYING or RUNNING tasks can be cancelled"
                refused.append(_refusal(admin, task_id, allowed))
    _report(done, refused, "cancelled", as_json)


@tasks.command()
@click.option("--status", "-s", "status", required=True, type=STATUS, help="Tasks of this status.")
@click.option(
    "--older-than",
    "seconds",
    required=True,
    type=DURATION,
    help="Age: finished (or, unfinished, created) longer ago than this: 30m, 12h, 7d, 2w.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting.")
@json_option
def purge(status: TaskStatus, seconds: Duration, yes: bool, as_json: bool) -> None:
    """Delete the tasks of a status older than an age, in batches; asks first unless --yes."""
    older_than = seconds.text
    with admin_session() as admin:
        purgeable = admin.count_purgeable(status, seconds)
        if purgeable and not yes:
            click.confirm(
                f"Delete {purgeable} {status.value} tasks older than {older_than}?",
                abort=True,
                err=True,
            )
        deleted = admin.purge(status, seconds) if purgeable else 0
    if as_json:
        print_json({"deleted": deleted, "status": status, "older_than_seconds": float(seconds)})
    else:
        click.echo(f"deleted {deleted} {status.value} tasks older than {older_than}")
