"""WorkerManager: claims tasks from a broker and runs up to N of them at once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

from pgqueue import events
from pgqueue.brokers import get_broker
from pgqueue.brokers.base import Broker
from pgqueue.loops import SupervisedTask
from pgqueue.payload import error_text
from pgqueue.records import CleanupPolicy, Outcome, OutcomeKind, Task, WorkerInfo
from pgqueue.settings import Settings, get_settings
from pgqueue.tasks import registry
from pgqueue.tasks.context import request_cancel
from pgqueue.tasks.definition import TaskFunction
from pgqueue.tasks.options import TaskOptions, check_queue
from pgqueue.tasks.registry import import_task_modules
from pgqueue.telemetry import LEASE_LOST
from pgqueue.worker.executor import Executor
from pgqueue.worker.threads import DaemonThreadPool

log = logging.getLogger("pgqueue.worker")

#: Claim-ahead (brokers with `claims_ahead`): besides its free slots, a worker claims more
#: tasks and holds them in a local buffer, so that the next claim's round trip overlaps the
#: runs instead of following them. A claim costs mostly its round trip and durable commit
#: (~3 ms for 25 rows, ~4 ms for 100), so the buffer is sized to what the slots finish in
#: CLAIM_AHEAD_ROUND_TRIPS claim round trips (both measured as moving averages), and the next
#: claim goes out when half of it is left: a buffered task waits about that long, and the
#: runs never wait for a claim. Within these bounds (a claim of 200 rows, not 100, drained
#: 10-20% more at concurrency 10 and 50; docs/performance.md, 14):
MIN_CLAIM_AHEAD = 8
MAX_CLAIM_AHEAD = 400
CLAIM_AHEAD_ROUND_TRIPS = 2.0
#: ... but only while runs are short (moving average of run time below this), so a buffered
#: task waits behind at most a few short runs, never behind a long one.
CLAIM_AHEAD_MAX_RUN_SECONDS = 0.05
#: A buffered task not started within this time goes back to the queue (PENDING, its attempt
#: not counted) for other workers, and claiming ahead stops until runs are short again.
BUFFER_HOLD_SECONDS = 1.0
#: The start of a task claimed ahead is written within this time (if its run has not ended
#: by then: its completion carries it). Until it is written, a rescue after a crash of this
#: worker takes the task for one that never ran and gives its attempt back.
START_RECORD_SECONDS = 0.1


class _HandOff:
    """The worker's side of a broker's hand-off (brokers/base.py, HandOff)."""

    def __init__(self, worker: WorkerManager) -> None:
        self._worker = worker

    def free_slots(self) -> int:
        return self._worker._free_slots()

    def take(self, tasks: Sequence[Task]) -> None:
        self._worker._take_handed_off(tasks)


@dataclasses.dataclass(slots=True)
class Run:
    """A task this worker is running; `abandoned` runs report nothing (lease lost, released)."""

    task: Task
    future: asyncio.Task[Outcome | None]
    #: time.monotonic() at its start.
    started: float
    abandoned: bool = False


class WorkerManager:
    """Runs the tasks of some queues.

    >>> worker = WorkerManager(get_broker())
    >>> worker.set_queues(["default", "urgent"])
    >>> worker.set_concurrent_tasks(10)
    >>> asyncio.run(worker.start())      # returns after SIGINT/SIGTERM or worker.stop()
    """

    def __init__(self, broker: Broker | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._broker = broker
        self.queues: list[str] = [self.settings.defaults.queue]
        self.polling_interval = 5.0
        self.concurrency = 1
        self.cleanup: CleanupPolicy | None = CleanupPolicy()
        self.shutdown_grace_seconds = self.settings.shutdown_grace_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._runs: dict[uuid.UUID, Run] = {}
        #: Claimed ahead (RUNNING under this worker's lease, heartbeated), not started yet,
        #: each with when its claim returned (time.monotonic()) and whether the claim
        #: recorded its start (the first `start_now` of a claim).
        self._buffer: collections.deque[tuple[Task, float, bool]] = collections.deque()
        #: Runs whose start the database does not know yet, with when they started.
        self._unrecorded_starts: dict[uuid.UUID, tuple[Task, float]] = {}
        # broker.forget calls started from the synchronous cancel callback, kept until done.
        self._forgetting: set[asyncio.Task[None]] = set()
        self._starts_to_record = asyncio.Event()
        #: Moving average of run times: claiming ahead only pays off for short runs. It
        #: starts at the limit: a worker claims ahead only once a run proved short.
        self._run_seconds = CLAIM_AHEAD_MAX_RUN_SECONDS
        #: Moving average of a claim's round trip (claims that found tasks).
        self._claim_seconds = 0.005
        #: Most tasks claimed ahead of the free slots; None: MAX_CLAIM_AHEAD if the broker
        #: claims ahead.
        self.prefetch: int | None = None
        self._slot_freed = asyncio.Event()
        #: Releases of tasks handed off after a stop (kept referenced until done).
        self._background: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self._forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = DaemonThreadPool()
        self._executor = Executor(self._threads, events.dispatcher)

    # -- configuration (the seed's names) ----------------------------------------------

    def set_queues(self, queues: Sequence[str]) -> None:
        if isinstance(queues, str) or not queues:
            raise ValueError("set_queues takes a non-empty list of queue names")
        self.queues = list(dict.fromkeys(check_queue(queue) for queue in queues))

    def set_polling_interval(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"polling interval must be more than 0 seconds, not {seconds!r}")
        self.polling_interval = float(seconds)

    def set_concurrent_tasks(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"concurrent tasks must be a whole number >= 1, not {count!r}")
        self.concurrency = count

    def set_prefetch(self, count: int) -> None:
        """Claim up to `count` tasks ahead of the free slots (0: only for free slots)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"prefetch must be a whole number >= 0, not {count!r}")
        self.prefetch = count

    def set_cleanup_config(self, interval_hours: float = 1, retain_days: float = 7) -> None:
        if not interval_hours > 0 or retain_days < 0:
            raise ValueError("cleanup needs interval_hours > 0 and retain_days >= 0")
        self.cleanup = CleanupPolicy(interval_hours=interval_hours, retain_days=retain_days)

    def set_shutdown_grace(self, seconds: float) -> None:
        """How long a stop waits for running tasks before releasing them (0: release at once)."""
        # `not seconds >= 0` refuses NaN too: as a wait timeout it releases every run at once.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"shutdown grace must be a number of seconds >= 0, not {seconds!r}")
        self.shutdown_grace_seconds = float(seconds)

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = get_broker(self.settings)
        return self._broker

    # -- running -----------------------------------------------------------------------

    async def start(self, *, handle_signals: bool = True) -> None:
        """Run until stop(), SIGINT or SIGTERM; a second signal stops at once.

        `handle_signals=False` leaves the signals to the host (a worker inside a web
        server's process, pgqueue.contrib.asgi): only stop() ends it then.
        """
        self._loop = asyncio.get_running_loop()
        # A programmatic worker (the seed's worker.py) gets the `imports` setting's tasks too.
        import_task_modules(list(self.settings.imports))
        registry.require_tasks()
        self._slot_freed = asyncio.Event()
        self._starts_to_record = asyncio.Event()
        self._unrecorded_starts.clear()
        self._buffer.clear()
        self._run_seconds = CLAIM_AHEAD_MAX_RUN_SECONDS
        self._stopping = self._forced = False
        handled = self._install_signal_handlers() if handle_signals else []
        broker = self.broker
        try:
            await broker.open(
                self.worker_id,
                self.queues,
                self.cleanup,
                WorkerInfo(
                    concurrency=self.concurrency, task_names=tuple(registry.registered_names())
                ),
                on_cancel=self._cancel_run,
                hand_off=_HandOff(self) if broker.hands_off else None,
            )
        except BaseException:  # refused (an unmigrated database, ...): nothing was started
            await broker.close()
            self._remove_signal_handlers(handled)
            raise
        cron_tasks = self._cron_tasks()
        if cron_tasks:
            await broker.schedule_cron(cron_tasks, self.settings.defaults)
        self._executor.transactions = broker.completion_transaction
        self._executor.parents = broker
        log.info(
            "worker %s started: queues=%s concurrency=%d",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
        )
        await events.dispatcher.dispatch(
            events.WORKER_STARTED, {"worker_id": self.worker_id, "queues": list(self.queues)}
        )
        upkeep = [
            SupervisedTask("pgqueue-heartbeat", self._heartbeat_loop),
            SupervisedTask("pgqueue-start-records", self._start_record_loop),
        ]
        for loop in upkeep:
            loop.start()
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for loop in upkeep:
                await loop.stop()
            await broker.close()
            self._remove_signal_handlers(handled)
            log.info("worker %s stopped", self.worker_id)
            await events.dispatcher.dispatch(events.WORKER_STOPPED, {"worker_id": self.worker_id})

    def stop(self, *, force: bool = False) -> None:
        """Stop claiming and drain (force: stop at once). Safe to call from any thread."""
        if self._loop is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._request_stop, force)

    def _request_stop(self, force: bool = False) -> None:
        # Only an explicit force (or a second signal) abandons runs: stop() is idempotent.
        if force:
            self._forced = True
            for run in self._runs.values():
                run.abandoned = True  # their leases expire and another worker retries them
                run.future.cancel()
        self._stopping = True
        self.broker.wake()
        self._slot_freed.set()

    def _claim_ahead(self) -> int:
        """How many tasks to claim beyond the free slots now (0 while runs are long)."""
        most = self.prefetch
        if most is None:
            most = MAX_CLAIM_AHEAD if self.broker.claims_ahead else 0
        if not most or self._run_seconds >= CLAIM_AHEAD_MAX_RUN_SECONDS:
            return 0
        # The average counts finished runs only: a slot whose run is already long will not
        # take a buffered task soon, so only the other slots are counted.
        long_since = time.monotonic() - CLAIM_AHEAD_MAX_RUN_SECONDS
        turning = self.concurrency - sum(run.started < long_since for run in self._runs.values())
        if turning <= 0:
            return 0
        # What the slots finish during a few claim round trips.
        finishing = turning * self._claim_seconds / max(self._run_seconds, 1e-5)
        return min(max(int(CLAIM_AHEAD_ROUND_TRIPS * finishing), MIN_CLAIM_AHEAD), most)

    async def _claim_loop(self) -> None:
        dry = False  # the last claim made only to fill the buffer found the queue dry
        while not self._stopping:
            if not self.broker.recording:
                await self._wait_until_recording()
                continue
            uncovered = self.concurrency - len(self._runs) - len(self._buffer)
            ahead = 0 if dry and uncovered <= 0 else self._claim_ahead()
            # One claim in flight at a time: for free slots the buffer cannot fill, or, with
            # every slot busy, once the buffer is down to half: the claim's round trip then
            # overlaps the runs of the other half instead of following them.
            if uncovered <= 0 and (not ahead or len(self._buffer) > ahead // 2):
                await self._wait_for_a_slot()
                continue
            sent, asked, start_now = time.perf_counter(), uncovered + ahead, max(uncovered, 0)
            # Only a claim for free slots waits for work: one that fills the buffer returns
            # at once, so that the wait for a slot (and the hold limit) is never put off.
            wait = self.polling_interval if uncovered > 0 else 0.0
            try:
                tasks = await self.broker.claim(asked, wait, start_now)
            except Exception:
                if self._stopping:
                    break
                raise
            # Dry: no more claims ahead until a slot is free (no claim per finished run).
            dry = uncovered <= 0 and len(tasks) < asked
            if tasks:
                took = min(time.perf_counter() - sent, 0.1)  # a claim that waited for work
                self._claim_seconds += (took - self._claim_seconds) * 0.2
                claimed_at = time.monotonic()
                self._buffer.extend(
                    [(task, claimed_at, n < start_now) for n, task in enumerate(tasks)]
                )
                self._start_buffered()
                if len(tasks) < asked:
                    # The queue ran dry, so the next claim most likely finds nothing: let the
                    # runs just started begin before it is sent (a wake-up's latency).
                    await asyncio.sleep(0)

    async def _wait_until_recording(self) -> None:
        """The broker cannot record outcomes (it says why): claim nothing until it can."""
        log.warning("not claiming tasks while their outcomes cannot be recorded")
        while not self._stopping and not self.broker.recording:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.broker.until_recording(), 0.5)
        if not self._stopping:
            log.info("claiming tasks again")

    async def _wait_for_a_slot(self) -> None:
        self._slot_freed.clear()
        if not self._buffer:
            await self._slot_freed.wait()
            # Runs that are ready finish in this turn of the loop: claim for all the slots
            # they free in one batch, not one round trip per slot.
            await asyncio.sleep(0)
            return
        # A timer, not wait_for(): wait_for wraps the wait in a task of its own, whose extra
        # turns of the loop would let the buffered runs finish before the next claim is sent.
        deadline = self._buffer[0][1] + BUFFER_HOLD_SECONDS
        timer = asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + max(deadline - time.monotonic(), 0.0),
            self._slot_freed.set,
        )
        try:
            await self._slot_freed.wait()
        finally:
            timer.cancel()
        if self._buffer and time.monotonic() >= deadline:
            await self._release_buffer(f"not started within {BUFFER_HOLD_SECONDS:g}s")
            # Runs are long: stop claiming ahead until short runs bring the average down.
            self._run_seconds = max(self._run_seconds, BUFFER_HOLD_SECONDS)

    async def _release_buffer(self, why: str) -> None:
        """Give the buffered tasks back (PENDING, attempt not counted) for other workers."""
        if self._buffer:
            log.debug("giving back %d tasks claimed ahead: %s", len(self._buffer), why)
        while self._buffer:
            await self.broker.finish(Outcome(self._buffer.popleft()[0], OutcomeKind.RELEASED))

    def _start_buffered(self) -> None:
        buffer, runs = self._buffer, self._runs
        # started_at (the claim's time, from the database clock) moves on by the time spent
        # in the buffer, measured here: the completion records when the run really began.
        # The record is changed in place before its run exists (why that is safe: records.py).
        now, batch_claimed_at, waited = time.monotonic(), -1.0, datetime.timedelta()
        while buffer and len(runs) < self.concurrency and not self._stopping:
            task, claimed_at, recorded = buffer.popleft()
            if claimed_at != batch_claimed_at:  # one timedelta per claim, not per task
                batch_claimed_at, waited = claimed_at, datetime.timedelta(seconds=now - claimed_at)
            if task.started_at is not None:
                task.started_at += waited
            if not recorded:
                self._unrecorded_starts[task.id] = (task, now)
                self._starts_to_record.set()
            self._start_run(task, now)

    def _start_run(self, task: Task, now: float) -> None:
        # No task name: formatting one (UUID to text) costs as much as a no-op run's outcome.
        run = Run(task, asyncio.create_task(self._run(task)), now)
        self._runs[task.id] = run

    async def _run(self, task: Task) -> Outcome | None:
        outcome = None
        started = time.perf_counter()
        try:
            outcome = await self._executor.run(task)
        except asyncio.CancelledError:
            pass  # lease lost, cancelled, or stopped at once: nothing to report
        except Exception as error:  # the executor reports task errors as outcomes: a bug
            log.exception("task %s crashed the executor", task.id)
            outcome = Outcome(task, OutcomeKind.FAILED, error=error_text(error))
        finally:
            run = self._runs.pop(task.id, None)
            self._run_seconds += (time.perf_counter() - started - self._run_seconds) * 0.2
            # Wake the claim loop before starting buffered runs: it resumes first and sends
            # the next claim, whose round trip then overlaps these runs.
            self._slot_freed.set()
            if self._buffer:
                self._start_buffered()
        if outcome is not None and run is not None and not run.abandoned:
            await self.broker.finish(outcome)
        return outcome

    def _free_slots(self) -> int:
        """Slots no run or buffered task will fill: what a completion may hand this worker."""
        if self._stopping:
            return 0
        return max(self.concurrency - len(self._runs) - len(self._buffer), 0)

    def _take_handed_off(self, tasks: Sequence[Task]) -> None:
        """Tasks the completion of their parents claimed for this worker (started by that
        claim): run them as if this worker had just claimed them. A concurrent claim may have
        filled the slots meanwhile: they wait in the buffer then, as tasks claimed ahead do."""
        if self._stopping:  # offered before the stop, handed after it: back to the queue
            for task in tasks:
                self._loop_task(self.broker.finish(Outcome(task, OutcomeKind.RELEASED)))
            return
        claimed_at = time.monotonic()
        self._buffer.extend([(task, claimed_at, True) for task in tasks])
        self._start_buffered()
        if self._buffer:
            self._slot_freed.set()  # the claim loop arms the hold limit of the buffer

    def _loop_task(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _cancel_run(self, task_id: uuid.UUID) -> None:
        """`tm.cancel` of a task this worker runs: stop the run now; the task is CANCELLED
        already and the run reports nothing. A sync thread sees current_task().cancelled."""
        run = self._runs.get(task_id)
        if run is None:
            for entry in self._buffer:
                if entry[0].id == task_id:  # claimed ahead, not started: it never runs
                    self._buffer.remove(entry)
                    self._forget([entry[0]])
                    break
            return
        if run.abandoned:
            return
        log.warning("task %s %s was cancelled; stopping its run", task_id, run.task.name)
        request_cancel(task_id)
        run.abandoned = True
        run.future.cancel()
        self._forget([run.task])

    def _forget(self, tasks: list[Task]) -> None:
        """broker.forget from synchronous code (the cancel callback)."""
        forgetting = asyncio.get_running_loop().create_task(self.broker.forget(tasks))
        self._forgetting.add(forgetting)
        forgetting.add_done_callback(self._forgetting.discard)

    def _cron_tasks(self) -> list[TaskFunction[Any]]:
        """The cron tasks this worker imported whose queue it serves: a worker schedules
        what it could run, nothing else (its broker queues their occurrences)."""
        defaults = self.settings.defaults
        return [
            task
            for name in registry.registered_names()
            if (task := registry.lookup(name))
            and task.schedule is not None
            and TaskOptions.resolve(task, defaults).queue in self.queues
        ]

    async def _heartbeat_loop(self) -> None:
        interval = self.broker_lease_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            runs = [run for run in self._runs.values() if not run.abandoned]
            buffered = [entry[0] for entry in self._buffer]
            try:
                lost = await self.broker.heartbeat([run.task for run in runs], buffered)
            except Exception as error:
                log.warning("heartbeat failed (%s); will try again in %.1fs", error, interval)
                continue
            forgotten = [entry[0] for entry in self._buffer if entry[0].id in lost]
            if forgotten:
                kept = [entry for entry in self._buffer if entry[0].id not in lost]
                self._buffer = collections.deque(kept)
            for run in runs:
                # A run that ended (or is committing its completion) while the heartbeat was
                # on its way is finished by this worker, not lost.
                finished = run.future.done() or self._runs.get(run.task.id) is not run
                if run.task.id in lost and not finished and not self._executor.completing(run.task):
                    log.warning(
                        "lease lost: task %s %s was taken over or cancelled; stopping this run",
                        run.task.id,
                        run.task.name,
                    )
                    run.abandoned = True
                    run.future.cancel(LEASE_LOST)
                    forgotten.append(run.task)
            if forgotten:
                await self.broker.forget(forgotten)

    async def _start_record_loop(self) -> None:
        """Write the starts of runs claimed ahead that last: within START_RECORD_SECONDS
        of their start, in one statement, so that a crash of this worker right after does
        not make a rescue take a run for one that never started."""
        while True:
            await self._starts_to_record.wait()
            await asyncio.sleep(START_RECORD_SECONDS / 2)
            older_than = time.monotonic() - START_RECORD_SECONDS / 2
            due, waiting = [], {}
            for task_id, (task, started) in self._unrecorded_starts.items():
                if task_id not in self._runs:
                    continue  # ended: its outcome carries its start
                if started <= older_than:
                    due.append(task)
                else:
                    waiting[task_id] = (task, started)
            self._unrecorded_starts = waiting
            if not waiting:
                self._starts_to_record.clear()
            if due:
                try:
                    await self.broker.record_starts(due)
                except Exception as error:  # the heartbeat records them too, a bit later
                    log.warning("could not record the start of %d runs: %s", len(due), error)

    @property
    def tasks_running(self) -> int:
        """How many tasks this worker runs now (its metrics' concurrency in use)."""
        return len(self._runs)

    @property
    def stopping(self) -> bool:
        """True once stop() or a signal took effect: no claim starts after it."""
        return self._stopping

    @property
    def stopped_at_once(self) -> bool:
        """True when a second signal (or stop(force=True)) ended the worker without a drain."""
        return self._forced

    def broker_lease_seconds(self) -> float:
        lease_seconds = self.broker.lease_seconds
        return float(self.settings.lease_seconds if lease_seconds is None else lease_seconds)

    async def _drain(self) -> None:
        """Let running tasks finish within the grace period, then give the rest back."""
        # Tasks claimed ahead never started: back to the queue at once, for other workers.
        await self._release_buffer("shutting down")
        if self._runs and not self._forced:
            log.info(
                "draining %d running tasks (up to %.0fs)",
                len(self._runs),
                self.shutdown_grace_seconds,
            )
            futures = [run.future for run in self._runs.values()]
            await asyncio.wait(futures, timeout=self.shutdown_grace_seconds)
        for run in list(self._runs.values()):
            if not run.abandoned and not self._forced:
                log.warning(
                    "releasing task %s %s unfinished at shutdown", run.task.id, run.task.name
                )
                await self.broker.finish(Outcome(run.task, OutcomeKind.RELEASED))
            run.abandoned = True
            run.future.cancel()
        pending = [run.future for run in self._runs.values()]
        if pending:  # let the cancelled runs unwind before the broker closes
            await asyncio.wait(pending, timeout=1)

    def _install_signal_handlers(self) -> list[signal.Signals]:
        assert self._loop is not None
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests, embedded use): stop() still works
        return installed

    def _on_signal(self, signum: signal.Signals) -> None:
        if self._stopping:
            log.warning("second %s: stopping at once", signum.name)
        else:
            log.info("%s: stop claiming, draining running tasks", signum.name)
        self._request_stop(force=self._stopping)

    def _remove_signal_handlers(self, signums: list[signal.Signals]) -> None:
        assert self._loop is not None
        for signum in signums:
            self._loop.remove_signal_handler(signum)
