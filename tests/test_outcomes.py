"""Whatever a task raises is recorded, storable and bounded; one outcome the database
refuses never holds back the others; a worker that cannot record outcomes stops claiming;
no upkeep loop of a worker dies in silence."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from support.waiting import wait_until

from pgqueue import AsyncTask, TaskManager, TaskStatus
from pgqueue.db import arrays
from pgqueue.db.claim import claim_tasks
from pgqueue.db.outcomes import HandOffOffer, write_outcomes
from pgqueue.db.queries import queries
from pgqueue.errors import first_line
from pgqueue.loops import BackgroundLoop, Backoff, retrying
from pgqueue.payload import MAX_ERROR_CHARS, error_text, storable_text
from pgqueue.records import Outcome, OutcomeKind, Task

QUEUE = "outcomes"
ran: list[str] = []
_lock = threading.Lock()


def _ran(label: str) -> None:
    with _lock:
        ran.append(label)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


RAISED: dict[str, BaseException] = {
    "nul": ValueError("bad\x00byte"),
    "surrogate": ValueError("lone \udc80 surrogate"),
    "huge": ValueError("x" * (20 * 1024 * 1024)),
    "broken_str": BrokenStr(),
    "system_exit": SystemExit(3),
    "keyboard_interrupt": KeyboardInterrupt(),
}


@AsyncTask(queue=QUEUE, max_retries=0)
async def raise_async(kind: str) -> None:
    _ran(kind)
    raise RAISED[kind]


@AsyncTask(queue=QUEUE, max_retries=0)
def raise_sync(kind: str) -> None:
    _ran(kind)
    raise RAISED[kind]


@AsyncTask(queue=QUEUE)
async def healthy(label: str) -> str:
    _ran(label)
    return label


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


def final_rows(db: Any, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int, str | None]]:
    rows = db.execute(
        "SELECT id, status::text, attempts, error FROM pgqueue.tasks WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_whatever_a_task_raises_is_recorded_and_the_worker_carries_on(
    tm: TaskManager, db: Any, start_worker: Any
) -> None:
    kinds = list(RAISED)
    bad = [raise_async.delay(kind=kind) for kind in kinds]
    bad += [raise_sync.delay(kind=kind) for kind in kinds]
    good = tm.queue_tasks(healthy, [{"label": f"ok{n}"} for n in range(20)])
    worker = start_worker(queues=[QUEUE], concurrency=4)
    everything = bad + good
    wait_until(
        lambda: (
            all(row[0] in ("FAILED", "COMPLETED") for row in final_rows(db, everything).values())
            and len(final_rows(db, everything)) == len(everything)
        ),
        timeout=30,
    )
    rows = final_rows(db, everything)
    for task_id, kind in zip(bad, kinds + kinds, strict=True):
        status, attempts, error = rows[task_id]
        assert (status, attempts) == ("FAILED", 1), kind
        assert error is not None and len(error) <= MAX_ERROR_CHARS, kind
        assert error.startswith(type(RAISED[kind]).__name__), error[:200]
    errors = {kind: rows[task_id][2] for task_id, kind in zip(bad, kinds, strict=False)}
    assert "bad\\x00byte" in errors["nul"]
    assert "lone \\udc80 surrogate" in errors["surrogate"]
    assert "cut by pgqueue: this text had" in errors["huge"]
    assert "<str() of this BrokenStr raised RuntimeError>" in errors["broken_str"]
    assert [rows[task_id][:2] for task_id in good] == [("COMPLETED", 1)] * 20
    assert sorted(label for label in ran if label.startswith("ok")) == sorted(
        f"ok{n}" for n in range(20)
    )
    assert len(ran) == len(everything)  # each ran once: nothing waited for a lease to expire
    worker.stop()  # the worker is still alive and stops cleanly


def test_an_outcome_the_database_refuses_does_not_hold_back_the_others(
    tm: TaskManager, db: Any, start_worker: Any
) -> None:
    """A trigger of the user's refuses to complete one task (as a constraint would): that
    task is recorded FAILED with the reason, and every other task of the batch completes."""
    db.execute(
        """
        CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'label % may not complete', NEW.kwargs->>'label';
        END $$;
        CREATE TRIGGER refuse_one BEFORE UPDATE ON pgqueue.tasks FOR EACH ROW
        WHEN (NEW.status = 'COMPLETED' AND NEW.kwargs->>'label' = 'refused')
        EXECUTE FUNCTION refuse_one();
        """
    )
    ids = tm.queue_tasks(healthy, [{"label": f"ok{n}"} for n in range(30)])
    refused = healthy.delay(label="refused", max_retries=0)
    ids += tm.queue_tasks(healthy, [{"label": f"k{n}"} for n in range(30)])
    worker = start_worker(queues=[QUEUE], concurrency=8)
    wait_until(
        lambda: all(
            row[0] in ("COMPLETED", "FAILED") for row in final_rows(db, [*ids, refused]).values()
        ),
        timeout=30,
    )
    rows = final_rows(db, ids)
    assert [row[:2] for row in rows.values()] == [("COMPLETED", 1)] * 60
    status, attempts, error = final_rows(db, [refused])[refused]
    assert (status, attempts) == ("FAILED", 1)
    assert error.startswith("OutcomeRefused:") and "label refused may not complete" in error
    assert len(ran) == 61  # nothing ran twice
    worker.stop()


def test_a_worker_that_cannot_record_outcomes_stops_claiming(
    tm: TaskManager, db: Any, start_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Completions fail as if the database were away (SQLSTATE 55P03, an OperationalError)
    while claims still work: the worker stops claiming and says so, then goes on once
    they are written again, each task run once."""
    db.execute(
        """
        CREATE FUNCTION unavailable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'completions unavailable' USING ERRCODE = 'lock_not_available';
        END $$;
        CREATE TRIGGER unavailable BEFORE UPDATE ON pgqueue.tasks FOR EACH ROW
        WHEN (NEW.status = 'COMPLETED') EXECUTE FUNCTION unavailable();
        """
    )
    caplog.set_level(logging.INFO, logger="pgqueue")
    ids = tm.queue_tasks(healthy, [{"label": f"ok{n}"} for n in range(200)])
    worker = start_worker(queues=[QUEUE], concurrency=2)
    wait_until(lambda: "not claiming tasks while their outcomes cannot be recorded" in caplog.text)
    ran_when_stopped = len(ran)
    time.sleep(1.0)  # what a worker that kept claiming would run meanwhile: all 200
    # Runs before the first write failed may have run (instant tasks), none after it.
    assert len(ran) == ran_when_stopped < 100
    assert "cannot record outcomes" in caplog.text
    db.execute("DROP TRIGGER unavailable ON pgqueue.tasks")
    wait_until(
        lambda: [row[0] for row in final_rows(db, ids).values()] == ["COMPLETED"] * 200,
        timeout=30,
    )
    assert sorted(ran) == sorted(f"ok{n}" for n in range(200))  # each once
    assert "claiming tasks again" in caplog.text
    worker.stop()


def claim_rows(dsn: str, db: Any, labels: list[str]) -> dict[str, Task]:
    """Queue one task per label and claim them with the workers' claim: {label: Task}."""
    for label in labels:
        db.execute(
            "INSERT INTO pgqueue.tasks (name, queue, kwargs, max_retries) "
            "VALUES ('tests.noop', %s, jsonb_build_object('label', %s::text), 1)",
            (QUEUE, label),
        )

    async def claim() -> list[Task]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await claim_tasks(
                conn, queries(), queues=[QUEUE], limit=100, worker_id="w", lease_seconds=30
            )

    return {task.kwargs["label"]: task for task in asyncio.run(claim())}


def test_each_outcome_kind_is_written_by_the_one_mapping(dsn: str, db: Any) -> None:
    """db/outcomes.py, as the completer, the RabbitMQ status writer and the test mode all
    write through it: what each kind does to the row, and what it reports back."""
    labels = ["done", "retry", "spent", "snooze", "released", "unknown", "stale"]
    tasks = claim_rows(dsn, db, labels)
    stale = dataclasses.replace(tasks["stale"], lease_token=tasks["stale"].lease_token - 1)
    batch = [
        Outcome(tasks["done"], OutcomeKind.COMPLETED, result_json='{"ok": true}'),
        Outcome(tasks["retry"], OutcomeKind.FAILED, error="Boom: first"),
        Outcome(tasks["spent"], OutcomeKind.FAILED, error="Boom: last", retryable=False),
        Outcome(tasks["snooze"], OutcomeKind.RESCHEDULED, delay=60, refund_attempt=True),
        Outcome(tasks["released"], OutcomeKind.RELEASED),
        Outcome(tasks["unknown"], OutcomeKind.UNKNOWN),
        Outcome(stale, OutcomeKind.COMPLETED),
    ]

    async def write() -> Any:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await write_outcomes(conn, queries(), batch, unknown_task_grace_seconds=60)

    written = asyncio.run(write())
    rows = {
        row[0]: row[1:]
        for row in db.execute(
            "SELECT kwargs->>'label', status::text, attempts, result, error, "
            "run_at > now() + interval '30 seconds' FROM pgqueue.tasks"
        )
    }
    assert rows["done"][:3] == ("COMPLETED", 1, {"ok": True})
    assert rows["retry"][:2] == ("RETRYING", 1) and rows["retry"][3] == "Boom: first"
    assert rows["spent"][:2] == ("FAILED", 1) and rows["spent"][3] == "Boom: last"
    assert rows["snooze"][:2] == ("RETRYING", 0) and rows["snooze"][4]  # due in a minute
    assert rows["released"][:2] == ("PENDING", 0)
    assert rows["unknown"][:2] == ("PENDING", 0) and "UnknownTask: worker w " in rows["unknown"][3]
    assert rows["stale"][:2] == ("RUNNING", 1)  # the stale token changed nothing
    assert written.lease_lost == [batch[-1]]
    decided = {label: written.decisions[tasks[label].id].status for label in labels[1:4]}
    assert decided == {
        "retry": TaskStatus.RETRYING,
        "spent": TaskStatus.FAILED,
        "snooze": TaskStatus.RETRYING,
    }
    assert written.decisions[tasks["unknown"].id].status is TaskStatus.PENDING
    assert written.retries_scheduled


#: Results whose JSON text holds what an array literal must quote or escape.
AWKWARD_RESULTS = [
    {"quote": 'say "hi"', "backslash": "C:\\dir\\", "braces": "{a,b}", "comma": "x, y"},
    ["NULL", None, "", " spaced ", "tab\tnew\nline", "\u00e9t\u00e9 \U0001f600"],
    'a "string" with \\ backslashes',
    None,
    12.5,
]


def test_completions_write_any_result_as_it_was_returned(dsn: str, db: Any) -> None:
    """The completion's arrays go as literals built in db/arrays.py: results holding quotes,
    backslashes, braces, commas, NULL-looking text and non-ASCII come back unchanged, one
    completion at a time (a chain step's path, with a hand-off offer) and in a batch."""
    labels = [f"r{i}" for i in range(len(AWKWARD_RESULTS) * 2)]
    tasks = claim_rows(dsn, db, labels)
    outcomes = [
        Outcome(tasks[label], OutcomeKind.COMPLETED, result_json=json.dumps(result))
        for label, result in zip(labels, AWKWARD_RESULTS * 2, strict=True)
    ]
    offer = HandOffOffer("w", [QUEUE, 'odd "queue", {x}'], slots=2, lease_seconds=30)

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for outcome in outcomes[: len(AWKWARD_RESULTS)]:
                written = await write_outcomes(conn, queries(), [outcome], 60, offer)
                assert written.lease_lost == []
            written = await write_outcomes(conn, queries(), outcomes[len(AWKWARD_RESULTS) :], 60)
            assert written.lease_lost == []

    asyncio.run(write())
    stored = dict(db.execute("SELECT kwargs->>'label', result FROM pgqueue.tasks"))
    assert stored == dict(zip(labels, AWKWARD_RESULTS * 2, strict=True))


def test_array_literals_read_back_as_the_values(db: Any) -> None:
    when = datetime.datetime(2026, 12, 5, 23, 59, 58, 123456, tzinfo=datetime.UTC)
    ids = [uuid.uuid4(), uuid.uuid4()]
    texts = ['a"b', "c\\d", "{e}", "NULL", "", None, "f,g h", "\u00e9t\u00e9 \U0001f600"]
    row = db.execute(
        "SELECT %s::uuid[], %s::integer[], %s::timestamptz[], %s::text[], %s::uuid[]",
        (
            arrays.uuids(ids),
            arrays.integers([1, -2, 3]),
            arrays.timestamps([when, None]),
            arrays.texts(texts),
            arrays.uuids([]),
        ),
    ).fetchone()
    assert row == (ids, [1, -2, 3], [when, None], texts, [])


class Flaky(BackgroundLoop):
    name = "pgqueue-flaky"

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0
        self.steady = asyncio.Event()

    async def _run(self) -> None:
        self.runs += 1
        if self.runs < 3:
            raise RuntimeError(f"bug number {self.runs}")
        self.steady.set()
        await asyncio.Event().wait()


def test_a_background_loop_that_raises_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgqueue import background

    monkeypatch.setattr(background, "RESTART_FIRST_SECONDS", 0.01)

    async def main() -> Flaky:
        loop = Flaky()
        loop.start()
        await asyncio.wait_for(loop.steady.wait(), 5)
        assert loop.running
        await loop.stop()
        return loop

    loop = asyncio.run(main())
    assert (loop.runs, loop.restarts) == (3, 2)
    crashes = [r for r in caplog.records if "pgqueue-flaky crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert all(r.exc_info and "bug number" in str(r.exc_info[1]) for r in crashes)


def test_error_text_is_storable_and_bounded() -> None:
    assert storable_text("a\x00b") == "a\\x00b"
    assert storable_text("\udc80") == "\\udc80"
    cut = storable_text("h" * 100 + "x" * 100_000 + "t" * 100)
    assert len(cut) <= MAX_ERROR_CHARS
    assert cut.startswith("h" * 100) and cut.endswith("t" * 100)
    assert "this text had 100,200 characters" in cut
    try:
        raise BrokenStr()
    except BrokenStr as error:
        text = error_text(error)
    assert text.startswith("BrokenStr: <str() of this BrokenStr raised RuntimeError>")
    assert "Traceback" in text


def test_an_outage_is_waited_out_by_the_one_retry_helper(caplog: pytest.LogCaptureFixture) -> None:
    """loops.retrying: errors of the given set are logged and retried with a doubling pause;
    others, and any once the caller gives up (stopping), are raised."""
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("server closed the connection\nunexpectedly")
        return "written"

    log = logging.getLogger("pgqueue.test")
    caplog.set_level(logging.WARNING, logger="pgqueue.test")
    backoff = Backoff(first=0.01, most=0.02)
    assert asyncio.run(retrying(flaky, (ConnectionError,), backoff, log, "cannot write")) == (
        "written"
    )
    assert len(calls) == 3 and backoff.seconds == 0.02
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[0].startswith("cannot write (server closed the")
    calls.clear()
    with pytest.raises(ConnectionError):
        asyncio.run(retrying(flaky, (ConnectionError,), backoff, log, "x", give_up=lambda: True))
    with pytest.raises(ConnectionError):
        asyncio.run(retrying(flaky, (TimeoutError,), backoff, log, "x"))


@pytest.mark.parametrize(
    ("text", "limit", "line"),
    [
        ("", None, ""),
        (None, None, ""),
        ("  \n\n", None, ""),  # splitlines()[0] raised here
        ("\n  first\nsecond", None, "first"),
        ("a\r\nb", None, "a"),
        ("x" * 10, 5, "xxxx…"),
        (ValueError("bad value\nDETAIL: more"), None, "bad value"),
        (ValueError(), None, "ValueError"),
        (BrokenStr(), None, "BrokenStr"),
    ],
)
def test_the_first_line_of_any_text_or_error(text: Any, limit: int | None, line: str) -> None:
    assert first_line(text, limit) == line
