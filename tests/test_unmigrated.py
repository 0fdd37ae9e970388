"""A database without the pgqueue schema (or at an older revision) gives one error, the same
everywhere: producers, every CLI command, and a worker that exits non-zero at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import worker_tasks
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from support.paths import worker_pythonpath
from support.producer import default_task_manager
from support.waiting import wait_until
from support.workers import InProcessWorker

from pgqueue import TaskManager, TaskStatus, WorkerManager, testing
from pgqueue.cli import main
from pgqueue.db import migrations
from pgqueue.db.migrated import known_revisions, required_revision, schema_missing
from pgqueue.dsn import describe_dsn
from pgqueue.errors import SchemaMissing
from pgqueue.settings import Settings, get_settings, load_settings


def expected_message(dsn: str) -> str:
    return (
        f"the database {describe_dsn(dsn)} has no pgqueue schema 'pgqueue': "
        "run `pgqueue migrate` to create it"
    )


@pytest.fixture
def empty_settings(empty_dsn: str) -> Settings:
    return load_settings(dsn=empty_dsn)


@pytest.fixture
def empty_tm(empty_settings: Settings) -> Iterator[TaskManager]:
    with default_task_manager(empty_settings) as manager:
        yield manager


def test_the_required_revision_is_alembics_head() -> None:
    assert required_revision() == migrations.head_revision()
    script = ScriptDirectory.from_config(migrations.alembic_config())
    chain = [revision.revision for revision in script.walk_revisions()]
    assert known_revisions() == chain[::-1]


def test_every_producer_call_says_to_migrate(empty_dsn: str, empty_tm: TaskManager) -> None:
    message = expected_message(empty_dsn)
    calls = {
        "delay": lambda: worker_tasks.record.delay(label="x"),
        "adelay": lambda: asyncio.run(worker_tasks.record.adelay(label="x")),
        "queue_task": lambda: empty_tm.queue_task(worker_tasks.record, label="x"),
        "queue_tasks": lambda: empty_tm.queue_tasks(worker_tasks.record, [{"label": "x"}] * 3),
        "enqueue_unique": lambda: worker_tasks.record.delay(unique_key="k", label="x"),
        "get_task": lambda: empty_tm.get_task(uuid.uuid4()),
        "wait": lambda: empty_tm.wait(uuid.uuid4(), timeout=5),
        "await_result": lambda: asyncio.run(empty_tm.await_result(uuid.uuid4(), timeout=5)),
        "testing.drain": lambda: testing.drain(empty_tm),
        "testing.queue_cron": lambda: testing.queue_cron(empty_tm),
        "testing.reset": lambda: testing.reset(empty_tm),
    }
    for name, call in calls.items():
        with pytest.raises(SchemaMissing) as caught:
            call()
        assert str(caught.value) == message, name
        assert caught.value.revision is None and caught.value.required == required_revision()
        assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable | psycopg.Error)


def test_in_the_callers_transaction_too(empty_dsn: str, empty_tm: TaskManager) -> None:
    with psycopg.connect(empty_dsn) as conn, pytest.raises(SchemaMissing, match="migrate"):
        empty_tm.queue_task(worker_tasks.record, connection=conn, label="x")


def test_a_users_own_missing_table_is_not_pgqueues(empty_dsn: str) -> None:
    with (
        psycopg.connect(empty_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UndefinedTable) as caught,
    ):
        conn.execute("SELECT * FROM orders")
    assert schema_missing(caught.value, empty_dsn) is None


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["workers"],
        ["tasks", "list"],
        ["tasks", "show", str(uuid.uuid4())],
        ["tasks", "explain", str(uuid.uuid4())],
        ["tasks", "retry", "--failed"],
        ["tasks", "cancel", str(uuid.uuid4())],
        ["tasks", "purge", "--status", "completed", "--older-than", "7d", "--yes"],
        ["enqueue", "worker_tasks.record", "--unchecked", "--kwargs", '{"label": "x"}'],
        ["queue", "pause", "emails", "--force"],
        ["queue", "resume", "emails"],
        ["cron", "list"],
    ],
)
def test_every_cli_command_says_to_migrate(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("PGQUEUE_DSN", empty_dsn)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, args)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"Error: {expected_message(empty_dsn)}"]


def test_worker_process_exits_non_zero_with_the_message(empty_dsn: str, tmp_path: Path) -> None:
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "pgqueue.cli", "worker", "--import", "worker_tasks"],
        env={**os.environ, "PGQUEUE_DSN": empty_dsn, "PYTHONPATH": worker_pythonpath()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    assert process.stderr.strip().splitlines() == [f"Error: {expected_message(empty_dsn)}"]
    assert "started" not in process.stdout + process.stderr
    assert time.monotonic() - started < 30  # it exits by itself, the timeout never fires


def test_worker_manager_start_raises_it(empty_settings: Settings) -> None:
    manager = WorkerManager(settings=empty_settings)
    manager.set_queues(["default"])
    worker = InProcessWorker(manager).start()
    with pytest.raises(SchemaMissing, match="run `pgqueue migrate`"):
        worker.stop()


def test_a_worker_refuses_an_older_revision(empty_dsn: str, empty_settings: Settings) -> None:
    migrations.upgrade(empty_dsn, revision=known_revisions()[-2])
    manager = WorkerManager(settings=empty_settings)
    worker = InProcessWorker(manager).start()
    with pytest.raises(SchemaMissing) as caught:
        worker.stop()
    assert str(caught.value) == (
        f"run `pgqueue migrate`: the database {describe_dsn(empty_dsn)} is at revision "
        f"{known_revisions()[-2]}, this pgqueue needs {required_revision()}"
    )


def test_a_newer_revision_is_a_newer_pgqueues(
    db: psycopg.Connection[Any], tm: TaskManager, start_worker: Any
) -> None:
    """A rolling deploy migrates first: workers of the older pgqueue keep running."""
    db.execute("UPDATE pgqueue.alembic_version SET version_num = '9999'")
    start_worker()
    task_id = worker_tasks.record.delay(label="runs")
    wait_until(lambda: tm.get_task(task_id).status == TaskStatus.COMPLETED)  # type: ignore[union-attr]


def test_a_custom_schema_names_its_setting(empty_dsn: str) -> None:
    tm = TaskManager(settings=load_settings(dsn=empty_dsn, schema_name="jobs"))
    try:
        with pytest.raises(SchemaMissing, match=r"PGQUEUE_SCHEMA_NAME=jobs"):
            tm.queue_task(worker_tasks.record, label="x")
    finally:
        tm.close()
