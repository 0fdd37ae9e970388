"""Inspection and administration of a pgqueue database (Postgres only), for the CLI and metrics.

Reads the views of `sql/operations.sql` and calls the functions of `sql/functions.sql`
through the named queries of `sql/queries.sql`; it keeps no SQL of its own.

>>> with Admin.connect(dsn) as admin:
...     for queue in admin.queue_stats():
...         print(queue["queue"], queue["due"], queue["oldest_pending_seconds"])
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgqueue.db.database import CONNECT_TIMEOUT_SECONDS, unavailable
from pgqueue.db.migrated import translated
from pgqueue.db.queries import DEFAULT_SCHEMA, queries
from pgqueue.db.store import parse_task_id
from pgqueue.dsn import parse_dsn
from pgqueue.errors import InvalidTaskOption, TaskNotFound, first_line
from pgqueue.records import Task, TaskEvent, TaskStatus
from pgqueue.tasks.options import check_limit, check_queue
from pgqueue.tasks.schedule import CronSchedule

PURGE_BATCH_SIZE = 1000
#: count_tasks counts exactly up to this many tasks, and estimates beyond.
COUNT_EXACT_UP_TO = 100_000
#: The fewest hex digits a short id may have (`pgqueue tasks list` shows 8).
SHORT_ID_MIN_DIGITS = 6
_HEX = re.compile(r"^[0-9a-f]+$")
#: Parents and children `tasks show` lists (the counts are exact).
RELATIVES_SHOWN = 20


def parse_status(text: str | TaskStatus) -> TaskStatus:
    """A status from its name in any case ("failed", "FAILED"); a clear error otherwise."""
    if isinstance(text, TaskStatus):
        return text
    try:
        return TaskStatus(str(text).strip().upper())
    except ValueError:
        names = ", ".join(status.value.lower() for status in TaskStatus)
        raise InvalidTaskOption(f"unknown status {text!r}: use one of {names}") from None


class Admin:
    """Monitoring and admin calls on one database connection (autocommit).

    Every read goes through a view (`queue_stats`, `live_workers`, `due_tasks`,
    `recent_failures`) or the task table itself, with bound parameters only.
    """

    def __init__(
        self, connection: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA, dsn: str = ""
    ) -> None:
        self.connection = connection
        self.queries = queries(schema)
        self.schema = schema
        #: To name the database in errors, and read its revision (the connection's own DSN,
        #: without its password, when not given).
        self.dsn = dsn or connection.info.dsn

    @classmethod
    @contextlib.contextmanager
    def connect(cls, dsn: str, schema: str = DEFAULT_SCHEMA) -> Iterator[Admin]:
        """One short-lived connection; an unreachable server fails at once, in one line."""
        parse_dsn(dsn)
        try:
            connection = psycopg.connect(
                dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                application_name="pgqueue-admin",
            )
        except psycopg.OperationalError as error:
            raise unavailable(dsn, error) from error
        try:
            yield cls(connection, schema, dsn)
        except psycopg.OperationalError as error:
            raise unavailable(dsn, error) from error
        finally:
            connection.close()

    def _rows(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with (
            translated(self.dsn, self.schema),
            self.connection.cursor(row_factory=dict_row) as cursor,
        ):
            cursor.execute(self.queries[query], params or {})
            return cursor.fetchall()

    def _value(self, query: str, params: dict[str, Any] | None = None) -> Any:
        rows = self._rows(query, params)
        return next(iter(rows[0].values())) if rows else None

    # -- the views -----------------------------------------------------------------------

    def queue_stats(self, queues: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """`pgqueue.queue_stats`: one row per queue (all, or these), sorted by name."""
        if queues is None:
            return self._rows("queue_stats")
        return self._rows("queue_stats_for", {"queues": list(queues)})

    def live_workers(self) -> list[dict[str, Any]]:
        """`pgqueue.live_workers`: the workers that heartbeated recently, oldest first."""
        return self._rows("live_workers")

    def due_tasks(self, limit: int = 100) -> list[dict[str, Any]]:
        """`pgqueue.due_tasks`: due tasks no worker has started, the longest waiting first."""
        return self._rows("due_tasks", {"limit": _check_limit(limit)})

    def failures(self, queue: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """`pgqueue.recent_failures`: the latest failures with their last error."""
        return self._rows(
            "recent_failures",
            {"queue": _optional_queue(queue), "limit": _check_limit(limit)},
        )

    # -- tasks ---------------------------------------------------------------------------

    def list_tasks(
        self,
        *,
        queue: str | None = None,
        status: str | TaskStatus | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> list[Task]:
        """The newest tasks matching every filter given."""
        params = {
            "queue": _optional_queue(queue),
            "status": None if status is None else parse_status(status).value,
            "name": name,
            "limit": _check_limit(limit),
        }
        return [Task.from_row(row) for row in self._rows("list_tasks", params)]

    def count_tasks(
        self,
        *,
        queue: str | None = None,
        status: str | TaskStatus | None = None,
        name: str | None = None,
        exact_up_to: int = COUNT_EXACT_UP_TO,
    ) -> tuple[int, bool]:
        """How many tasks match the filters of list_tasks, and whether that is exact: past
        `exact_up_to` matches it is the planner's estimate (never below `exact_up_to`).

        >>> admin.count_tasks(status="failed")
        (12, True)
        """
        params = {
            "queue": _optional_queue(queue),
            "status": None if status is None else parse_status(status).value,
            "name": name,
            "bound": _check_limit(exact_up_to),
        }
        counted = int(self._value("count_tasks", params))
        if counted < exact_up_to:
            return counted, True
        del params["bound"]
        plan = self._value("estimate_tasks", params)
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        return max(estimate, exact_up_to), False

    def find_task_id(self, text: str | uuid.UUID) -> uuid.UUID:
        """The id of a task given by its full id or a short one: its last hex digits (at
        least SHORT_ID_MIN_DIGITS), as `pgqueue tasks list` shows them. TaskNotFound when
        no task, or more than one, ends with them.

        >>> admin.find_task_id("4f1c9a2e")
        UUID('01936f5e-8a1b-7c3d-9e4f-a1b24f1c9a2e')
        """
        given = parse_short_id(text)
        if isinstance(given, uuid.UUID):
            return given
        rows = self._rows("task_ids_ending_with", {"suffix": given, "limit": 3})
        found = [str(row["id"]) for row in rows]
        if not found:
            raise TaskNotFound(f"no task id ends with {given} (never queued, or cleaned up)")
        if len(found) > 1:
            listed = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
            raise TaskNotFound(
                f"more than one task id ends with {given} ({listed}); "
                "give more digits or the whole id"
            )
        return uuid.UUID(found[0])

    def get_task(self, task_id: Any) -> Task:
        """The task of that id; TaskNotFound names the id when there is none."""
        parsed = parse_task_id(task_id)
        rows = self._rows("get_task", {"id": parsed})
        if not rows:
            raise TaskNotFound(f"no task has id {parsed} (never queued, or cleaned up)")
        return Task.from_row(rows[0])

    def history(self, task_id: Any) -> list[TaskEvent]:
        """The task's events (`pgqueue.task_events`), oldest first."""
        rows = self._rows("task_history", {"id": parse_task_id(task_id)})
        return [TaskEvent.from_row(row) for row in rows]

    def history_enabled(self) -> bool:
        """Whether lifecycle statements write events (`pgqueue.history_enabled()`)."""
        return bool(self._value("history_enabled"))

    def set_history(self, enabled: bool) -> bool:
        """Turn history on or off for every process using the database; the previous state."""
        if not isinstance(enabled, bool):
            raise InvalidTaskOption(f"enabled must be True or False, not {enabled!r}")
        return bool(self._value("set_history", {"enabled": enabled}))

    def cancel(self, task_id: Any) -> bool:
        """Cancel a task that has not finished; True if it is now CANCELLED."""
        return bool(self._value("cancel_task", {"id": parse_task_id(task_id)}))

    def retry(self, task_id: Any) -> bool:
        """Run a FAILED or CANCELLED task once more; True if it was put back."""
        return bool(self._value("retry_task", {"id": parse_task_id(task_id)}))

    def retry_failed(self, queue: str | None = None) -> list[uuid.UUID]:
        """Put every FAILED task (of one queue, or all) back to PENDING; their ids."""
        rows = self._rows("retry_failed_tasks", {"queue": _optional_queue(queue)})
        return [row["retry_failed_tasks"] for row in rows]

    def count_purgeable(self, status: str | TaskStatus, older_than_seconds: float) -> int:
        """How many tasks `purge` would delete now."""
        chosen = _purgeable_status(status)
        return int(
            self._value("count_purgeable", {"status": chosen, "older_than": older_than_seconds})
        )

    def purge(self, status: str | TaskStatus, older_than_seconds: float) -> int:
        """Delete the tasks of a status older than the age (finished_at, else created_at).

        Deletes in batches of PURGE_BATCH_SIZE, each its own transaction, so a large purge
        never holds many row locks for long. RUNNING tasks cannot be purged.
        """
        chosen = _purgeable_status(status)
        deleted = 0
        while True:
            batch = int(
                self._value(
                    "purge_tasks",
                    {
                        "status": chosen,
                        "older_than": older_than_seconds,
                        "batch_size": PURGE_BATCH_SIZE,
                    },
                )
            )
            deleted += batch
            if batch < PURGE_BATCH_SIZE:
                return deleted

    def relatives(self, task_id: Any, limit: int = RELATIVES_SHOWN) -> dict[str, Any]:
        """A workflow member's parents and children: {"parents": [...], "children": [...],
        "parent_count", "child_count"}; each {id, name, status} (None: cleaned up), up to
        `limit` of each, the parents not COMPLETED first."""
        parsed = parse_task_id(task_id)
        found: dict[str, Any] = {}
        for side in ("parents", "children"):
            rows = self._rows(f"task_{side}", {"id": parsed, "limit": limit})
            found[side] = [{key: row[key] for key in ("id", "name", "status")} for row in rows]
            found["parent_count" if side == "parents" else "child_count"] = (
                rows[0]["total"] if rows else 0
            )
        return found

    def explain(self, task_id: Any) -> dict[str, Any]:
        """Why a task is not running: {"task": Task, "reasons": [{"code", "message"}]}.

        Codes: finished, running, waiting (for its parents), unknown_name, scheduled,
        retrying, paused, no_worker, not_registered, limit (a limit on a key it holds is
        full or out of tokens), fair_share (other fair keys' turn first), behind, ready
        (nothing holds it back).
        """
        parsed = parse_task_id(task_id)
        rows = self._rows("explain_task", {"id": parsed})
        if not rows:
            raise TaskNotFound(f"no task has id {parsed} (never queued, or cleaned up)")
        facts = rows[0]
        task = Task.from_row(facts)
        if task.status is TaskStatus.WAITING:
            return {"task": task, "reasons": [_waiting_reason(facts, self.relatives(parsed))]}
        return {"task": task, "reasons": explain_reasons(task, facts)}

    def cron_schedules(self) -> list[dict[str, Any]]:
        """The cron schedules workers recorded, each with its latest and next occurrence."""
        rows = self._rows("cron_schedules")
        for row in rows:
            schedule = CronSchedule(row["cron"], row["timezone"], row["catchup_seconds"])
            row["next_run_at"] = schedule.next_after(row["db_now"])
            del row["db_now"]
        return rows

    # -- queues --------------------------------------------------------------------------

    def known_queues(self) -> list[str]:
        """Every queue seen: with tasks, listened to by a worker, of a cron task, or paused."""
        return [row["queue"] for row in self._rows("known_queues")]

    def pause_queue(self, queue: str) -> bool:
        """Workers stop claiming from `queue` (running tasks finish); False if already paused."""
        return bool(self._value("pause_queue", {"queue": check_queue(queue)}))

    def resume_queue(self, queue: str) -> bool:
        """Workers claim from `queue` again, woken at once; False if it was not paused."""
        return bool(self._value("resume_queue", {"queue": check_queue(queue)}))

    # -- limits (sql/limits.sql) -----------------------------------------------------------

    def limits(self) -> list[dict[str, Any]]:
        """Every limit (name, concurrency, rate, per, burst), by name."""
        return self._rows("list_limits")

    def limit_usage(self) -> list[dict[str, Any]]:
        """Each concrete key with a limit and a state: its limit, running now, tokens now."""
        return self._rows("limit_usage")

    def set_limit(
        self,
        name: str,
        concurrency: int | None,
        rate: float | None,
        per: float | None,
        burst: float | None,
    ) -> dict[str, Any]:
        """Define or replace a limit (checked as `TaskManager.set_limit` checks it)."""
        row = check_limit(name, concurrency, rate, per, burst)
        self._rows("set_limit", row)
        return row

    def remove_limit(self, name: str) -> bool:
        """Drop a limit; False if there was none of that name."""
        return bool(self._rows("remove_limit", {"name": name}))


def parse_short_id(text: str | uuid.UUID) -> uuid.UUID | str:
    """A whole task id as a UUID, or a short one as its lowercase hex digits; TaskNotFound
    names the text when it is neither (Admin.find_task_id looks a short one up)."""
    if isinstance(text, uuid.UUID):
        return text
    digits = str(text).strip().lower().replace("-", "")
    if len(digits) == 32:
        return parse_task_id(digits)
    if not _HEX.match(digits) or len(digits) > 32:
        raise TaskNotFound(
            f"{text!r} is not a task id: give a whole id (a UUID) or its last "
            f"{SHORT_ID_MIN_DIGITS} or more hex digits, as `pgqueue tasks list` shows them"
        )
    if len(digits) < SHORT_ID_MIN_DIGITS:
        raise TaskNotFound(
            f"{text!r} is too short for a task id: give its last {SHORT_ID_MIN_DIGITS} or "
            "more hex digits (as `pgqueue tasks list` shows them), or the whole id"
        )
    return digits


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidTaskOption(f"limit must be a whole number >= 1, not {limit!r}")
    return limit


def _optional_queue(queue: str | None) -> str | None:
    return None if queue is None else check_queue(queue)


def _purgeable_status(status: str | TaskStatus) -> str:
    chosen = parse_status(status)
    if chosen is TaskStatus.RUNNING:
        raise InvalidTaskOption(
            "RUNNING tasks cannot be purged: a worker holds them; cancel them first"
        )
    return chosen.value


def _ago(moment: Any, now: Any) -> str:
    seconds = (moment - now).total_seconds()
    return f"in {seconds:.0f} s" if seconds >= 0 else f"{-seconds:.0f} s ago"


def explain_reasons(task: Task, facts: dict[str, Any]) -> list[dict[str, str]]:
    """What holds a task back, each as a code and a sentence (see Admin.explain)."""
    now, queue = facts["db_now"], task.queue
    attempts = f"attempt {task.attempts} of {task.max_retries + 1}"
    last_error = first_line(task.error) or None
    if task.status.is_finished:
        detail = f": {last_error}" if task.status is TaskStatus.FAILED and last_error else ""
        return [_reason("finished", f"it is {task.status.value} ({attempts}){detail}")]
    if task.status is TaskStatus.RUNNING:
        return [
            _reason(
                "running",
                f"it is running on worker {task.worker_id} since {task.started_at} ({attempts})",
            )
        ]
    reasons = []
    due = task.run_at <= now
    if facts.get("unknown_since") is not None:
        reasons.append(_unknown_name_reason(task, facts))
    elif task.status is TaskStatus.RETRYING and last_error:
        reasons.append(
            _reason(
                "retrying",
                f"retrying at {task.run_at} ({_ago(task.run_at, now)}) after error: "
                f"{last_error} ({attempts} done)",
            )
        )
    elif not due:
        reasons.append(
            _reason("scheduled", f"scheduled for {task.run_at} ({_ago(task.run_at, now)})")
        )
    if facts["queue_paused"]:
        reasons.append(
            _reason("paused", f"queue {queue!r} is paused (`pgqueue queue resume {queue}`)")
        )
    if not facts["workers_on_queue"]:
        reasons.append(_reason("no_worker", f"no live worker listens on queue {queue!r}"))
    elif facts["workers_reporting_names"] and not facts["workers_with_task"]:
        reasons.append(
            _reason(
                "not_registered",
                f"no live worker on queue {queue!r} has registered task {task.name!r}; "
                "start one that imports its module (--import)",
            )
        )
    if due:
        reasons.extend(_limit_reasons(facts))
    if due and facts["tasks_ahead"]:
        reasons.append(
            _reason(
                "behind",
                f"waiting behind {facts['tasks_ahead']} due tasks in queue {queue!r} "
                f"({facts['tasks_ahead_higher_priority']} of higher priority); "
                f"{facts['running_in_queue']} running, capacity {facts['capacity']}",
            )
        )
    if not reasons:
        reasons.append(
            _reason("ready", "nothing holds it back: a worker should start it at its next claim")
        )
    return reasons


def _limit_reasons(facts: dict[str, Any]) -> list[dict[str, str]]:
    """Limits (sql/limits.sql) whose keys are full or out of tokens, and the fair keys
    whose turn comes before this one's."""
    reasons = []
    for held in facts.get("limits_held") or []:
        key, name = held["key"], held["limit"]
        label = f"limit {key!r}" + (f" ({name})" if name != key else "")
        concurrency, running = held["concurrency"], held["running"]
        if concurrency is not None and running >= concurrency:
            reasons.append(_reason("limit", f"{label}: {running} of {concurrency} running"))
        tokens = held["tokens"]
        if tokens is not None and tokens < 1:
            wait_ms = (1 - tokens) * held["per"] / held["rate"] * 1000
            reasons.append(_reason("limit", f"{label}: next token in {wait_ms:.0f} ms"))
    ahead = facts.get("fair_keys_ahead") or 0
    if ahead:
        keys = "key" if ahead == 1 else "keys"
        reasons.append(_reason("fair_share", f"fair share: {ahead} other {keys} ahead"))
    return reasons


def _unknown_name_reason(task: Task, facts: dict[str, Any]) -> dict[str, str]:
    """Given back by workers that had not registered its name (give_back_unknown_tasks)."""
    now, fails_at = facts["db_now"], facts["unknown_fails_at"]
    again = "due now" if task.run_at <= now else f"due again {_ago(task.run_at, now)}"
    count = facts["unknown_give_backs"]
    times = "once" if count == 1 else f"{count} times"
    return _reason(
        "unknown_name",
        f"given back {times} since {facts['unknown_since']}, "
        f"last by worker {task.worker_id}, which has not registered task {task.name!r} (no "
        f"attempt spent; {again}); a worker that imports its module (--import) runs it at "
        f"its next claim; it ends FAILED at {fails_at} ({_ago(fails_at, now)}) if none has",
    )


def _waiting_reason(facts: dict[str, Any], relatives: dict[str, Any]) -> dict[str, str]:
    """WAITING: how many parents it still waits for, and which (the first few)."""
    left, total = facts["parents_left"], relatives["parent_count"]
    unsettled = [p for p in relatives["parents"] if p["status"] != "COMPLETED"][:5]
    named = ", ".join(f"{p['id']} {p['name']} ({p['status']})" for p in unsettled)
    more = f" and {left - len(unsettled)} more" if left > len(unsettled) else ""
    return _reason(
        "waiting",
        f"waiting for {left} of {total} parent{'s' if total != 1 else ''}: {named}{more}",
    )


def _reason(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}
