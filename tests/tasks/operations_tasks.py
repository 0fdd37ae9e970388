"""Tasks of the operations tests (CLI, registry, metrics); workers import `operations_tasks`."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from pgqueue import AsyncTask

#: In-process workers: gated tasks run until the test sets this.
GATE = threading.Event()


@AsyncTask(queue="ops")
async def echo(value: object = None) -> object:
    return value


@AsyncTask(queue="ops", max_retries=0)
async def explode(message: str = "boom") -> None:
    raise ValueError(message)


@AsyncTask(queue="ops", max_retries=1)
async def flaky(message: str = "flaky") -> None:
    """Fails every time: its first failure is retried, its second is final."""
    raise RuntimeError(message)


@AsyncTask(queue="ops")
async def gated() -> str:
    while not GATE.is_set():
        await asyncio.sleep(0.01)
    return "released"


@AsyncTask(queue="ops")
async def wait_for_file(path: str) -> str:
    """Subprocess workers: runs until the test creates `path`."""
    while not Path(path).exists():
        await asyncio.sleep(0.02)
    return "released"
