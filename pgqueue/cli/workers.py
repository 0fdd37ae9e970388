"""`pgqueue workers`: the live workers, from the `pgqueue.live_workers` view."""

from __future__ import annotations

import click

from pgqueue.cli.output import (
    admin_session,
    cell,
    console,
    duration,
    json_option,
    print_json,
    table,
)

#: A worker's id holds its host and pid (host:pid:random); --json has them apart.
COLUMNS = ("ID", "Queues", "Running", "Version", "Up", "Heartbeat")


@click.command()
@json_option
def workers(as_json: bool) -> None:
    """The workers alive now: queues, tasks running of their concurrency, last heartbeat."""
    with admin_session() as admin:
        rows = admin.live_workers()
    if as_json:
        print_json(rows)
        return
    cells = [
        [
            cell(row["id"]),
            cell(",".join(row["queues"])),
            f"{row['tasks_running']}/{row['concurrency']}",
            cell(row["version"]),
            duration(row["uptime_seconds"]),
            f"{duration(row['heartbeat_age_seconds'])} ago",
        ]
        for row in rows
    ]
    out = console()
    out.print(f"{len(rows)} live worker{'s' * (len(rows) != 1)}")
    if rows:
        out.print(
            table(COLUMNS, cells, width=out.width, right=("Running", "Up"), folding=("Queues",))
        )
