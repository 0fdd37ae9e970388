"""`pgqueue limits list|set|remove` and `pgqueue tasks explain` naming a limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pgqueue import TaskManager
from pgqueue.cli import main
from pgqueue.settings import get_settings

Run = Callable[..., Result]


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    monkeypatch.setenv("PGQUEUE_DSN", dsn)
    monkeypatch.setenv("COLUMNS", "100")
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(main, list(args))
        assert "Traceback" not in result.stderr, result.stderr
        assert result.exit_code == code, result.output
        return result

    yield run
    get_settings.cache_clear()


def test_set_list_remove(cli: Run) -> None:
    assert "no limits" in cli("limits", "list").stdout
    assert cli("limits", "set", "ses", "--concurrency", "3").stdout == (
        "limit 'ses': at most 3 running\n"
    )
    cli("limits", "set", "api", "--rate", "14", "--per", "1")
    listed = cli("limits", "list").stdout
    assert "ses" in listed and "14 per 1 s, burst 14" in listed
    data = json.loads(cli("limits", "list", "--json").stdout)
    assert [row["name"] for row in data["limits"]] == ["api", "ses"]
    assert data["keys"] == []
    assert cli("limits", "remove", "api").stdout == "removed limit 'api'\n"
    assert json.loads(cli("limits", "list", "--json").stdout)["limits"] == [
        {"name": "ses", "concurrency": 3, "rate": None, "per": None, "burst": None}
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("limits", "set", "x"), 2, "give --concurrency N, or --rate R --per SECONDS"),
        (("limits", "set", "x", "--rate", "3"), 2, "--rate and --per go together"),
        (("limits", "set", "x", "--concurrency", "-1"), 2, "-1 is not in the range x>=0"),
        (("limits", "set", "k" * 300, "--concurrency", "1"), 1, "the limit is 256"),
        (("limits", "remove", "nope"), 1, "no limit named 'nope'"),
    ],
)
def test_mistakes_are_one_line(cli: Run, args: tuple[str, ...], code: int, message: str) -> None:
    result = cli(*args, code=code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_list_shows_each_keys_use_and_explain_names_the_limit(
    cli: Run, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    tm.set_limit("tenant:*", concurrency=1)
    tm.set_limit("ses", rate=1, per=60, burst=1)
    tm.queue_task("some.task", queue="q", limits=["tenant:acme"], fair_key="a", k=1)
    held = tm.queue_task("some.task", queue="q", limits=["tenant:acme", "ses"], fair_key="a")
    tm.queue_task("other.task", queue="q", fair_key="b")
    # The first of a starts (a's turn: queued first); b's turn is next.
    db.execute("SELECT * FROM pgqueue.claim_keyed_tasks(ARRAY['q'], 1, 'w', 60.0)").fetchall()
    listed = cli("limits", "list").stdout
    assert "tenant:acme" in listed and "1 of 1" in listed
    explained = cli("tasks", "explain", str(held)).stdout
    assert "limit 'tenant:acme' (tenant:*): 1 of 1 running" in explained
    assert "fair share: 1 other key ahead" in explained
    # The rate: its one token was not spent (the task was held by the other key).
    db.execute("SELECT pgqueue.set_limit('tenant:*', 5, NULL, NULL, NULL)")
    db.execute("SELECT * FROM pgqueue.claim_keyed_tasks(ARRAY['q'], 5, 'w', 60.0)").fetchall()
    tm.queue_task("some.task", queue="q", limits=["ses"])
    later = tm.queue_task("some.task", queue="q", limits=["ses"])
    db.execute("SELECT * FROM pgqueue.claim_keyed_tasks(ARRAY['q'], 5, 'w', 60.0)").fetchall()
    assert "limit 'ses': next token in" in cli("tasks", "explain", str(later)).stdout
