"""Tasks that the worker subprocesses of the tests import (`--import sample_tasks`)."""

from __future__ import annotations

import asyncio
import time

from pgqueue import AsyncTask


@AsyncTask(queue="default")
async def echo(value: object = None) -> object:
    return value


@AsyncTask(queue="default")
def sleep_then_return(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


@AsyncTask(queue="default")
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
