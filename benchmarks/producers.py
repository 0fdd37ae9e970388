"""Concurrent producers and wake-ups: tasks/s queued one per transaction through
`.delay(connection=...)` by 4, 16 and 64 producer threads, with the wake-up as revision 0001
had it (a statement trigger, always NOTIFY), as revision 0004 had it (a statement trigger that
takes a per-queue advisory lock and notifies only a queue with a sleeping worker), with none
(no trigger, a plain INSERT), and as it is now (revision 0012: the INSERT looks for a sleeping
worker itself; the row trigger for other SQL does not fire for it). No worker sleeps here.
Interleaved: every repetition runs every (producers, variant) pair, in an order that rotates.

    .venv/bin/python benchmarks/producers.py [--quick] [--seconds S] [--reps N] [--out DIR]

BENCH_ADMIN_DSN (default postgresql://postgres@127.0.0.1:5432/postgres) must be allowed to
create the database bench_producers, which is dropped at the end. `make bench` runs it
after run.py; it writes <out>/<UTC timestamp>-producers.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pgqueue import AsyncTask, TaskManager  # noqa: E402
from pgqueue.db.migrations import upgrade  # noqa: E402

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "bench_producers"
PRODUCERS = (4, 16, 64)
TRIGGERS = ("0001", "0004", "off", "new")

# Revision 0001's trigger function: one NOTIFY per queue and statement, always.
ALWAYS_NOTIFY = """
CREATE FUNCTION pgqueue.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue.tasks', queue)
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues;
    RETURN NULL;
END;
$$
"""

# Revision 0004's: a shared advisory lock per queue, then NOTIFY if a worker sleeps there.
NOTIFY_IF_ASLEEP = """
CREATE FUNCTION pgqueue.notify_new_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('pgqueue.wake'), hashtext(queue))
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues;
    PERFORM pg_notify('pgqueue.tasks', queue)
    FROM (SELECT DISTINCT queue FROM new_tasks) AS queues
    WHERE current_setting('transaction_isolation') <> 'read committed'
       OR EXISTS (SELECT FROM pgqueue.sleeping_workers AS s WHERE s.queue = queues.queue);
    RETURN NULL;
END;
$$
"""

STATEMENT_TRIGGER = """
CREATE TRIGGER tasks_notify_insert AFTER INSERT ON pgqueue.tasks
REFERENCING NEW TABLE AS new_tasks FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_new_tasks()
"""

# insert_task before revision 0012: the INSERT alone (the trigger, if any, wakes workers).
PLAIN_INSERT = """
INSERT INTO pgqueue.tasks (id, name, queue, priority, kwargs, max_retries, run_at, trace_context)
VALUES (%(id)s, %(name)s, %(queue)s, %(priority)s, %(kwargs)s::jsonb, %(max_retries)s,
        COALESCE(%(schedule_at)s::timestamptz, now() + %(delay)s * interval '1 second'),
        %(trace_context)s::jsonb)
"""


@AsyncTask(queue="bench-producers")
async def produced(i: int) -> None:
    """Never run: only queued."""


def set_trigger(dsn: str, variant: str, current: tuple[str, str]) -> None:
    """Put the variant's trigger in place (`current`: the migrated function and trigger)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.tasks")
        conn.execute("DELETE FROM pgqueue.sleeping_workers")
        conn.execute("DROP TRIGGER IF EXISTS tasks_notify_insert ON pgqueue.tasks")
        conn.execute("DROP FUNCTION IF EXISTS pgqueue.notify_new_tasks()")
        if variant == "new":
            for statement in current:
                conn.execute(statement)
        elif variant != "off":
            conn.execute(ALWAYS_NOTIFY if variant == "0001" else NOTIFY_IF_ASLEEP)
            conn.execute(STATEMENT_TRIGGER)
        conn.execute("CHECKPOINT")


def use_insert(tm: TaskManager, variant: str, current_insert: str) -> None:
    """The INSERT the variant's producers send: revision 0012's looks itself."""
    store = tm.broker.store  # type: ignore[attr-defined]
    store.queries = {
        **store.queries,
        "insert_task": current_insert if variant == "new" else PLAIN_INSERT,
    }


def backend_cpu_seconds(pid: int) -> float:
    """CPU time used so far by a server process on this machine (utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    dsn: str, tm: TaskManager, producers: int, seconds: float
) -> tuple[float, float, float]:
    """Tasks committed per second by `producers` threads, each on its own connection, and
    the CPU each task cost the server (their backends) and this process, in µs. The CPU
    figures depend far less on what else the machine runs than the rate does."""
    counts = [0] * producers
    server_cpu = [0.0] * producers
    start = threading.Barrier(producers + 1)
    stop = threading.Event()

    def produce(k: int) -> None:
        with psycopg.connect(dsn) as conn:
            tm.queue_task(produced, connection=conn, i=0)  # warm: connection, statement
            conn.commit()
            pid = conn.info.backend_pid
            start.wait()
            server_cpu[k] = -backend_cpu_seconds(pid)
            while not stop.is_set():
                tm.queue_task(produced, connection=conn, i=k)
                conn.commit()
                counts[k] += 1
            server_cpu[k] += backend_cpu_seconds(pid)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    client_cpu = -time.process_time()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    client_cpu += time.process_time()
    tasks = max(sum(counts), 1)
    rate = sum(counts) / (time.perf_counter() - began)
    return rate, sum(server_cpu) / tasks * 1e6, client_cpu / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per measurement, 2 reps")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--producers", type=int, nargs="+", default=PRODUCERS, help="producer counts to run"
    )
    args = parser.parse_args()
    producers = tuple(args.producers)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    reps = args.reps or (2 if args.quick else 3)

    dsn = make_conninfo(ADMIN_DSN, dbname=DATABASE)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    try:
        upgrade(dsn)
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT pg_get_functiondef('pgqueue.notify_new_tasks'::regproc), "
                "pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'tasks_notify_insert'"
            ).fetchone()
        assert row is not None
        current = (row[0], row[1])
        results: dict[tuple[int, str], list[float]] = {}
        cpu: dict[tuple[int, str], list[tuple[float, float]]] = {}
        tm = TaskManager(dsn=dsn)
        current_insert = tm.broker.store.queries["insert_task"]  # type: ignore[attr-defined]
        pairs = [(p, t) for p in producers for t in TRIGGERS]
        for rep in range(reps):
            shift = rep % len(TRIGGERS)
            for p in producers:
                for t in TRIGGERS[shift:] + TRIGGERS[:shift]:
                    set_trigger(dsn, t, current)
                    use_insert(tm, t, current_insert)
                    rate, server, client = measure(dsn, tm, p, seconds)
                    results.setdefault((p, t), []).append(rate)
                    cpu.setdefault((p, t), []).append((server, client))
                    print(
                        f"rep {rep + 1}: {p:3d} producers, {t:4s} {rate:8,.0f}/s, CPU per "
                        f"task: server {server:4.0f} µs, producers {client:4.0f} µs",
                        flush=True,
                    )
        tm.close()
        set_trigger(dsn, "new", current)
        report = render(results, cpu, pairs, seconds, reps)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"{stamp}-producers.md").write_text(report)


def render(
    results: dict[tuple[int, str], list[float]],
    cpu: dict[tuple[int, str], list[tuple[float, float]]],
    pairs: list[tuple[int, str]],
    seconds: float,
    reps: int,
) -> str:
    def median(p: int, t: str) -> float:
        return statistics.median(results[(p, t)])

    def cpu_median(p: int, t: str, which: int) -> float:
        return statistics.median(sample[which] for sample in cpu[(p, t)])

    counts = sorted({p for p, _ in pairs})
    header = (
        "| producers | NOTIFY always (0001) | trigger looks (0004) | no wake-up "
        "| INSERT looks (0012) | 0001/off | 0004/off | 0012/off |"
    )
    lines = [
        f"# Concurrent producers: tasks/s, one per transaction ({reps} reps of {seconds:g} s, "
        f"median (min-max))",
        "",
        f"load average {os.getloadavg()[0]:.1f}; `{' '.join(sys.argv)}`",
        "",
        header,
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in counts:
        cells = [
            f"{median(p, t):,.0f} ({min(results[(p, t)]):,.0f}-{max(results[(p, t)]):,.0f})"
            for t in TRIGGERS
        ]
        always, looks, off, new = (median(p, t) for t in TRIGGERS)
        lines.append(
            f"| {p} | {' | '.join(cells)} | {always / off:.2f} | {looks / off:.2f} "
            f"| {new / off:.2f} |"
        )
    lines += [
        "",
        "CPU per task, µs (median): server backends + this process of producer threads; "
        "the ratios compare the totals (off/variant: the rate the CPU would allow)",
        "",
        header,
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in counts:
        totals = {t: cpu_median(p, t, 0) + cpu_median(p, t, 1) for t in TRIGGERS}
        cells = [f"{cpu_median(p, t, 0):,.0f} + {cpu_median(p, t, 1):,.0f}" for t in TRIGGERS]
        ratios = [totals["off"] / totals[t] for t in ("0001", "0004", "new")]
        lines.append(
            f"| {p} | {' | '.join(cells)} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
