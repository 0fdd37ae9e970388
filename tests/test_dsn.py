"""Passwords never appear in any message (issue #14, item 5): mask_dsn() over every DSN form,
an unparsable DSN refused before any pool sees it, psycopg_pool's warnings masked, and every
CLI command and TaskManager given a DSN that holds a password."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg_pool import ConnectionPool, PoolTimeout
from support.paths import worker_pythonpath
from support.waiting import wait_until

from pgqueue.db.database import Database
from pgqueue.dsn import mask_dsn, parse_dsn, redact
from pgqueue.errors import ConfigurationError, DatabaseUnavailable, InvalidDsn
from pgqueue.settings import Settings, load_settings
from pgqueue.task_manager import TaskManager

SECRET = "s3cretpw"
MALFORMED = f"postgresq://acc:{SECRET}@127.0.0.1:5432/acc"


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        (
            f"postgresql://alice:{SECRET}@db.example:5432/app?sslmode=require",
            "postgresql://alice:****@db.example:5432/app?sslmode=require",
        ),
        (
            f"postgresql://alice@db/app?password={SECRET}&sslmode=require",
            "postgresql://alice@db/app?password=****&sslmode=require",
        ),
        (
            f"postgresql://alice@db/app?sslmode=require&PassWord={SECRET}",
            "postgresql://alice@db/app?sslmode=require&PassWord=****",
        ),
        (
            f"host=db user=alice password={SECRET} dbname=app",
            "host=db user=alice password=**** dbname=app",
        ),
        (f"host=db password='{SECRET} and more' port=1", "host=db password=**** port=1"),
        (rf"host=db password='{SECRET}\' x' dbname=app", "host=db password=**** dbname=app"),
        (f"host=db password = {SECRET}", "host=db password = ****"),
        (f"host=db PASSWORD={SECRET}", "host=db PASSWORD=****"),
        (f"host=db sslkey=/k.pem sslpassword={SECRET}", "host=db sslkey=/k.pem sslpassword=****"),
        ("host=db passfile=/home/alice/.pgpass", "host=db passfile=/home/alice/.pgpass"),
        ("postgresql://alice@db:5432/app", "postgresql://alice@db:5432/app"),
        (MALFORMED, "postgresq://acc:****@127.0.0.1:5432/acc"),
        (f"postgresql:/alice:{SECRET}@db/app", "postgresql:/alice:****@db/app"),
        # Unquoted with a space (libpq refuses it): the word after it is masked too.
        (f"host=db password=x{SECRET} {SECRET}x dbname=app", "host=db password=**** dbname=app"),
        (f"host=db password='{SECRET} dbname=app", "host=db password=****"),
        (f"amqp://guest:{SECRET}@rabbit:5672/vhost", "amqp://guest:****@rabbit:5672/vhost"),
        (f"amqp://guest:{SECRET}@x@rabbit:5672/", "amqp://guest:****@rabbit:5672/"),
    ],
)
def test_mask_dsn_masks_every_form(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


@pytest.mark.parametrize(
    ("dsn", "shown", "problem"),
    [
        (MALFORMED, "postgresq://acc:****@127.0.0.1:5432/acc", "postgresq:// is not postgresql://"),
        (f"host=db password=my {SECRET}", "host=db password=****", "a word without '='"),
        (f"host=db password='{SECRET}", "host=db password=****", "has no closing quote"),
        (f"host=db pasword={SECRET}", "host=db pasword=****", "did you mean 'password'?"),
        (f"postgresql://a@db/app?{SECRET}", "postgresql://a@db/app?****", "without '='"),
        (
            f"postgresql://a@db/app?pasword={SECRET}",
            "postgresql://a@db/app?pasword=****",
            "did you mean 'password'?",
        ),
        (f"postgresql://a:{SECRET} x@db/app", "postgresql://a:****@db/app", "a space in the URL"),
        (f"postgresql://a:{SECRET}%zz@db/app", "postgresql://a:****@db/app", "%XX escape"),
        (SECRET, "****", "a word without '='"),
    ],
)
def test_an_unparsable_dsn_is_refused_masked_with_what_is_wrong(
    dsn: str, shown: str, problem: str
) -> None:
    with pytest.raises(InvalidDsn) as caught:
        parse_dsn(dsn)
    message = str(caught.value)
    assert f"the PostgreSQL DSN {shown!r} cannot be parsed" in message
    assert problem in message
    assert SECRET not in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ConfigurationError)
    assert caught.value.__suppress_context__  # libpq's own text is not chained either


def test_settings_and_database_refuse_an_unparsable_dsn_before_any_pool() -> None:
    for make in (
        lambda: load_settings(dsn=MALFORMED),
        lambda: Settings(dsn=MALFORMED),
        lambda: Database(MALFORMED),
    ):
        with pytest.raises(InvalidDsn, match=r"postgresq://acc:\*\*\*\*@") as caught:
            make()
        assert SECRET not in str(caught.value)


def test_a_refused_password_setting_is_not_quoted() -> None:
    # YAML reads `password: 12345678` as a number, which the string rule refuses.
    with pytest.raises(ConfigurationError, match=r"rabbitmq\.password='\*\*\*\*'") as caught:
        load_settings(rabbitmq={"password": 12345678})
    assert "12345678" not in str(caught.value)


def test_redact_masks_dsns_inside_messages_and_known_passwords() -> None:
    libpq = f'missing "=" after "{MALFORMED}" in connection info string'
    assert redact(libpq) == (
        'missing "=" after "postgresq://acc:****@127.0.0.1:5432/acc" in connection info string'
    )
    assert redact(f'after "host=db password=my {SECRET}" in') == 'after "host=db password=****" in'
    assert (
        redact(f"cannot use amqp://g:{SECRET}@h:5672/ now (password={SECRET})")
        == "cannot use amqp://g:****@h:5672/ now (password=****"
    )
    parse_dsn("postgresql://alice:zq8-Known-Pw@db/app")  # a password seen is masked anywhere
    assert redact('missing "=" after "zq8-Known-Pw"') == 'missing "=" after "****"'
    plain = 'connection to server at "127.0.0.1", port 1 failed: can\'t connect at 10:30'
    assert redact(plain) == plain


def test_pool_warnings_never_carry_a_password(caplog: pytest.LogCaptureFixture) -> None:
    """The last line of defence: a pool pgqueue did not validate (the application's own)
    logs libpq's text, which quotes the DSN; the filter pgqueue puts on psycopg.pool masks it."""
    Database("postgresql://alice@127.0.0.1:1/app")  # installs the filter
    caplog.set_level(logging.DEBUG)
    pool = ConnectionPool(MALFORMED, min_size=1, open=False, name="their-pool")
    with pytest.raises(PoolTimeout):
        pool.open(wait=True, timeout=1.0)
    pool.close()
    warnings = [
        r
        for r in caplog.records
        if r.name == "psycopg.pool" and "error connecting" in r.getMessage()
    ]
    assert warnings, caplog.text
    assert "postgresq://acc:****@127.0.0.1:5432/acc" in warnings[0].getMessage()
    assert SECRET not in caplog.text
    assert all(SECRET not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "dsn",
    [
        MALFORMED,
        f"host=127.0.0.1 port=5432 password=my {SECRET}",
        f"postgresql://a@127.0.0.1:5432/db?pasword={SECRET}",
    ],
)
def test_task_manager_with_an_unparsable_dsn_logs_and_raises_no_password(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InvalidDsn) as caught:
        TaskManager(dsn=dsn).queue_task("sample_tasks.echo", value=1)
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    assert not [r for r in caplog.records if r.name.startswith("psycopg")]  # no pool was made


@pytest.mark.slow  # the pool waits its 10 s timeout, twice
def test_task_manager_with_an_unreachable_dsn_logs_and_raises_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    manager = TaskManager(dsn=f"postgresql://u:{SECRET}@127.0.0.1:1/db")
    try:
        with pytest.raises(
            DatabaseUnavailable, match=r"postgresql://u@127\.0\.0\.1:1/db"
        ) as caught:
            manager.queue_task("sample_tasks.echo", value=1)
    finally:
        manager.close()
    assert SECRET not in str(caught.value)
    assert any(r.name == "psycopg.pool" for r in caplog.records)
    assert SECRET not in caplog.text


# -- the command line ---------------------------------------------------------------------

UNREACHABLE = {
    "url": f"postgresql://alice:{SECRET}@127.0.0.1:1/appdb",
    "url-query": f"postgresql://alice@127.0.0.1:1/appdb?password={SECRET}&sslmode=disable",
    "key-value": f"host=127.0.0.1 port=1 user=alice password={SECRET} dbname=appdb",
    "key-value-quoted": f"host=127.0.0.1 port=1 user=alice password='{SECRET} x' dbname=appdb",
}
DATABASE_COMMANDS = {
    "status": ["status"],
    "tasks list": ["tasks", "list"],
    "workers": ["workers"],
    "worker start": ["worker", "start", "--import", "sample_tasks"],
    "migrate": ["migrate"],
    "enqueue": ["enqueue", "sample_tasks.echo"],
}
CONFIG_COMMANDS = {
    "config show": ["config", "show"],
    "config show --json": ["config", "show", "--json"],
}


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PGQUEUE_")}
    environment.update({"PYTHONPATH": worker_pythonpath(), **env})
    return subprocess.run(
        [sys.executable, "-m", "pgqueue.cli", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert SECRET not in output, output
    assert result.returncode == 1, (result.returncode, output)
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


@pytest.mark.parametrize("command", [*DATABASE_COMMANDS, *CONFIG_COMMANDS])
def test_cli_with_an_unparsable_dsn(tmp_path: Path, command: str) -> None:
    args = {**DATABASE_COMMANDS, **CONFIG_COMMANDS}[command]
    line = one_error_line(run_cli(args, tmp_path, PGQUEUE_DSN=MALFORMED))
    assert "the PostgreSQL DSN 'postgresq://acc:****@127.0.0.1:5432/acc' cannot be parsed" in line


@pytest.mark.parametrize("command", DATABASE_COMMANDS)
@pytest.mark.parametrize("form", UNREACHABLE)
def test_cli_with_an_unreachable_dsn(tmp_path: Path, form: str, command: str) -> None:
    result = run_cli(DATABASE_COMMANDS[command], tmp_path, PGQUEUE_DSN=UNREACHABLE[form])
    line = one_error_line(result)
    assert "cannot use PostgreSQL at postgresql://alice@127.0.0.1:1/appdb" in line


@pytest.mark.parametrize("form", UNREACHABLE)
def test_config_show_masks_the_password(tmp_path: Path, form: str) -> None:
    amqp = f"amqp://guest:{SECRET}@127.0.0.1:5672/"
    env = {"PGQUEUE_DSN": UNREACHABLE[form], "PGQUEUE_RABBITMQ_URL": amqp}
    for args in CONFIG_COMMANDS.values():
        result = run_cli(args, tmp_path, **env)
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout + result.stderr
        assert mask_dsn(UNREACHABLE[form]) in result.stdout.replace('\\"', '"')
        assert "amqp://guest:****@127.0.0.1:5672/" in result.stdout


def test_cli_with_an_amqp_url_urllib_cannot_split(tmp_path: Path) -> None:
    """A port that is no number: one line with the URL masked (was a ValueError traceback
    from the code that hides the password)."""
    env = {
        "PGQUEUE_BROKER": "rabbitmq",
        "PGQUEUE_STATUS_TRACKING": "false",
        "PGQUEUE_RABBITMQ_URL": f"amqp://guest:{SECRET}@127.0.0.1:abc/",
    }
    line = one_error_line(run_cli(["enqueue", "sample_tasks.echo"], tmp_path, **env))
    assert "cannot use RabbitMQ at amqp://guest:****@127.0.0.1:abc/" in line


def with_password(dsn: str) -> str:
    """The test database's DSN as a URL with a password (the server trusts it anyway)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port = quote(str(params.get("host", "")), safe=""), params.get("port", 5432)
    return (
        f"postgresql://{params.get('user', 'postgres')}:{SECRET}@/{params['dbname']}"
        f"?host={host}&port={port}"
    )


@pytest.mark.parametrize("command", [c for c in DATABASE_COMMANDS if c != "worker start"])
def test_cli_on_a_reachable_database_shows_no_password(
    tmp_path: Path, dsn: str, command: str
) -> None:
    result = run_cli(DATABASE_COMMANDS[command], tmp_path, PGQUEUE_DSN=with_password(dsn))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_worker_on_a_reachable_database_logs_no_password(
    spawn_worker: Callable[..., Any], db: psycopg.Connection[Any], dsn: str
) -> None:
    worker = spawn_worker(
        "--import", "sample_tasks", "--log-level", "DEBUG", env={"PGQUEUE_DSN": with_password(dsn)}
    )
    wait_until(lambda: db.execute("SELECT count(*) FROM pgqueue.live_workers").fetchone()[0])
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert "DEBUG" in worker.output and SECRET not in worker.output
