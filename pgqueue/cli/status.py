"""`pgqueue status [--watch]`: every queue at a glance, from the `pgqueue.queue_stats` view."""

from __future__ import annotations

import datetime
import time
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.text import Text

from pgqueue.cli.output import (
    admin_session,
    cell,
    console,
    count,
    duration,
    json_option,
    print_json,
    table,
)
from pgqueue.ops.admin import Admin

#: Each task counted once, in the column of its status.
STATUS_COLUMNS = (
    "Queue", "Pending", "Running", "Retrying", "Waiting", "Failed", "Completed", "Cancelled"
)  # fmt: skip
#: The pending and retrying tasks again, by when they run; then the last minute's output.
WAITING_COLUMNS = ("Queue", "Due now", "Later", "Oldest due", "Done/min", "Failed/min")


def snapshot(admin: Admin) -> dict[str, Any]:
    """What `status` shows: the queues, how many workers are alive, and when."""
    return {
        "at": datetime.datetime.now(datetime.UTC),
        "queues": admin.queue_stats(),
        "live_workers": len(admin.live_workers()),
    }


def _queue(row: dict[str, Any]) -> str:
    return cell(row["queue"]) + (" [yellow](paused)[/]" if row["paused"] else "")


def render(state: dict[str, Any], width: int) -> Group:
    queues = state["queues"]
    at = state["at"].astimezone(datetime.UTC).strftime("%H:%M:%SZ")
    workers = state["live_workers"]
    title = (
        f"pgqueue at {at}: {len(queues)} queue{'s' * (len(queues) != 1)}, "
        f"{workers} live worker{'s' * (workers != 1)}"
    )
    if not queues:
        return Group(Text(title), Text("no tasks yet: nothing was ever queued here"))
    by_status = [
        [
            _queue(row),
            count(row["pending"]),
            count(row["running"]),
            count(row["retrying"]),
            count(row["waiting"]),
            f"[red]{count(row['failed'])}[/]" if row["failed"] else "0",
            count(row["completed"]),
            count(row["cancelled"]),
        ]
        for row in queues
    ]
    by_time = [
        [
            _queue(row),
            count(row["due"]),
            count(row["scheduled"]),
            duration(row["oldest_pending_seconds"]),
            count(row["completed_last_minute"]),
            count(row["failed_last_minute"]),
        ]
        for row in queues
    ]
    return Group(
        Text(f"{title}; tasks by status:"),
        table(STATUS_COLUMNS, by_status, width=width, right=STATUS_COLUMNS[1:], folding=("Queue",)),
        Text(""),
        Text("Pending and retrying tasks by when they run; finished in the last minute:"),
        table(WAITING_COLUMNS, by_time, width=width, right=WAITING_COLUMNS[1:], folding=("Queue",)),
    )


def _as_json(state: dict[str, Any]) -> dict[str, Any]:
    return {"at": state["at"], "live_workers": state["live_workers"], "queues": state["queues"]}


@click.command()
@click.option("--watch", "-w", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between refreshes with --watch.",
)
@json_option
def status(watch: bool, interval: float, as_json: bool) -> None:
    """The queues at a glance: tasks per status, oldest due task, throughput per minute.

    The first table counts each task once, by status. The second splits the pending and
    retrying ones by when they run: due now (waiting for a worker) or later (scheduled,
    or a retry's back-off). Times in UTC. With --json, one JSON object (with --watch: one
    per line, per refresh).
    """
    out = console()
    with admin_session() as admin:
        if not watch:
            if as_json:
                print_json(_as_json(snapshot(admin)))
            else:
                out.print(render(snapshot(admin), out.width))
            return
        try:
            if as_json or not out.is_terminal:
                # Piped: a fresh table (or JSON line) per refresh, so logs keep the history.
                while True:
                    state = snapshot(admin)
                    if as_json:
                        print_json(_as_json(state))
                    else:
                        out.print(render(state, out.width))
                        out.print()
                    time.sleep(interval)
            with Live(render(snapshot(admin), out.width), console=out, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(snapshot(admin), out.width), refresh=True)
        except KeyboardInterrupt:
            return
