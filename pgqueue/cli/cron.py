"""`pgqueue cron list`: the recurring tasks workers schedule, with their next run."""

from __future__ import annotations

import click

from pgqueue.cli.output import (
    admin_session,
    cell,
    console,
    json_option,
    moment,
    print_json,
    table,
)

COLUMNS = ("Task", "Cron", "Time zone", "Queue", "Catch-up", "Last queued", "Next run", "Seen")


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
    result = table(f"{len(schedules)} cron schedules", COLUMNS)
    for row in schedules:
        result.add_row(
            cell(row["name"]),
            row["cron"],
            row["timezone"],
            cell(row["queue"]),
            f"{row['catchup_seconds']:g} s",
            moment(row["last_scheduled_at"]),
            moment(row["next_run_at"]),
            moment(row["last_seen_at"]),
        )
    console().print(result)
    if not schedules:
        click.echo(
            "no schedule recorded yet: a worker records its cron tasks when it starts "
            "(import them with --import)"
        )
