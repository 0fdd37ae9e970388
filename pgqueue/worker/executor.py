"""One run of one task, as a pipeline of small steps: resolve, announce, call, report."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pgqueue import events, telemetry
from pgqueue.brokers.base import TaskTransaction, refuse_transaction
from pgqueue.errors import LeaseLost, TaskTimeout
from pgqueue.logs import about_task
from pgqueue.payload import encode_result, error_summary, error_text
from pgqueue.records import Outcome, OutcomeKind, Task
from pgqueue.tasks import registry
from pgqueue.tasks.context import (
    ParentResults,
    Retry,
    Snooze,
    TaskContext,
    reset_current_task,
    set_current_task,
)
from pgqueue.tasks.definition import TaskFunction
from pgqueue.worker.threads import DaemonThreadPool

log = logging.getLogger("pgqueue.executor")


#: Broker.completion_transaction: the transaction a transactional task runs in.
TransactionFactory = Callable[[Task], contextlib.AbstractAsyncContextManager[TaskTransaction]]


class Executor:
    """Runs tasks registered with @AsyncTask: async ones on the loop, sync ones in threads."""

    def __init__(self, threads: DaemonThreadPool, dispatcher: events.EventDispatcher) -> None:
        self._threads = threads
        self._dispatcher = dispatcher
        #: Without a broker (pgqueue.testing), transactional tasks are refused.
        self.transactions: TransactionFactory = refuse_transaction
        #: Where runs read their parents' results (`current_task().parent_results()`).
        self.parents: ParentResults | None = None
        self._completing: set[uuid.UUID] = set()

    async def run(self, task: Task) -> Outcome | None:
        """How the run ended; None when it is already recorded (a transactional task)."""
        with about_task(task):  # every line logged in this run names the task
            tracer = telemetry.tracer()  # None, unless the app configured OpenTelemetry
            if tracer is None:
                return await self._run(task, None)
            with telemetry.processing(tracer, task) as span:
                outcome = await self._run(task, span)
                telemetry.ended(span, outcome)
                return outcome

    async def _run(self, task: Task, span: Any) -> Outcome | None:
        function = registry.lookup(task.name)
        refusal = self._unknown(task) if function is None else _undecodable(function, task)
        if refusal is not None or function is None:
            return refusal
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
        recorded = function.transactional
        try:
            if recorded:
                result = await self._call_in_transaction(function, task)
            else:
                result = await self._call(function, task)
        except LeaseLost as lost:
            log.warning("%s", lost)
            telemetry.lease_lost(span, str(lost))
            return None
        except Retry as request:
            return Outcome(task, OutcomeKind.RESCHEDULED, delay=request.delay)
        except Snooze as request:
            return Outcome(
                task, OutcomeKind.RESCHEDULED, delay=request.seconds, refund_attempt=True
            )
        except asyncio.CancelledError:
            raise  # the worker stopped this run (lease lost, cancelled): nothing to record
        except BaseException as error:  # SystemExit, KeyboardInterrupt too: they end a run
            return await self._failed(task, error, started)
        return await self._completed(task, result, started, recorded)

    async def _completed(
        self, task: Task, result: Any, started: float, recorded: bool
    ) -> Outcome | None:
        if log.isEnabledFor(logging.INFO):
            log.info(
                "task %s %s completed in %.3fs", task.id, task.name, time.perf_counter() - started
            )
        if self._dispatcher.has_listeners(events.TASK_AFTER_EXECUTION):
            await self._dispatcher.dispatch(
                events.TASK_AFTER_EXECUTION, {"task": task, "result": result}
            )
        if recorded:
            return None
        return Outcome(task, OutcomeKind.COMPLETED, result_json=encode_result(result))

    async def _call_in_transaction(self, function: TaskFunction[Any], task: Task) -> Any:
        """Run the task and record it COMPLETED in one transaction (exactly-once effect)."""
        try:
            async with self.transactions(task) as transaction:
                result = await self._call(function, task, transaction.connection)
                self._completing.add(task.id)
                await transaction.complete(encode_result(result))
        finally:
            self._completing.discard(task.id)
        return result

    def completing(self, task: Task) -> bool:
        """True while a transactional run commits its completion (the heartbeat may then
        find the task COMPLETED: that is this run's own doing, not a lost lease)."""
        return task.id in self._completing

    async def _call(self, function: TaskFunction[Any], task: Task, connection: Any = None) -> Any:
        context = TaskContext(
            task.id,
            task.name,
            task.queue,
            task.attempts,
            task.max_retries,
            connection,
            self.parents,
        )
        # The worker runs each task in an asyncio Task of its own, so the context variable
        # set here is private to this run; the token restores it for direct callers.
        token = set_current_task(context)
        kwargs = task.kwargs
        if function.typed_arguments is not None:  # pydantic models, dataclasses: rebuilt
            kwargs = function.typed_arguments.decode(kwargs)
        try:
            if function.is_async:
                running = function.fn(**kwargs)
            else:
                in_thread = contextvars.copy_context()
                running = asyncio.get_running_loop().run_in_executor(
                    self._threads, functools.partial(in_thread.run, function.fn, **kwargs)
                )
            if function.timeout is None:
                return await running
            return await self._with_timeout(running, function, task)
        finally:
            reset_current_task(token)

    async def _with_timeout(
        self, running: Awaitable[Any], function: TaskFunction[Any], task: Task
    ) -> Any:
        deadline = asyncio.timeout(function.timeout)
        try:
            async with deadline:
                return await running
        except TimeoutError:
            if deadline.expired():  # ours, not a TimeoutError the task raised itself
                raise TaskTimeout(
                    f"{task.name} ran longer than its timeout of {function.timeout:g} s"
                ) from None
            raise

    async def _failed(self, task: Task, error: BaseException, started: float) -> Outcome:
        # One line per failed attempt; the traceback of a task that fails for good is
        # logged once the broker has recorded it FAILED (db.outcomes.report).
        log.warning(
            "task %s %s failed after %.3fs (attempt %d of %d): %s",
            task.id,
            task.name,
            time.perf_counter() - started,
            task.attempts,
            task.max_retries + 1,
            error_summary(error),
        )
        if self._dispatcher.has_listeners(events.TASK_EXECUTION_ERROR):
            await self._dispatcher.dispatch(
                events.TASK_EXECUTION_ERROR, {"task": task, "error": error}
            )
        return Outcome(task, OutcomeKind.FAILED, error=error_text(error))

    def _unknown(self, task: Task) -> Outcome:
        # Not this worker's to fail: during a rolling deploy, or on a worker started without
        # one of its modules, another worker may know the name. The broker gives it back (and
        # fails it only after the grace); the name is never imported nor called.
        log.debug("task %s: no task named %r is registered in this worker", task.id, task.name)
        return Outcome(task, OutcomeKind.UNKNOWN)


def _undecodable(function: TaskFunction[Any], task: Task) -> Outcome | None:
    """A row whose kwargs the function cannot take (inserted by hand, or an old version of
    the task): FAILED at once with the reason, never retried, and the worker carries on."""
    kwargs = task.kwargs
    if isinstance(kwargs, dict):
        problem = function.kwargs_problem(kwargs)
        if problem is None and function.typed_arguments is not None:
            problem = function.typed_arguments.problem(kwargs)
        if problem is None:
            return None
    else:
        problem = f"kwargs must be a JSON object, not {type(kwargs).__name__}"
    message = (
        f"InvalidTaskArguments: the stored arguments of {task.name} do not match its "
        f"signature {function.name}{function.signature}: {problem}"
    )
    log.error("task %s: %s", task.id, message)
    return Outcome(task, OutcomeKind.FAILED, error=message, retryable=False)
