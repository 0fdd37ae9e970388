"""A task's history as `pgqueue tasks show` prints it: one line per event, within 80 columns."""

from __future__ import annotations

import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from pgqueue.errors import first_line
from pgqueue.records import TaskEvent, TaskEventKind

EVENT_STYLES: dict[str, str] = {
    TaskEventKind.ENQUEUED: "cyan",
    TaskEventKind.STARTED: "blue",
    TaskEventKind.COMPLETED: "green",
    TaskEventKind.FAILED: "bold red",
    TaskEventKind.RETRY_SCHEDULED: "yellow",
    TaskEventKind.RESCUED: "magenta",
    TaskEventKind.CANCELLED: "dim",
    TaskEventKind.RETRIED: "cyan",
    TaskEventKind.RELEASED: "dim",
    TaskEventKind.READY: "cyan",
    TaskEventKind.WAITING: "magenta",
}


def timeline(events: list[TaskEvent]) -> Table:
    """Time (the date when it changes), event, attempt, and what the event says."""
    lines = Table.grid(padding=(0, 1))
    lines.add_column(no_wrap=True)
    lines.add_column(no_wrap=True)
    lines.add_column(justify="right", no_wrap=True)
    lines.add_column(no_wrap=True, overflow="ellipsis", max_width=44)
    day = None
    for event in events:
        local = event.at.astimezone()
        when = local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
        if local.date() != day:
            day = local.date()
            lines.add_row(Text(day.isoformat(), style="dim"), "", "", "")
        lines.add_row(
            when,
            Text(event.event, style=EVENT_STYLES.get(event.event, "")),
            f"#{event.attempt}",
            Text(describe(event)),
        )
    return lines


def describe(event: TaskEvent) -> str:
    """The one line an event's worker, error and details come to."""
    details: dict[str, Any] = event.details or {}
    worker = f"worker {event.worker_id}" if event.worker_id else ""
    if event.event in (TaskEventKind.FAILED, TaskEventKind.RESCUED) or details.get("unknown_task"):
        said = first_line(event.error, 120) if event.error else worker
        if details.get("started") is False:
            said = f"not started yet; {worker}"
        return said
    if "run_at" in details:
        return f"due {_clock(details['run_at'])}" + (
            " (rescheduled)" if details.get("rescheduled") else ""
        )
    if "status" in details:
        return f"was {details['status']}"
    if event.event == TaskEventKind.RELEASED:
        return ("mid-run; " if details.get("started") else "not started; ") + worker
    return worker


def _clock(value: str) -> str:
    moment = datetime.datetime.fromisoformat(value).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")
