"""Upkeep that every Postgres worker runs: rescue tasks of vanished workers, delete old ones."""

from __future__ import annotations

import asyncio
import logging
import time

from pgqueue.db.database import UNAVAILABLE, Database
from pgqueue.loops import BackgroundLoop
from pgqueue.records import CleanupPolicy

log = logging.getLogger("pgqueue.maintenance")

CLEANUP_BATCH_SIZE = 1000


def rescue_interval(lease_seconds: float) -> float:
    """How often to look for expired leases: a quarter lease, between 0.25 s and 5 s."""
    return min(max(lease_seconds / 4, 0.25), 5.0)


def _reraise_pending_cancel() -> None:
    """stop() cancelled us, but the cancel was swallowed on its way through the database
    code (seen while the server refused connections): honour it, or stop() waits forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Maintenance(BackgroundLoop):
    """Rescue runs every few seconds on every worker (cheap, idempotent); cleanup runs
    on one worker at a time (advisory lock) in bounded batches."""

    name = "pgqueue-maintenance"

    def __init__(
        self, database: Database, lease_seconds: float, cleanup: CleanupPolicy | None
    ) -> None:
        super().__init__()
        self._database = database
        self._interval = rescue_interval(lease_seconds)
        self._cleanup = cleanup
        self._next_cleanup = time.monotonic()

    async def _run(self) -> None:
        while True:
            try:
                await self.rescue()
                if self._cleanup and time.monotonic() >= self._next_cleanup:
                    await self.cleanup(self._cleanup.retain_days * 86400)
                    self._next_cleanup = time.monotonic() + self._cleanup.interval_hours * 3600
            except UNAVAILABLE as error:
                log.warning("maintenance skipped, database unavailable: %s", error)
            _reraise_pending_cancel()
            await asyncio.sleep(self._interval)

    async def rescue(self) -> int:
        async with self._database.async_connection() as conn:
            cursor = await conn.execute(self._database.queries["rescue_expired_leases"])
            rescued = (await cursor.fetchone())[0]  # type: ignore[index]
            # Producers stop waking workers that vanished asleep (a few rows at most).
            await conn.execute(self._database.queries["forget_absent_sleepers"])
            # Limit slots counted from the RUNNING rows: a crash never leaks one for long.
            await conn.execute(self._database.queries["recount_limit_usage"])
        if rescued:
            log.warning("rescued %d tasks whose workers stopped renewing their leases", rescued)
        return int(rescued)

    async def cleanup(self, older_than_seconds: float) -> int:
        """Delete finished tasks older than the retention; 0 if another worker is on it.

        Each batch holds the maintenance lock for its own transaction only (a session lock
        would not survive a transaction-mode pooler): runners do not delete side by side.
        """
        queries = self._database.queries
        deleted = 0
        async with self._database.async_connection() as conn:
            while True:
                cursor = await conn.execute(
                    queries["cleanup_tasks"],
                    {"older_than": older_than_seconds, "batch_size": CLEANUP_BATCH_SIZE},
                )
                batch = (await cursor.fetchone())[0]  # type: ignore[index]
                if batch < 0:  # another worker is deleting a batch
                    break
                deleted += batch
                if batch < CLEANUP_BATCH_SIZE:
                    break
        if deleted:
            log.info(
                "cleanup deleted %d finished tasks older than %.1f days",
                deleted,
                older_than_seconds / 86400,
            )
        return deleted
