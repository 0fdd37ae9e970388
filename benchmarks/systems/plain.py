"""Plain psycopg 3 baselines: what the SQL alone costs, without a queue library.

plain-single: one job claimed (UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED
              LIMIT 1)) and completed per transaction, one loop per concurrency slot.
plain-batch:  100 rows claimed per statement (one commit), run, then completed in one
              statement (one commit); one loop per concurrency slot.
Enqueue: INSERT-and-commit loop for one per transaction (both); bulk is one
``INSERT ... SELECT FROM unnest`` per batch for plain-single and ``COPY`` for plain-batch.
A FOR EACH STATEMENT trigger sends one fixed NOTIFY per insert statement; idle loops
wait on it (with a 1 s poll as a safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import psycopg
from psycopg.types.json import Jsonb

from systems import BaseSystem

SCHEMA = """
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    queue text NOT NULL DEFAULT 'bench',
    status text NOT NULL DEFAULT 'pending',
    args jsonb NOT NULL DEFAULT '{}',
    run_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX jobs_pending ON jobs (queue, run_at, id) WHERE status = 'pending';
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('jobs', ''); RETURN NULL; END $$;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();
"""

PICK = (
    "SELECT id FROM jobs WHERE status = 'pending' AND queue = 'bench' AND run_at <= now()"
    " ORDER BY run_at, id FOR UPDATE SKIP LOCKED LIMIT {n}"
)
CLAIM_ONE = (
    "UPDATE jobs SET status = 'running', started_at = now() "
    f"WHERE id = ({PICK.format(n=1)}) RETURNING id, args"
)
COMPLETE_ONE = "UPDATE jobs SET status = 'done', finished_at = now() WHERE id = %s"
CLAIM_BATCH = (
    "UPDATE jobs SET status = 'running', started_at = now() "
    f"WHERE id IN ({PICK.format(n=100)}) RETURNING id, args"
)
COMPLETE_BATCH = "UPDATE jobs SET status = 'done', finished_at = now() WHERE id = ANY(%s)"
INSERT_ONE = "INSERT INTO jobs (args) VALUES (%s)"


async def noop(args: dict) -> None:
    if "i" in args:
        from wakeup import record

        record(args["i"])


class _Plain(BaseSystem):
    supports_scale = True
    batch_claim = False

    def install_schema(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)

    async def open(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = await psycopg.AsyncConnection.connect(dsn)

    async def close(self) -> None:
        await self.conn.close()

    async def enqueue_one(self, n: int) -> None:
        empty = Jsonb({})
        for _ in range(n):
            await self.conn.execute(INSERT_ONE, [empty], prepare=True)
            await self.conn.commit()

    async def enqueue_wakeup(self, i: int) -> float:
        import time

        await self.conn.execute(INSERT_ONE, [Jsonb({"i": i})], prepare=True)
        await self.conn.commit()
        return time.time()

    def finished_sql(self, n: int) -> str:
        return "SELECT count(*) FROM jobs WHERE status = 'done'"

    async def seed_finished(self, n: int) -> None:
        await self.conn.execute(
            "INSERT INTO jobs (status, started_at, finished_at) "
            "SELECT 'done', now(), now() FROM generate_series(1, %s)",
            [n],
        )
        await self.conn.commit()

    # ------------------------------------------------------------ worker side

    @classmethod
    def run_worker(cls, dsn: str, concurrency: int) -> None:
        asyncio.run(cls._worker(dsn, concurrency))

    @classmethod
    async def _worker(cls, dsn: str, concurrency: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: os._exit(0))  # nothing to flush
        cond = asyncio.Condition()
        state = {"gen": 0}
        listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await listener.execute("LISTEN jobs")

        async def listen() -> None:
            async for _ in listener.notifies():
                async with cond:
                    state["gen"] += 1
                    cond.notify_all()

        loop_fn = cls._batch_loop if cls.batch_claim else cls._single_loop
        tasks = [asyncio.create_task(listen())]
        tasks += [asyncio.create_task(loop_fn(dsn, cond, state)) for _ in range(concurrency)]
        await stop.wait()
        for t in tasks:
            t.cancel()

    @staticmethod
    async def _idle(cond: asyncio.Condition, state: dict, seen: int) -> None:
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait_for(lambda: state["gen"] != seen), 1.0)

    @classmethod
    async def _single_loop(cls, dsn: str, cond: asyncio.Condition, state: dict) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn)
        while True:
            seen = state["gen"]
            cur = await conn.execute(CLAIM_ONE, prepare=True)
            row = await cur.fetchone()
            if row is None:
                await conn.commit()
                await cls._idle(cond, state, seen)
                continue
            await noop(row[1])
            await conn.execute(COMPLETE_ONE, [row[0]], prepare=True)
            await conn.commit()

    @classmethod
    async def _batch_loop(cls, dsn: str, cond: asyncio.Condition, state: dict) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn)
        while True:
            seen = state["gen"]
            cur = await conn.execute(CLAIM_BATCH, prepare=True)
            rows = await cur.fetchall()
            await conn.commit()
            if not rows:
                await cls._idle(cond, state, seen)
                continue
            for _, args in rows:
                await noop(args)
            await conn.execute(COMPLETE_BATCH, [[r[0] for r in rows]], prepare=True)
            await conn.commit()


class PlainSingle(_Plain):
    name = "plain-single"
    label = "plain: 1 claim/txn"
    batch_claim = False

    async def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            await self.conn.execute(
                "INSERT INTO jobs (args) SELECT a FROM unnest(%s::jsonb[]) AS a", [[Jsonb({})] * k]
            )
            await self.conn.commit()


class PlainBatch(_Plain):
    name = "plain-batch"
    label = "plain: 100-row batch"
    batch_claim = True

    async def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            async with self.conn.cursor() as cur, cur.copy("COPY jobs (args) FROM STDIN") as copy:
                for _ in range(k):
                    await copy.write_row(["{}"])
            await self.conn.commit()
