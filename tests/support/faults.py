"""The fault-injection suite's tables, worker pool and assertions (tests/faults).

`effects` has one row per task (unique on task id), written by the task in the
transaction that records it COMPLETED; `executions` has one row per start, written
from a separate autocommit connection (tests/tasks/fault_tasks.py).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from .history import assert_history_exact
from .waiting import wait_until
from .workers import WorkerProcess

TABLES = """
CREATE TABLE effects (
    task_id uuid PRIMARY KEY,
    n integer NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE executions (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    kind text NOT NULL DEFAULT 'start',
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON executions (task_id);
"""

QUEUE = "faults"


def execution_count(db: psycopg.Connection[Any], kind: str = "start") -> int:
    row = db.execute("SELECT count(*) FROM executions WHERE kind = %s", (kind,)).fetchone()
    assert row is not None
    return int(row[0])


def task_row(db: psycopg.Connection[Any], task_id: uuid.UUID) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        cursor.execute(
            "SELECT status::text, attempts, error, result, lease_token, worker_id"
            " FROM pgqueue.tasks WHERE id = %s",
            (task_id,),
        )
        row = cursor.fetchone()
    assert row is not None, f"task {task_id} is gone"
    return row


def all_finished(db: psycopg.Connection[Any], ids: Sequence[uuid.UUID]) -> bool:
    row = db.execute(
        "SELECT count(*) FROM pgqueue.tasks WHERE id = ANY(%s)"
        " AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
        (list(ids),),
    ).fetchone()
    assert row is not None
    return int(row[0]) == len(ids)


def assert_exactly_once(db: psycopg.Connection[Any], ids: Sequence[uuid.UUID]) -> None:
    """Every task COMPLETED, with exactly one effect, written by its final attempt; and its
    history says so (support/history.py: completed once, by that attempt and process)."""
    wanted = list(ids)
    by_status = dict(
        db.execute(
            "SELECT status::text, count(*) FROM pgqueue.tasks WHERE id = ANY(%s) GROUP BY 1",
            (wanted,),
        ).fetchall()
    )
    assert by_status == {"COMPLETED": len(wanted)}, by_status
    effects, distinct, mismatched = db.execute(
        """
        SELECT count(*), count(DISTINCT e.task_id),
               count(*) FILTER (WHERE e.attempt <> t.attempts OR t.result <> to_jsonb(e.n))
        FROM effects AS e JOIN pgqueue.tasks AS t ON t.id = e.task_id
        WHERE e.task_id = ANY(%s)
        """,
        (wanted,),
    ).fetchone() or (0, 0, 0)
    assert (effects, distinct) == (len(wanted), len(wanted))
    # The committed effect belongs to the attempt that completed the task, never a stale one.
    assert mismatched == 0
    running = db.execute("SELECT count(*) FROM pgqueue.tasks WHERE status = 'RUNNING'").fetchone()
    assert running == (0,)
    assert_history_exact(db, wanted)


class WorkerPool:
    """Real `pgqueue worker` processes on the queue `faults`, with faults to inject."""

    def __init__(self, spawn: Callable[..., WorkerProcess], dsn: str) -> None:
        self._spawn = spawn
        self.dsn = dsn
        self.workers: list[WorkerProcess] = []
        self._options: dict[int, tuple[tuple[str, ...], dict[str, str]]] = {}
        self._supervisor: threading.Thread | None = None
        self._supervising = False
        self.respawned = 0

    def spawn(
        self,
        concurrency: int = 4,
        lease: float = 2.0,
        interval: float = 0.5,
        grace: float = 10.0,
        via_dsn: str | None = None,
        queues: str = QUEUE,
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> WorkerProcess:
        args = (
            "--import",
            "fault_tasks",
            "-q",
            queues,
            "-c",
            str(concurrency),
            "-i",
            str(interval),
            "--grace",
            str(grace),
            *extra_args,
        )
        env = {
            "PGQUEUE_LEASE_SECONDS": str(lease),
            "PGQUEUE_DSN": via_dsn or self.dsn,
            "FAULTS_DSN": self.dsn,
            # Connections that name no application (the main pool) show up as this one.
            "PGAPPNAME": "pgqueue-worker",
            **(extra_env or {}),
        }
        worker = self._spawn(*args, env=env)
        self.workers.append(worker)
        self._options[id(worker)] = (args, env)
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process.poll() is None]

    def kill_random(self, rng: random.Random) -> WorkerProcess | None:
        alive = self.alive()
        if not alive:
            return None
        victim = rng.choice(alive)
        victim.kill()
        return victim

    def supervise(self) -> None:
        """Replace any worker that dies (SIGKILL, poison task) until stop_supervising()."""
        self._supervising = True

        def loop() -> None:
            while self._supervising:
                for worker in list(self.workers):
                    if worker.process.poll() is not None and id(worker) in self._options:
                        args, env = self._options.pop(id(worker))
                        fresh = self._spawn(*args, env=env)
                        self.workers.append(fresh)
                        self._options[id(fresh)] = (args, env)
                        self.respawned += 1
                time.sleep(0.1)

        self._supervisor = threading.Thread(target=loop, daemon=True)
        self._supervisor.start()

    def stop_supervising(self) -> None:
        self._supervising = False
        if self._supervisor is not None:
            self._supervisor.join(5)

    def outputs(self) -> str:
        return "\n".join(w.output for w in self.workers)


def wait_for_worker_ready(db: psycopg.Connection[Any], count: int = 1) -> None:
    """Until `count` workers hold their LISTEN connection (they are claiming by then)."""
    wait_until(
        lambda: (
            (
                db.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = 'pgqueue-listener'"
                ).fetchone()
                or (0,)
            )[0]
            >= count
        ),
        timeout=30,
    )
