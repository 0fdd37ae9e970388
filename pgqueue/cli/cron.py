"""`pgqueue cron list`: the recurring tasks workers schedule, with their next run."""

from __future__ import annotations

import click

from pgqueue.cli.output import (
    admin_session,
    cell,
    console,
    json_option,
    print_json,
    short_moment,
    table,
)

#: Times in UTC; the schedule's own zone, its catch-up and when a worker last recorded it
#: are in --json.
COLUMNS = ("Task", "Cron", "Queue", "Last queued", "Next run")


@click.group(name="cron")
def cron() -> None:
    """Recurring tasks (@AsyncTask(cron=...)), as recorded by the workers that run them."""


@cron.command(name="list")
@json_option
def list_schedules(as_json: bool) -> None:
    """Each schedule with its latest queued occurrence and its next run."""
    with admin_session() as admin:
        schedules = admin.cron_schedules()
    if as_json:
        print_json(schedules)
        return
    if not schedules:
        click.echo("no cron schedule yet: a worker records its cron tasks when it starts")
        return
    rows = [
        [
            cell(row["name"]),
            cell(row["cron"] if row["timezone"] == "UTC" else f"{row['cron']} {row['timezone']}"),
            cell(row["queue"]),
            short_moment(row["last_scheduled_at"]),
            short_moment(row["next_run_at"]),
        ]
        for row in schedules
    ]
    out = console()
    out.print(f"{len(schedules)} cron schedule{'s' * (len(schedules) != 1)} (times in UTC)")
    out.print(table(COLUMNS, rows, width=out.width, folding=("Task", "Cron", "Queue")))
