"""What every upkeep loop of a worker shares (the LISTEN connection, the completer, the
maintenance, cron, the outbox relay): one named asyncio task that `stop()` cancels and
awaits, and a doubling pause between attempts while the database or broker is away."""

from __future__ import annotations

import asyncio
import logging


class BackgroundLoop:
    """Runs `_run()` as a task named `name` from `start()` until `stop()`."""

    name = "pgqueue-loop"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError


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
        await asyncio.sleep(self.seconds)
        self.seconds = min(self.seconds * 2, self.most)


def first_line(error: BaseException) -> str:
    """An error as one line: libpq's messages run over several."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
