"""What every upkeep loop of a worker shares (the heartbeat, the LISTEN connection, the
completer, the maintenance, cron, the worker registry, the outbox relay, the RabbitMQ
broker's loops): one named asyncio task that `stop()` cancels and awaits, supervised so
that a loop that raises is logged with its traceback and started again after a pause,
and a doubling pause between attempts while the database or broker is away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("pgqueue.background")

T = TypeVar("T")

#: Pauses before a crashed loop starts again: doubling from the first to the most; a loop
#: that ran this long without crashing starts again after the first pause.
RESTART_FIRST_SECONDS = 0.5
RESTART_MOST_SECONDS = 30.0


class BackgroundLoop:
    """Runs `_run()` as a task named `name` from `start()` until `stop()`.

    `_run` is expected to loop until cancelled. If it raises (a bug, or an error it did
    not expect), the traceback is logged and `_run` starts again after a pause that
    doubles with each crash in a row: no loop of a worker ends in silence.
    """

    name = "pgqueue-loop"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        #: How many times `_run` raised and was started again (tests, metrics).
        self.restarts = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _supervise(self) -> None:
        backoff = Backoff(first=RESTART_FIRST_SECONDS, most=RESTART_MOST_SECONDS)
        while True:
            began = time.monotonic()
            try:
                await self._run()
                return  # the loop chose to end
            except asyncio.CancelledError:
                raise
            except Exception:
                if time.monotonic() - began > RESTART_MOST_SECONDS:
                    backoff.reset()
                log.exception("%s crashed; starting it again in %.1fs", self.name, backoff.seconds)
                self.restarts += 1
                self._crashed()
                await backoff.sleep()

    def _crashed(self) -> None:
        """Called after `_run` raised, before it starts again (reset what it left)."""

    async def _run(self) -> None:
        raise NotImplementedError


class SupervisedTask(BackgroundLoop):
    """A BackgroundLoop around a coroutine function: `SupervisedTask("name", loop).start()`."""

    def __init__(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.name = name
        self._body = run

    async def _run(self) -> None:
        await self._body()


class Backoff:
    """Pauses after failed attempts: `first` seconds, doubling up to `most`; `reset()`
    after a success. `await backoff.pause(log, "relay paused (%s)", error)` logs
    "relay paused (...); retrying in 0.1s" and sleeps that long."""

    def __init__(self, first: float, most: float) -> None:
        self.first = first
        self.most = most
        self.seconds = first

    def reset(self) -> None:
        self.seconds = self.first

    async def pause(self, log: logging.Logger, message: str, *args: object) -> None:
        """Log `message % args` with the pause appended, then sleep it."""
        log.warning(message + "; retrying in %.1fs", *args, self.seconds)
        await self.sleep()

    async def sleep(self) -> None:
        """Sleep the current pause, and double the next one."""
        await asyncio.sleep(self.seconds)
        self.seconds = min(self.seconds * 2, self.most)


async def retrying(
    call: Callable[[], Awaitable[T]],
    errors: tuple[type[BaseException], ...],
    backoff: Backoff,
    log: logging.Logger,
    what: str,
    *,
    give_up: Callable[[], bool] = lambda: False,
) -> T:
    """`await call()` until it raises none of `errors` (an outage: the database or broker is
    away), each failure logged as "<what> (<error>); retrying in 0.4s" and waited out, the
    pause doubling. A failure while `give_up()` is true is raised instead (stopping)."""
    while True:
        try:
            return await call()
        except errors as error:
            if give_up():
                raise
            await backoff.pause(log, "%s (%s)", what, error)
