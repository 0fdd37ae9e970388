"""Tasks of the fault-injection suite (tests/faults): `pgqueue worker --import fault_tasks`.

Each run logs one row in `executions` from a connection of its own (autocommit, so the
row survives whatever happens to the run), and transactional tasks write their effect
in `effects` through `current_task().connection`, committed with their completion.
`kill` makes a task SIGKILL its own worker on its first attempt at a chosen instant.
The DSN of those two tables is FAULTS_DSN (direct, even when the worker goes through the
test proxy), else PGQUEUE_DSN.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import psycopg

from pgqueue import AsyncTask
from pgqueue.events import TASK_AFTER_EXECUTION, dispatcher
from pgqueue.tasks.context import current_task

QUEUE = "faults"

_connections: dict[tuple[int, str], psycopg.AsyncConnection[Any]] = {}


def _dsn() -> str:
    return os.environ.get("FAULTS_DSN") or os.environ["PGQUEUE_DSN"]


async def _log(kind: str = "start") -> None:
    """One row in executions, from a per-loop connection that reconnects when killed."""
    context = current_task()
    key = (id(asyncio.get_running_loop()), _dsn())
    for attempt in range(20):
        conn = _connections.get(key)
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    key[1], autocommit=True, application_name="fault-executions"
                )
                _connections[key] = conn
            await conn.execute(
                "INSERT INTO executions (task_id, attempt, pid, kind) VALUES (%s, %s, %s, %s)",
                (context.id, context.attempt, os.getpid(), kind),
            )
            return
        except psycopg.OperationalError:
            _connections.pop(key, None)
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    raise RuntimeError("could not log the execution")


def _log_sync(kind: str) -> None:
    context = current_task()
    with psycopg.connect(_dsn(), autocommit=True, application_name="fault-executions") as conn:
        conn.execute(
            "INSERT INTO executions (task_id, attempt, pid, kind) VALUES (%s, %s, %s, %s)",
            (context.id, context.attempt, os.getpid(), kind),
        )


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@AsyncTask(queue=QUEUE, transactional=True)
async def effect(n: int, sleep: float = 0.0, kill: str = "") -> int:
    """Log the start; sleep; write the effect in the completing transaction; return n."""
    first = current_task().attempt == 1
    await _log()
    if kill == "before_effect" and first:
        _die()
    if sleep:
        await asyncio.sleep(sleep)
    await current_task().connection.execute(
        "INSERT INTO effects (task_id, n, attempt, pid) VALUES (%s, %s, %s, %s)",
        (current_task().id, n, current_task().attempt, os.getpid()),
    )
    if kill == "after_effect" and first:
        _die()
    return n


def _kill_after_commit(payload: dict[str, Any]) -> None:
    # TASK_AFTER_EXECUTION runs after a transactional task's completion committed.
    task = payload["task"]
    if task.kwargs.get("kill") == "after_commit" and task.attempts == 1:
        _die()


dispatcher.add_listener(TASK_AFTER_EXECUTION, _kill_after_commit)


@AsyncTask(queue=QUEUE, transactional=True, timeout=1.0)
async def effect_with_timeout(n: int, first_sleep: float) -> int:
    """Writes its effect, then overruns its timeout on the first attempt only."""
    await _log()
    await current_task().connection.execute(
        "INSERT INTO effects (task_id, n, attempt, pid) VALUES (%s, %s, %s, %s)",
        (current_task().id, n, current_task().attempt, os.getpid()),
    )
    if current_task().attempt == 1:
        await asyncio.sleep(first_sleep)
    return n


@AsyncTask(queue=QUEUE, timeout=0.5)
async def slow_async(seconds: float) -> float:
    await _log()
    await asyncio.sleep(seconds)
    await _log("end")
    return seconds


@AsyncTask(queue=QUEUE, timeout=0.5)
def slow_sync(first_sleep: float) -> str:
    """A sync task cannot be cancelled: its first attempt overruns, the retry is quick."""
    _log_sync("start")
    if current_task().attempt == 1:
        time.sleep(first_sleep)
        _log_sync("end")
        return "first"
    return "second"


@AsyncTask(queue=QUEUE)
async def quick(n: int) -> int:
    await _log()
    return n


@AsyncTask(queue=QUEUE)
async def exit_now() -> None:
    """A poison task: it ends its worker process."""
    await _log()
    os._exit(3)


@AsyncTask(queue=QUEUE, max_retries=50)
async def limited(n: int, sleep: float = 0.0) -> int:
    """Logs its start and its end (executions), sleeping between: runs of tasks that hold
    limit keys (tests/faults/test_limits.py), whose overlaps and starts are read back."""
    await _log()
    if sleep:
        await asyncio.sleep(sleep)
    await _log("end")
    return n
