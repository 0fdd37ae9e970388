"""The claim: the one statement that takes due tasks (`claim_tasks` of sql/queries.sql),
run by the database broker's workers and by the test mode alike, and its rows as Tasks."""

from __future__ import annotations

import datetime
import json
from typing import Any

import psycopg

from pgqueue.records import Task, TaskStatus


async def claim_tasks(
    conn: psycopg.AsyncConnection[Any],
    queries: dict[str, str],
    *,
    queues: list[str],
    limit: int,
    worker_id: str,
    lease_seconds: float,
    start_now: int | None = None,
    now: datetime.datetime | None = None,
    keyed: bool = False,
) -> list[Task]:
    """Up to `limit` tasks of `queues` due by `now` (None: the database clock), RUNNING
    under this worker's lease; the first `start_now` (None: all) started. With `keyed`
    (keyed rows may wait: limits, fair share) the keyed claim of sql/limits.sql, which
    considers every row; else the claim of rows without keys."""
    cursor = await conn.execute(
        queries["claim_keyed_tasks" if keyed else "claim_tasks"],
        {
            "queues": queues,
            "limit": limit,
            "worker_id": worker_id,
            "lease_seconds": lease_seconds,
            "start_now": start_now,
            "now": now,
        },
        prepare=True,  # planned once per connection, not at every claim
    )
    return [claimed_task(row) for row in await cursor.fetchall()]


def claimed_task(row: tuple[Any, ...]) -> Task:
    """A Task from a row of the claim (positional: no dict per row)."""
    (id_, name, queue, priority, kwargs_text, attempts, max_retries, run_at, created_at) = row[:9]
    started_at, error, worker_id, lease_expires_at, lease_token, unique_key, trace = row[9:]
    # Most tasks take no arguments: "{}" needs no JSON parser.
    kwargs = {} if kwargs_text == "{}" else json.loads(kwargs_text)
    return Task(
        id_,
        name,
        queue,
        priority,
        TaskStatus.RUNNING,
        kwargs,
        attempts,
        max_retries,
        run_at,
        created_at,
        started_at,
        None,
        None,
        error,
        worker_id,
        lease_expires_at,
        lease_token,
        unique_key,
        trace,
    )
