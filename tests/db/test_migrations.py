"""Migrations: `pgqueue migrate` is idempotent and safe from concurrent processes; upgrade()
joins a user's own transaction and alembic project; a non-default schema works end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from support.paths import ROOT
from support.waiting import wait_until

from pgqueue import AsyncTask
from pgqueue.db.migrations import head_revision, sqlalchemy_url, upgrade
from pgqueue.db.queries import queries
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager


@AsyncTask(queue="jobs-queue")
def double(x: int) -> int:
    return 2 * x


def cli_environment(dsn: str, **extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    return {**environment, "PGQUEUE_DSN": dsn, "PYTHONPATH": str(ROOT), **extra}


def migrate_command(dsn: str, cwd: Path, **extra: str) -> Callable[[], subprocess.Popen[str]]:
    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pgqueue.cli", "migrate"],
            env=cli_environment(dsn, **extra),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


def schema_objects(dsn: str, schema: str = "pgqueue") -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_tables "
            "WHERE schemaname = %s",
            (schema,),
        ).fetchone()[0]  # type: ignore[index]
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = to_regnamespace(%s)", (schema,)
        ).fetchone()[0]  # type: ignore[index]
        version = None
        if tables and "alembic_version" in tables:
            version = conn.execute(
                f'SELECT array_agg(version_num) FROM "{schema}".alembic_version'
            ).fetchone()[0]  # type: ignore[index]
    return {"tables": tables, "functions": functions, "version": version}


def test_migrate_twice_is_idempotent(empty_dsn: str, tmp_path: Path) -> None:
    run = migrate_command(empty_dsn, tmp_path)
    first = run()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert f"pgqueue schema 'pgqueue' is at revision {head_revision()}" in out
    created = schema_objects(empty_dsn)
    assert created["version"] == [head_revision()]
    assert "tasks" in created["tables"] and created["functions"] >= 10

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('kept.across.migrate')")
    second = run()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert schema_objects(empty_dsn) == created
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT name FROM pgqueue.tasks").fetchall() == [
            ("kept.across.migrate",)
        ]


def test_four_concurrent_migrate_processes_all_succeed(empty_dsn: str, tmp_path: Path) -> None:
    run = migrate_command(empty_dsn, tmp_path)
    processes = [run() for _ in range(4)]
    results = [(process.wait(timeout=90), process.communicate()) for process in processes]
    for code, (out, err) in results:
        assert code == 0, err
        assert "is at revision" in out
    objects = schema_objects(empty_dsn)
    assert objects["version"] == [head_revision()]
    assert "tasks" in objects["tables"]


def test_upgrade_inside_the_users_transaction(empty_dsn: str) -> None:
    engine = create_engine(sqlalchemy_url(empty_dsn))
    try:
        with (
            pytest.raises(RuntimeError, match="the app's migration failed"),
            engine.connect() as connection,
            connection.begin(),
        ):
            connection.execute(text("CREATE TABLE orders (id int)"))
            upgrade(connection=connection)
            assert connection.execute(text("SELECT count(*) FROM pgqueue.tasks")).scalar() == 0
            raise RuntimeError("the app's migration failed")
        # Rolled back together: neither the app's table nor pgqueue's schema exists.
        assert schema_objects(empty_dsn)["tables"] is None
        with psycopg.connect(empty_dsn) as conn:
            assert conn.execute("SELECT to_regclass('public.orders')").fetchone() == (None,)

        with engine.connect() as connection, connection.begin():
            connection.execute(text("CREATE TABLE orders (id int)"))
            upgrade(connection=connection)
        assert schema_objects(empty_dsn)["version"] == [head_revision()]
        with psycopg.connect(empty_dsn) as conn:
            assert conn.execute("SELECT to_regclass('public.orders')::text").fetchone() == (
                "orders",
            )
    finally:
        engine.dispose()


USER_ENV = """\
from alembic import context
from sqlalchemy import create_engine

from pgqueue.db.migrations import upgrade

engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
        upgrade(connection=connection)   # pgqueue's own version table: pgqueue.alembic_version
engine.dispose()
"""

USER_REVISION = """\
from alembic import op

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE TABLE orders (id serial PRIMARY KEY)")


def downgrade():
    op.execute("DROP TABLE orders")
"""


def test_users_own_alembic_project_includes_pgqueue(empty_dsn: str, tmp_path: Path) -> None:
    project = tmp_path / "migrations"
    (project / "versions").mkdir(parents=True)
    (project / "env.py").write_text(USER_ENV)
    (project / "script.py.mako").write_text("")
    (project / "versions" / "a1_orders.py").write_text(textwrap.dedent(USER_REVISION))
    config = Config()
    config.set_main_option("script_location", str(project))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(empty_dsn))
    for _ in range(2):  # the second run finds both up to date
        command.upgrade(config, "head")
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
            ("a1",)
        ]
        assert conn.execute("SELECT version_num FROM pgqueue.alembic_version").fetchall() == [
            (head_revision(),)
        ]
        assert conn.execute("SELECT to_regclass('public.orders')::text").fetchone() == ("orders",)


def test_non_default_schema_end_to_end(
    dsn: str,
    tmp_path: Path,
    db: psycopg.Connection[Any],
    settings: Settings,
    start_worker: Callable[..., Any],
) -> None:
    process = migrate_command(dsn, tmp_path, PGQUEUE_SCHEMA_NAME="jobs")()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "pgqueue schema 'jobs' is at revision" in out
    assert "tasks" in schema_objects(dsn, "jobs")["tables"]

    jobs_settings = load_settings(**{**settings.to_dict(), "schema_name": "jobs"})
    manager = TaskManager(settings=jobs_settings)
    try:
        with psycopg.connect(dsn, autocommit=True) as listener:
            listener.execute('LISTEN "jobs.tasks"')
            # Inserts notify a queue only while a worker of it sleeps (revision 0004).
            db.execute(
                "INSERT INTO jobs.sleeping_workers (queue, worker_id) VALUES ('claimed', 'w')"
            )
            claimed_id = manager.queue_task(double, x=2, queue="claimed")
            assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["claimed"]
        # Only the jobs schema got the row; the claim statement for that schema serves it.
        assert db.execute("SELECT count(*) FROM pgqueue.tasks").fetchone() == (0,)
        params = {"queues": ["claimed"], "limit": 10, "worker_id": "w", "lease_seconds": 30}
        params |= {"start_now": None, "now": None}
        rows = db.execute(queries("jobs")["claim_tasks"], params)
        assert [(row[0], row[5]) for row in rows] == [(claimed_id, 1)]  # id, attempts
        token = db.execute("SELECT lease_token FROM jobs.tasks").fetchone()[0]  # type: ignore[index]
        assert db.execute(
            "SELECT new_status::text FROM jobs.fail_task(%s, %s, 'x')", (claimed_id, token)
        ).fetchone() == ("RETRYING",)

        # And a worker configured for that schema runs a task queued there.
        worker = start_worker(queues=["jobs-queue"], worker_settings=jobs_settings)
        task_id = manager.queue_task(double, x=21)

        def finished() -> Any:
            task = manager.get_task(task_id)
            return task is not None and task.status.is_finished and task

        task = wait_until(finished, timeout=20)
        worker.stop()
        assert task.status == "COMPLETED" and task.result == 42
    finally:
        manager.close()
