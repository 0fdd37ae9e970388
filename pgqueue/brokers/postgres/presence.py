"""The worker registry: each worker's row in `pgqueue.workers`, written by the database broker.

A worker registers when it opens, renews its row at every heartbeat (with the number of
tasks it runs), and deletes it on a clean exit. Rows of workers that vanished expire after
three of their leases without a heartbeat; `pgqueue.live_workers` shows the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pgqueue.db.database import UNAVAILABLE, Database
from pgqueue.loops import SupervisedTask
from pgqueue.records import WorkerInfo

log = logging.getLogger("pgqueue.presence")


class WorkerRegistry:
    """One worker's row; every method logs and carries on when the database is away (a
    registry write that fails for that is skipped, never fatal)."""

    def __init__(
        self,
        database: Database,
        worker_id: str,
        queues: Sequence[str],
        info: WorkerInfo,
        lease_seconds: float,
    ) -> None:
        self._database = database
        self._worker_id = worker_id
        self._queues = list(queues)
        self._info = info
        self._lease_seconds = lease_seconds
        self._registration = SupervisedTask("pgqueue-register", self._register_once)

    def start(self) -> None:
        """Register in the background: a worker starts even while the database is away."""
        self._registration.start()

    async def close(self) -> None:
        """The clean exit: stop a registration still under way, then delete the row."""
        await self._registration.stop()
        await self.unregister()

    async def _register_once(self) -> None:
        await self.register()

    async def register(self) -> bool:
        """Insert (or refresh) this worker's row; False if the database could not be reached."""
        try:
            async with self._database.async_connection() as conn:
                await conn.execute(
                    self._database.queries["register_worker"],
                    {
                        "id": self._worker_id,
                        "host": self._info.host,
                        "pid": self._info.pid,
                        "queues": self._queues,
                        "concurrency": self._info.concurrency,
                        "version": self._info.version,
                        "lease_seconds": self._lease_seconds,
                    },
                )
                # What it can run, for `pgqueue tasks explain` (sql/features.sql).
                await conn.execute(
                    self._database.queries["set_worker_task_names"],
                    {"id": self._worker_id, "task_names": list(self._info.task_names)},
                )
        except UNAVAILABLE as error:
            log.warning("could not register worker %s: %s", self._worker_id, error)
            return False
        return True

    async def heartbeat(self, tasks_running: int) -> None:
        """Renew the row (registering again if it expired) and expire vanished workers."""
        try:
            async with self._database.async_connection() as conn:
                cursor = await conn.execute(
                    self._database.queries["worker_heartbeat"],
                    {"id": self._worker_id, "tasks_running": tasks_running},
                )
                row = await cursor.fetchone()
        except UNAVAILABLE as error:
            log.warning("worker heartbeat skipped, database unavailable: %s", error)
            return
        if row is not None and row[1]:
            log.info("expired %d workers that stopped sending heartbeats", row[1])
        if row is not None and not row[0]:
            # Our row expired (the database was away longer than three leases): come back.
            await self.register()

    async def unregister(self) -> None:
        """Delete the row on a clean exit; if that fails, the row expires on its own."""
        try:
            async with self._database.async_connection() as conn:
                await conn.execute(
                    self._database.queries["unregister_worker"], {"id": self._worker_id}
                )
        except UNAVAILABLE as error:
            log.warning("could not unregister worker %s: %s", self._worker_id, error)
