"""`pgqueue workers`: the live workers, from the `pgqueue.live_workers` view."""

from __future__ import annotations

import click

from pgqueue.cli.output import (
    admin_session,
    cell,
    console,
    duration,
    json_option,
    moment,
    print_json,
    table,
)

COLUMNS = ("ID", "Host", "PID", "Queues", "Running", "Version", "Started", "Up", "Heartbeat")


@click.command()
@json_option
def workers(as_json: bool) -> None:
    """The workers alive now: queues, tasks running of their concurrency, last heartbeat."""
    with admin_session() as admin:
        rows = admin.live_workers()
    if as_json:
        print_json(rows)
        return
    result = table(f"{len(rows)} live workers", COLUMNS, right=("PID", "Running", "Up"))
    for row in rows:
        result.add_row(
            cell(row["id"]),
            cell(row["host"]),
            str(row["pid"]),
            cell(",".join(row["queues"])),
            f"{row['tasks_running']}/{row['concurrency']}",
            cell(row["version"]),
            moment(row["started_at"]),
            duration(row["uptime_seconds"]),
            f"{duration(row['heartbeat_age_seconds'])} ago",
        )
    console().print(result)
