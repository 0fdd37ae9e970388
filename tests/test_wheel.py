"""The built wheel is self-sufficient: installed into a fresh venv, outside the repository,
it migrates a database and runs a task end to end (the SQL and alembic scripts ship inside)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest
from support.paths import ROOT
from support.waiting import wait_until

TASKS_MODULE = """\
from pgqueue import AsyncTask


@AsyncTask(queue="wheel")
def add(x: int, y: int) -> int:
    return x + y
"""


def clean_environment(**extra: str) -> dict[str, str]:
    """No PGQUEUE_* setting and nothing on PYTHONPATH: only what the venv has installed."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PGQUEUE_", "PYTHON", "VIRTUAL_ENV"))
    }
    return {**environment, **extra}


def run(args: list[str | Path], cwd: Path, timeout: float = 120, **env: str) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_wheel_installs_migrates_and_runs_a_task(tmp_path: Path, empty_dsn: str) -> None:
    # Build the wheel from the source tree.
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT], cwd=tmp_path)
    [wheel] = dist.glob("pgqueue_tasks-*.whl")  # the distribution pgqueue-tasks
    names = set(zipfile.ZipFile(wheel).namelist())
    for filename in (
        "schema.sql",
        "functions.sql",
        "operations.sql",
        "outbox.sql",
        "features.sql",
        "queries.sql",
    ):
        assert f"pgqueue/db/sql/{filename}" in names
    assert "pgqueue/db/alembic/env.py" in names
    assert "pgqueue/py.typed" in names  # type checkers read pgqueue's annotations
    assert "pgqueue/db/alembic/versions/0001_initial.py" in names
    assert "pgqueue/db/alembic/versions/0001_initial.sql" in names
    assert not [name for name in names if name.startswith("tests/")]

    # A fresh venv with the wheel and its declared dependencies, nothing else.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    bin_dir = venv / "bin"
    run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], cwd=tmp_path, timeout=240)

    # A user's project folder, far from the repository.
    app = tmp_path / "app"
    app.mkdir()
    (app / "app_tasks.py").write_text(TASKS_MODULE)
    located = run(
        [
            bin_dir / "python",
            "-c",
            "import pgqueue, pgqueue.db.queries as q; print(pgqueue.__file__); "
            "print(q.resource_dir('sql')); print(q.resource_dir('alembic'))",
        ],
        cwd=app,
    ).split()
    assert all(path.startswith(str(venv)) for path in located), located

    out = run([bin_dir / "pgqueue", "migrate"], cwd=app, PGQUEUE_DSN=empty_dsn)
    assert "pgqueue schema 'pgqueue' is at revision" in out

    task_id = run(
        [bin_dir / "python", "-c", "from app_tasks import add; print(add.delay(x=2, y=3))"],
        cwd=app,
        PGQUEUE_DSN=empty_dsn,
    ).strip()

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [bin_dir / "pgqueue", "worker", "--queues", "wheel", "--import", "app_tasks"],
        cwd=app,
        env=clean_environment(PGQUEUE_DSN=empty_dsn),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with psycopg.connect(empty_dsn, autocommit=True) as db:

            def finished() -> tuple[str, object] | None:
                row = db.execute(
                    "SELECT status::text, result FROM pgqueue.tasks WHERE id = %s", (task_id,)
                ).fetchone()
                return row if row and row[0] in ("COMPLETED", "FAILED") else None

            assert wait_until(finished, timeout=30) == ("COMPLETED", 5)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
