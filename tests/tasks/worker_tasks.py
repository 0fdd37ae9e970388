"""Tasks of the worker tests; subprocess workers import them with `--import worker_tasks`.

Each task returns the evidence the tests assert on (wall-clock start and end, thread name,
attempt), so a subprocess worker's behaviour can be read back from the task table.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from pgqueue import AsyncTask, current_task


@AsyncTask(queue="default")
async def record(label: str) -> dict[str, object]:
    """Returns when it started (time.time()), for order and latency assertions."""
    return {"label": label, "started": time.time()}


@AsyncTask(queue="default")
def sync_sleep(seconds: float) -> dict[str, object]:
    """Blocks its thread; returns its span and the thread it ran in."""
    started = time.time()
    time.sleep(seconds)
    return {
        "started": started,
        "ended": time.time(),
        "thread": threading.current_thread().name,
        "main_thread": threading.current_thread() is threading.main_thread(),
    }


@AsyncTask(queue="default")
async def async_sleep(seconds: float) -> dict[str, object]:
    started = time.time()
    await asyncio.sleep(seconds)
    return {"started": started, "ended": time.time()}


@AsyncTask(queue="default", max_retries=3)
async def flaky(failures: int) -> dict[str, object]:
    """Fails its first `failures` attempts, then succeeds."""
    attempt = current_task().attempt
    if attempt <= failures:
        raise ConnectionError(f"flaky failure on attempt {attempt}")
    return {"attempt": attempt}


@AsyncTask(queue="default", max_retries=1)
def always_fails(message: str) -> None:
    raise ValueError(message)


@AsyncTask(queue="default")
async def wait_for_file(path: str, timeout: float = 60.0) -> str:
    """Runs until `path` exists (the test decides when it ends), or fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        await asyncio.sleep(0.02)
    return "released"


@AsyncTask(queue="default")
async def slow_first_attempt(seconds: float) -> dict[str, object]:
    """The first attempt hangs for `seconds` (its worker gets killed); later ones return."""
    attempt = current_task().attempt
    if attempt == 1:
        await asyncio.sleep(seconds)
    return {"attempt": attempt, "started": time.time()}
