"""pgqueue tasks for the benchmark (imported by the worker with ``--import tasks_pgqueue``)."""

from __future__ import annotations

from pgqueue import AsyncTask


@AsyncTask(queue="bench")
async def noop():
    return None


@AsyncTask(queue="bench")
async def wake(i: int):
    from wakeup import record

    record(i)
