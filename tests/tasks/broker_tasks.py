"""Tasks of the broker tests (tests/brokers/test_brokers.py, test_rabbitmq.py).

In-process workers share `calls` with the test; subprocess workers import this module
with `--import broker_tasks` and leave their traces in the task table only.
"""

from __future__ import annotations

import asyncio
import time

from pgqueue import AsyncTask, current_task

calls: list[tuple[str, float]] = []  # (label, time.time()) per run, in-process workers only
failures_left: dict[str, int] = {}


def forget_runs() -> None:
    """Start a test with no traces of the previous one's in-process runs."""
    calls.clear()
    failures_left.clear()


@AsyncTask(queue="default")
async def record(label: str) -> str:
    calls.append((label, time.time()))
    return label


@AsyncTask(queue="default", max_retries=3)
async def flaky(key: str) -> str:
    """Fails while failures_left[key] > 0, then succeeds."""
    calls.append((key, time.time()))
    if failures_left.get(key, 0) > 0:
        failures_left[key] -= 1
        raise RuntimeError(f"planned failure of {key}")
    return key


@AsyncTask(queue="default")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@AsyncTask(queue="cron-rabbitmq", cron="* * * * *", cron_catchup=300)
async def cron_record() -> str:
    """A cron task whose runs the test counts: its task id in `calls`, once per run."""
    task_id = str(current_task().id)
    calls.append((task_id, time.time()))
    return task_id


@AsyncTask(queue="default")
async def long_nap(seconds: float) -> float:
    """Sleeps; leaves ("stopped", time) in `calls` if its run is stopped (cancelled)."""
    calls.append(("started", time.time()))
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        calls.append(("stopped", time.time()))
        raise
    return seconds


@AsyncTask(queue="default", transactional=True, max_retries=0)
async def noted(label: str) -> str:
    """Writes `label` in the table `notes` in the transaction that completes the task."""
    await current_task().connection.execute("INSERT INTO notes (label) VALUES (%s)", (label,))
    return label
