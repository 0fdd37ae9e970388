"""CLI error paths: a user's mistake (DSN, settings, config file, import) is one readable
line on stderr, exit status 1, never a traceback, and never the DSN's password."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from support.paths import ROOT


def run_cli(
    *args: str, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    environment.update({"PYTHONPATH": str(ROOT), **env})
    return subprocess.run(
        [sys.executable, "-m", "pgqueue.cli", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://alice:s3cret@127.0.0.1:1/appdb", "postgresql://alice@127.0.0.1:1/appdb"),
        (
            "host=127.0.0.1 port=1 user=bob password='s3cret word' dbname=appdb",
            "postgresql://bob@127.0.0.1:1/appdb",
        ),
        (
            "postgresql://alice:s3cret@127.0.0.1:1/appdb?application_name=app&sslmode=disable",
            "postgresql://alice@127.0.0.1:1/appdb",
        ),
    ],
)
def test_migrate_unreachable_database(tmp_path: Path, dsn: str, shown: str) -> None:
    result = run_cli("migrate", cwd=tmp_path, PGQUEUE_DSN=dsn)
    line = assert_one_line_error(result, f"cannot use PostgreSQL at {shown}", "Connection refused")
    assert "s3cret" not in result.stderr + result.stdout, line


def test_migrate_missing_database(tmp_path: Path, server_dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = "pgqueue_no_such_database"
    result = run_cli("migrate", cwd=tmp_path, PGQUEUE_DSN=psycopg.conninfo.make_conninfo(**params))
    assert_one_line_error(result, "pgqueue_no_such_database")


def test_migrate_unparsable_dsn(tmp_path: Path) -> None:
    result = run_cli("migrate", cwd=tmp_path, PGQUEUE_DSN="not a dsn")
    assert_one_line_error(result, "DSN", "cannot be parsed")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PGQUEUE_LEASE_SECONDS": "-1"}, ["lease_seconds='-1'", "greater than 0"]),
        ({"PGQUEUE_BROKER": "kafka"}, ["broker='kafka'", "'database' or 'rabbitmq'"]),
        ({"PGQUEUE_CONFIG": "/nonexistent/services.yaml"}, ["PGQUEUE_CONFIG", "not a file"]),
    ],
)
def test_bad_settings(tmp_path: Path, env: dict[str, str], words: list[str]) -> None:
    for command in (["migrate"], ["worker", "start"]):
        result = run_cli(*command, cwd=tmp_path, PGQUEUE_DSN="postgresql://u@127.0.0.1:1/d", **env)
        assert_one_line_error(result, *words)


def test_bad_config_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "services.yaml").write_text("task:\n  defaults: {queu: x}\n")
    result = run_cli("migrate", cwd=tmp_path)
    assert_one_line_error(
        result,
        "unknown setting 'defaults.queu' in config/services.yaml: did you mean 'defaults.queue'?",
    )
    (tmp_path / "config" / "services.yaml").write_text("task: [\n")
    result = run_cli("migrate", cwd=tmp_path)
    assert_one_line_error(result, "services.yaml is not valid YAML at line 2, column 1")


def test_worker_unknown_import(tmp_path: Path, dsn: str) -> None:
    result = run_cli("worker", "--import", "no_such_module_x", cwd=tmp_path, PGQUEUE_DSN=dsn)
    assert_one_line_error(result, "cannot import task module 'no_such_module_x'")


def test_worker_without_any_task_refuses_to_start(tmp_path: Path, dsn: str) -> None:
    # Without --import nor PGQUEUE_IMPORTS it could only give back every task it claims.
    result = run_cli("worker", "--queues", "emails", cwd=tmp_path, timeout=30, PGQUEUE_DSN=dsn)
    assert_one_line_error(result, "no task is registered", "--import", "PGQUEUE_IMPORTS")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,)


@pytest.mark.slow
def test_worker_unreachable_database_at_startup(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pgqueue.cli", "worker", "start"],
        env={
            **environment,
            "PYTHONPATH": str(ROOT),
            "PGQUEUE_DSN": "postgresql://a:pw@127.0.0.1:1/d",
        },
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 15
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
        process.communicate()
        raise AssertionError("worker still running 15 s after start with an unreachable DSN")
    out, err = process.communicate()
    assert_one_line_error(
        subprocess.CompletedProcess(process.args, process.returncode, out, err),
        "postgresql://a@127.0.0.1:1/d",
    )


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    """`pgqueue --version` / `-V`, and `python -m pgqueue` works like the command."""
    assert run_cli("--version", cwd=tmp_path).stdout.strip() == "pgqueue, version 0.1.0"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    result = subprocess.run(
        [sys.executable, "-m", "pgqueue", "-V"],
        env={**environment, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "pgqueue, version 0.1.0")
