"""The dashboard at scale: load 1,000,000 tasks and 10,000,000 events, time every page.

    .venv/bin/python benchmarks/dashboard_pages.py                  # 1M tasks, 10M events
    .venv/bin/python benchmarks/dashboard_pages.py --tasks 100000 --events 1000000 --keep

Runs in the project's own venv (pgqueue[web]), not benchmarks/.venv. The database
`bench_dashboard` is filled with generate_series (ids shaped like pgqueue's UUIDv7, over the
last 24 hours: 96% completed, 2% failed, 0.5% cancelled, the rest pending, retrying or
running, in 8 queues and 20 task names), then VACUUM ANALYZE. Each page is requested in
process through the ASGI app (routing, queries and templates: all the server does) and
timed over --repeat requests after one warm-up (its time is printed as "first": the
overview's first view reads the whole last hour, later ones only its last minutes); then
EXPLAIN of each dashboard query shows which indexes it reads. Dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ADMIN_DSN, dsn_for  # noqa: E402

from pgqueue.db import migrations  # noqa: E402
from pgqueue.db.queries import queries  # noqa: E402
from pgqueue.ops.dashboard import TaskFilter  # noqa: E402
from pgqueue.records import TaskStatus  # noqa: E402

DBNAME = "bench_dashboard"
LIMIT_MS = 200.0

# A UUIDv7-shaped id from a time: 48 bits of milliseconds, version 7, random rest.
UUID7 = """(lpad(to_hex((extract(epoch FROM {at}) * 1000)::bigint), 12, '0')
           || '7' || substr(md5(random()::text), 1, 3)
           || '8' || substr(md5(random()::text), 1, 15))::uuid"""

LOAD_TASKS = f"""
INSERT INTO pgqueue.tasks (id, name, queue, status, kwargs, attempts, max_retries, run_at,
                           created_at, started_at, finished_at, result, error, worker_id,
                           lease_expires_at)
SELECT {UUID7.format(at="s.created")}, 'app.jobs.job_' || (s.n %% 20), 'queue-' || (s.n %% 8),
       s.status::pgqueue.task_status,
       jsonb_build_object('user_id', s.n %% 10000, 'plan', CASE WHEN s.n %% 3 = 0 THEN 'pro'
                          ELSE 'free' END, 'password', 'hunter2'),
       CASE WHEN s.status IN ('PENDING') THEN 0 WHEN s.status = 'FAILED' THEN 4 ELSE 1 END,
       3, s.created, s.created,
       CASE WHEN s.status NOT IN ('PENDING') THEN s.created + interval '50 ms' END,
       CASE WHEN s.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
            THEN s.created + interval '150 ms' END,
       CASE WHEN s.status = 'COMPLETED' THEN '{{"ok": true}}'::jsonb END,
       CASE WHEN s.status IN ('FAILED', 'RETRYING')
            THEN (ARRAY['ValueError: user ' || (s.n %% 997) || ' not found',
                        'TimeoutError: upstream took ' || (s.n %% 60) || ' s',
                        'KeyError: ''plan_' || (s.n %% 7) || '''',
                        'ConnectionError: host 10.0.' || (s.n %% 250) || '.1 refused'])[s.n %% 4 + 1]
                 || E'\\n\\nTraceback (most recent call last):\\n  File "app/jobs.py", line 12'
       END,
       CASE WHEN s.status = 'RUNNING' THEN 'bench-worker-' || (s.n %% 4) END,
       CASE WHEN s.status = 'RUNNING' THEN now() + interval '1 hour' END
FROM (
    SELECT n, now() - (n::double precision / %(tasks)s) * interval '24 hours' AS created,
           CASE WHEN n %% 1000 < 960 THEN 'COMPLETED'
                WHEN n %% 1000 < 980 THEN 'FAILED'
                WHEN n %% 1000 < 985 THEN 'CANCELLED'
                WHEN n %% 1000 < 995 THEN 'PENDING'
                WHEN n %% 1000 < 998 THEN 'RETRYING'
                ELSE 'RUNNING' END AS status
    FROM generate_series(1, %(tasks)s) AS n
) AS s
"""

# Events beyond the "enqueued" ones the insert trigger wrote: started, failed,
# retry_scheduled, ... spread over the tasks, up to --events rows in all.
LOAD_EVENTS = """
INSERT INTO pgqueue.task_events (task_id, at, event, attempt, worker_id, error)
SELECT t.id, t.created_at + g.k * interval '10 ms',
       (ARRAY['started', 'failed', 'retry_scheduled', 'started', 'completed'])[g.k %% 5 + 1],
       g.k / 2 + 1, 'bench-worker-1',
       CASE WHEN g.k %% 5 = 1 THEN 'ValueError: attempt ' || g.k END
FROM pgqueue.tasks AS t, generate_series(1, %(per_task)s) AS g(k)
"""


def load(dsn: str, tasks: int, events: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        conn.execute(LOAD_TASKS, {"tasks": tasks})
        have = conn.execute("SELECT count(*) FROM pgqueue.task_events").fetchone()
        assert have is not None
        per_task = max(0, round((events - have[0]) / tasks))
        if per_task:
            conn.execute(LOAD_EVENTS, {"per_task": per_task})
        conn.execute(
            "INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, version, "
            "lease_seconds) SELECT 'bench-worker-' || n, 'bench', n, "
            "ARRAY['queue-0', 'queue-1', 'queue-2', 'queue-3'], 20, 'bench', 3600 "
            "FROM generate_series(0, 3) AS n"
        )
        conn.execute("VACUUM ANALYZE pgqueue.tasks")
        conn.execute("VACUUM ANALYZE pgqueue.task_events")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM pgqueue.tasks), (SELECT count(*) FROM "
            "pgqueue.task_events)"
        ).fetchone()
        assert counts is not None
        print(
            f"loaded {counts[0]:,} tasks and {counts[1]:,} events in "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )


def sample_ids(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        failed = conn.execute(
            "SELECT id FROM pgqueue.tasks WHERE status = 'FAILED' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        middle = conn.execute(
            "SELECT id FROM pgqueue.tasks ORDER BY id DESC OFFSET 500000 LIMIT 1"
        ).fetchone()
    assert failed is not None
    return {"failed": failed[0], "middle": middle[0] if middle else failed[0]}


def pages(ids: dict[str, Any]) -> list[str]:
    return [
        "/",
        "/queues",
        "/tasks",
        f"/tasks?before={ids['middle']}",
        "/tasks?status=failed",
        "/tasks?status=cancelled",
        "/tasks?status=completed",
        "/tasks?status=pending",
        "/tasks?status=running",
        "/tasks?queue=queue-3",
        "/tasks?name=app.jobs.job_7",
        '/tasks?q={"user_id": 42}',
        "/tasks?status=failed&queue=queue-1&name=app.jobs.job_9",
        "/tasks/retry?status=failed&queue=queue-1",
        f"/tasks/{ids['failed']}",
        "/failures",
        "/workers",
        "/cron",
    ]


def time_pages(dsn: str, paths: list[str], repeat: int) -> list[tuple[str, float, float]]:
    from starlette.testclient import TestClient

    from pgqueue.web import create_app

    client = TestClient(create_app(dsn))
    rows = []
    for path in paths:
        started = time.perf_counter()
        assert client.get(path).status_code == 200, path  # warm-up (and a check)
        first = (time.perf_counter() - started) * 1000
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, path
        rows.append((path, statistics.median(times), max(times)))
        print(
            f"{path:60s} median {rows[-1][1]:7.1f} ms  max {rows[-1][2]:7.1f} ms  "
            f"(first {first:6.1f} ms)",
            flush=True,
        )
    return rows


def explain(dsn: str, ids: dict[str, Any]) -> None:
    """Which indexes each dashboard query reads (EXPLAIN, the plan's scan nodes)."""
    failed = TaskFilter(status=TaskStatus.FAILED).params()
    hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    anything = TaskFilter().params()
    plans = {
        "dashboard_active_counts": {},
        "dashboard_problem_counts": {},
        "dashboard_recent_activity (the hour)": {"since": hour_ago, "bucket_seconds": 60},
        "dashboard_tasks_page (no filter)": {
            **anything,
            "before": None,
            "limit": 50,
            "scan": 10000,
        },
        "dashboard_tasks_page (status=failed)": {
            **failed,
            "before": None,
            "limit": 50,
            "scan": 10000,
        },
        "dashboard_failure_groups": {"scan": 10000, "limit": 50},
        "dashboard_running_tasks": {"limit": 1000},
        "dashboard_fingerprint": {},
        "task_history": {"id": ids["failed"]},
    }
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        for label, params in plans.items():
            name = label.split(" ")[0]
            rows = conn.execute("EXPLAIN (FORMAT JSON) " + queries()[name], params).fetchone()
            assert rows is not None
            scans = sorted(set(_scans(rows[0][0]["Plan"])))
            print(f"{label:40s} {', '.join(scans)}")


def _scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if "Index Name" in plan:
        found.append(f"{plan['Node Type']} on {plan['Index Name']}")
    elif "Relation Name" in plan and plan["Node Type"] != "Bitmap Heap Scan":
        found.append(f"{plan['Node Type']} of {plan['Relation Name']}")
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    args = parser.parse_args()
    dsn = dsn_for(DBNAME)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBNAME,)).fetchone()
        if not (exists and args.keep):
            admin.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{DBNAME}"')
            migrations.upgrade(dsn)
            load(dsn, args.tasks, args.events)
    try:
        ids = sample_ids(dsn)
        rows = time_pages(dsn, pages(ids), args.repeat)
        explain(dsn, ids)
        slowest = max(rows, key=lambda row: row[1])
        verdict = "every page under" if slowest[1] < LIMIT_MS else "NOT every page under"
        print(json.dumps({"slowest": slowest[0], "median_ms": round(slowest[1], 1)}))
        print(f"{verdict} {LIMIT_MS:.0f} ms (median)")
    finally:
        if not args.keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')


if __name__ == "__main__":
    main()
