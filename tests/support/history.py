"""Checks that a task's history (pgqueue.task_events) is what happened to it: a run of the
task state machine that ends in the task's status, with its attempt count, and, for the
fault suite, the completion written by the worker process and attempt that made the effect.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

#: From each state, the events that may come next and the state they lead to. "waiting":
#: PENDING or RETRYING, or RUNNING claimed ahead (no "started" until its start is recorded);
#: "blocked": WAITING for its parents (workflows).
_NEXT = {
    "blocked": {
        "ready": "waiting",  # its last parent completed
        "cancelled": "cancelled",  # a parent failed, or cancelled directly
    },
    "waiting": {
        "started": "running",
        "released": "waiting",  # claimed ahead and given back, or unknown to its worker
        "rescued": "waiting",  # claimed ahead by a worker that vanished
        "cancelled": "cancelled",
        "failed": "failed",  # unknown to every worker for the grace
    },
    "running": {
        "completed": "completed",
        "failed": "failed",
        "retry_scheduled": "waiting",  # Retry / Snooze
        "rescued": "waiting",
        "released": "waiting",
        "cancelled": "cancelled",
    },
    "failed": {"retry_scheduled": "waiting", "retried": "waiting"},
    "cancelled": {"retried": "waiting", "waiting": "blocked"},  # waiting: a parent retried
    "completed": {},
}
#: A rescue that was the last attempt is followed by "failed".
_AFTER_RESCUE = {"failed": "failed"}
_FINAL = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "WAITING": "blocked",
    "PENDING": "waiting",
    "RETRYING": "waiting",
    "RUNNING": ("running", "waiting"),
}


def timeline(db: psycopg.Connection[Any], task_id: uuid.UUID) -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        cursor.execute(
            "SELECT event, attempt, worker_id, error, details FROM pgqueue.task_events"
            " WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        return cursor.fetchall()


def events_of(db: psycopg.Connection[Any], task_id: uuid.UUID) -> list[str]:
    return [event["event"] for event in timeline(db, task_id)]


def history_problems(events: Sequence[dict[str, Any]], status: str, attempts: int) -> list[str]:
    """What is wrong with a task's events, given its status and attempt count now."""
    if not events or events[0]["event"] != "enqueued":
        return ["does not start with enqueued"]
    first = (events[0].get("details") or {}).get("status")
    state = {"WAITING": "blocked", "CANCELLED": "cancelled"}.get(first, "waiting")
    problems: list[str] = []
    for previous, event in itertools.pairwise(events):
        name = event["event"]
        allowed = _AFTER_RESCUE if previous["event"] == "rescued" and name == "failed" else None
        following = (allowed or _NEXT[state]).get(name)
        if following is None:
            problems.append(f"{name} after {previous['event']} (state {state})")
            continue
        if name == "started" and event["attempt"] < 1:
            problems.append(f"started with attempt {event['attempt']}")
        state = following
    final = _FINAL[status]
    if state not in (final if isinstance(final, tuple) else (final,)):
        problems.append(f"ends {state}, the task is {status}")
    if events[-1]["attempt"] != attempts:
        problems.append(f"last event at attempt {events[-1]['attempt']}, task has {attempts}")
    return problems


def assert_history_exact(db: psycopg.Connection[Any], ids: Sequence[uuid.UUID]) -> None:
    """Every task's events are a run of the state machine ending in its status; a task that
    made its effect was completed, once, by that attempt in that worker process."""
    rows = db.execute(
        "SELECT t.id, t.status::text, t.attempts, e.attempt, e.pid"
        " FROM pgqueue.tasks AS t LEFT JOIN effects AS e ON e.task_id = t.id"
        " WHERE t.id = ANY(%s)",
        (list(ids),),
    ).fetchall()
    assert len(rows) == len(ids)
    wrong = {}
    for task_id, status, attempts, effect_attempt, effect_pid in rows:
        events = timeline(db, task_id)
        problems = history_problems(events, status, attempts)
        completed = [e for e in events if e["event"] == "completed"]
        if effect_attempt is not None:
            if len(completed) != 1:
                problems.append(f"{len(completed)} completed events")
            elif completed[0]["attempt"] != effect_attempt:
                problems.append(
                    f"completed at attempt {completed[0]['attempt']}, effect at {effect_attempt}"
                )
            elif completed[0]["worker_id"].split(":")[-2] != str(effect_pid):
                problems.append(
                    f"completed by {completed[0]['worker_id']}, effect by pid {effect_pid}"
                )
        if problems:
            wrong[task_id] = (problems, [(e["event"], e["attempt"]) for e in events])
    assert not wrong, f"{len(wrong)} tasks with a wrong history, e.g. {next(iter(wrong.items()))}"
