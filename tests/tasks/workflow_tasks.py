"""Tasks of the workflow tests (tests/test_workflows.py, tests/faults/test_workflows.py)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from pgqueue import AsyncTask, current_task

QUEUE = "workflows"


@AsyncTask(queue=QUEUE)
def step(n: int = 0) -> int:
    return n


@AsyncTask(queue=QUEUE)
def collect() -> dict[str, Any]:
    """Its parents' results, by parent id."""
    return {str(parent): result for parent, result in current_task().parent_results().items()}


@AsyncTask(queue=QUEUE)
async def acollect() -> int:
    return len(await current_task().aparent_results())


@AsyncTask(queue=QUEUE, max_retries=0)
def boom() -> None:
    raise RuntimeError("boom")


@AsyncTask(queue="faults", transactional=True, max_retries=20)
async def node(n: int, dsn: str) -> int:
    """A member of a random graph run under SIGKILLs: records each start on its own
    connection (committed at once), its effect in its completing transaction."""
    import psycopg

    task_id = current_task().id
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as log:
        await log.execute(
            "INSERT INTO executions (task_id, attempt, pid) VALUES (%s, %s, %s)",
            (task_id, current_task().attempt, os.getpid()),
        )
    conn = current_task().connection
    await conn.execute(
        "INSERT INTO effects (task_id, n, attempt, pid) VALUES (%s, %s, %s, %s)",
        (task_id, n, current_task().attempt, os.getpid()),
    )
    return n


def new_id() -> uuid.UUID:
    return uuid.uuid4()
