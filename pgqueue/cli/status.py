"""`pgqueue status [--watch]`: every queue at a glance, from the `pgqueue.queue_stats` view."""

from __future__ import annotations

import datetime
import time
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pgqueue.cli.output import admin_session, cell, console, duration, json_option, print_json
from pgqueue.cli.output import table as make_table
from pgqueue.ops.admin import Admin

COLUMNS = (
    "Queue",
    "State",
    "Due",
    "Scheduled",
    "Running",
    "Retrying",
    "Failed",
    "Completed",
    "Cancelled",
    "Oldest due",
    "Done/min",
    "Failed/min",
)


def snapshot(admin: Admin) -> dict[str, Any]:
    """What `status` shows: the queues, how many workers are alive, and when."""
    return {
        "at": datetime.datetime.now(datetime.UTC),
        "queues": admin.queue_stats(),
        "live_workers": len(admin.live_workers()),
    }


def render(state: dict[str, Any]) -> Group:
    queues = state["queues"]
    at = state["at"].astimezone().strftime("%H:%M:%S")
    title = f"pgqueue at {at}: {len(queues)} queues, {state['live_workers']} live workers"
    result: Table = make_table(title, COLUMNS, right=COLUMNS[2:])
    for row in queues:
        result.add_row(
            cell(row["queue"]),
            "[yellow]paused[/]" if row["paused"] else "active",
            str(row["due"]),
            str(row["scheduled"]),
            str(row["running"]),
            str(row["retrying"]),
            f"[red]{row['failed']}[/]" if row["failed"] else "0",
            str(row["completed"]),
            str(row["cancelled"]),
            duration(row["oldest_pending_seconds"]),
            str(row["completed_last_minute"]),
            str(row["failed_last_minute"]),
        )
    if not queues:
        return Group(result, Text("no tasks yet: nothing was ever queued here"))
    return Group(result)


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

    With --json, one JSON object (with --watch: one per line, per refresh).
    """
    out = console()
    with admin_session() as admin:
        if not watch:
            if as_json:
                print_json(_as_json(snapshot(admin)))
            else:
                out.print(render(snapshot(admin)))
            return
        try:
            if as_json or not out.is_terminal:
                # Piped: a fresh table (or JSON line) per refresh, so logs keep the history.
                while True:
                    state = snapshot(admin)
                    if as_json:
                        print_json(_as_json(state))
                    else:
                        out.print(render(state))
                        out.print()
                    time.sleep(interval)
            with Live(render(snapshot(admin)), console=out, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(snapshot(admin)), refresh=True)
        except KeyboardInterrupt:
            return
