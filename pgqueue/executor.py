"""One run of one task, as a pipeline of small steps: resolve, announce, call, report."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import traceback
from typing import Any

from pgqueue import events, registry
from pgqueue.async_task import TaskFunction
from pgqueue.control import Retry, Snooze, TaskContext, set_current_task
from pgqueue.payload import encode_result
from pgqueue.records import Outcome, OutcomeKind, Task
from pgqueue.threads import DaemonThreadPool

log = logging.getLogger("pgqueue.worker")


class TaskTimeout(TimeoutError):
    """A run took longer than its task's `timeout`."""


class Executor:
    """Runs tasks registered with @AsyncTask: async ones on the loop, sync ones in threads."""

    def __init__(self, threads: DaemonThreadPool, dispatcher: events.EventDispatcher) -> None:
        self._threads = threads
        self._dispatcher = dispatcher

    async def run(self, task: Task) -> Outcome:
        function = registry.lookup(task.name)
        if function is None:
            return self._unknown(task)
        started = time.perf_counter()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "task %s %s started (queue=%s attempt=%d)",
                task.id,
                task.name,
                task.queue,
                task.attempts,
            )
        if self._dispatcher.has_listeners(events.TASK_BEFORE_EXECUTION):
            await self._dispatcher.dispatch(events.TASK_BEFORE_EXECUTION, {"task": task})
        try:
            result = await self._call(function, task)
        except Retry as request:
            return Outcome(task, OutcomeKind.RESCHEDULED, delay=request.delay)
        except Snooze as request:
            return Outcome(
                task, OutcomeKind.RESCHEDULED, delay=request.seconds, refund_attempt=True
            )
        except Exception as error:
            return await self._failed(task, error, started)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "task %s %s completed in %.3fs", task.id, task.name, time.perf_counter() - started
            )
        if self._dispatcher.has_listeners(events.TASK_AFTER_EXECUTION):
            await self._dispatcher.dispatch(
                events.TASK_AFTER_EXECUTION, {"task": task, "result": result}
            )
        return Outcome(task, OutcomeKind.COMPLETED, result_json=encode_result(result))

    async def _call(self, function: TaskFunction[Any], task: Task) -> Any:
        context = contextvars.copy_context()
        context.run(
            set_current_task,
            TaskContext(task.id, task.name, task.queue, task.attempts, task.max_retries),
        )
        kwargs = task.kwargs
        deadline = asyncio.timeout(function.timeout)
        try:
            async with deadline:
                if function.is_async:
                    return await asyncio.get_running_loop().create_task(
                        function.fn(**kwargs), context=context
                    )
                return await asyncio.get_running_loop().run_in_executor(
                    self._threads, functools.partial(context.run, function.fn, **kwargs)
                )
        except TimeoutError:
            if deadline.expired():  # ours, not a TimeoutError the task raised itself
                raise TaskTimeout(
                    f"{task.name} ran longer than its timeout of {function.timeout:g} s"
                ) from None
            raise

    async def _failed(self, task: Task, error: Exception, started: float) -> Outcome:
        log.warning(
            "task %s %s failed after %.3fs (attempt %d of %d): %s: %s",
            task.id,
            task.name,
            time.perf_counter() - started,
            task.attempts,
            task.max_retries + 1,
            type(error).__name__,
            error,
        )
        if self._dispatcher.has_listeners(events.TASK_EXECUTION_ERROR):
            await self._dispatcher.dispatch(
                events.TASK_EXECUTION_ERROR, {"task": task, "error": error}
            )
        text = f"{type(error).__name__}: {error}\n\n" + "".join(traceback.format_exception(error))
        return Outcome(task, OutcomeKind.FAILED, error=text)

    def _unknown(self, task: Task) -> Outcome:
        message = (
            f"UnknownTask: no task named {task.name!r} is registered in this worker; "
            "import the module that defines it with --import (or the imports setting)"
        )
        log.error("task %s: %s", task.id, message)
        return Outcome(task, OutcomeKind.FAILED, error=message, retryable=False)
