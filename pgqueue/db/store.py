"""The task table from the producer's side: insert (one row or COPY), read, cancel, retry."""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgqueue.db.database import Database
from pgqueue.db.dependencies import (
    collect_parent_results,
    edge_rows,
    external_parents,
    plan_workflow,
)
from pgqueue.db.drivers import (
    AsyncDriverConnection,
    AsyncpgConnection,
    async_driver_connection,
    sync_driver_connection,
)
from pgqueue.db.migrated import atranslated, translated
from pgqueue.errors import DatabaseUnavailable, InvalidTaskArguments, TaskNotFound
from pgqueue.records import NewTask, Task, TaskEvent


def parse_task_id(task_id: Any) -> uuid.UUID:
    """A task id from a UUID or its str(); anything else is a clear error."""
    if isinstance(task_id, uuid.UUID):
        return task_id
    try:
        return uuid.UUID(str(task_id))
    except ValueError:
        raise TaskNotFound(
            f"{task_id!r} is not a task id (a UUID such as the one .delay() returns)"
        ) from None


def insert_params(task: NewTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "queue": task.queue,
        "priority": task.priority,
        "kwargs": task.kwargs_json,
        "max_retries": task.max_retries,
        "schedule_at": task.schedule_at,
        "delay": task.delay,
        "trace_context": task.trace_context,
        # Read by insert_keyed_task only (limits, fair share).
        "limit_keys": None if task.limit_keys is None else list(task.limit_keys),
        "fair_key": task.fair_key,
    }


def unique_insert_params(tasks: Sequence[NewTask]) -> dict[str, Any]:
    """Column arrays for `insert_unique_tasks` (one statement, whatever the number of rows)."""
    return {
        "ids": [task.id for task in tasks],
        "names": [task.name for task in tasks],
        "queues": [task.queue for task in tasks],
        "priorities": [task.priority for task in tasks],
        "kwargs": [task.kwargs_json for task in tasks],
        "max_retries": [task.max_retries for task in tasks],
        "schedule_ats": [task.schedule_at for task in tasks],
        "delays": [task.delay for task in tasks],
        "unique_keys": [task.unique_key for task in tasks],
        "limit_keys": [
            None if task.limit_keys is None else Jsonb(list(task.limit_keys)) for task in tasks
        ],
        "fair_keys": [task.fair_key for task in tasks],
        # The rows of one call share the trace context of that call.
        "trace_context": tasks[0].trace_context if tasks else None,
    }


#: Rounds of insert-then-look-up before giving up: a holder that finishes between the two
#: statements frees its key, and the next round inserts the row instead.
UNIQUE_INSERT_ROUNDS = 5


class _UniqueInsert:
    """Which task id each row of a unique insert ends with: its own, or its key's holder."""

    def __init__(self, tasks: Sequence[NewTask]) -> None:
        self.tasks = tasks
        self.ids: dict[int, uuid.UUID] = {}
        self.todo = list(range(len(tasks)))

    def batch(self) -> list[NewTask]:
        return [self.tasks[index] for index in self.todo]

    def skipped_keys(self, inserted: set[uuid.UUID]) -> list[str]:
        return sorted(
            {
                key
                for task in self.batch()
                if task.id not in inserted and (key := task.unique_key) is not None
            }
        )

    def settle(self, inserted: set[uuid.UUID], holders: dict[str, uuid.UUID]) -> bool:
        """Record this round; True when every row has its id."""
        left = []
        for index in self.todo:
            task = self.tasks[index]
            if task.id in inserted:
                self.ids[index] = task.id
            elif task.unique_key in holders:
                self.ids[index] = holders[task.unique_key]
            else:
                left.append(index)
        self.todo = left
        return not left

    def result(self) -> list[uuid.UUID]:
        if self.todo:
            raise DatabaseUnavailable(
                f"could not queue {len(self.todo)} unique tasks: their keys kept changing "
                f"hands over {UNIQUE_INSERT_ROUNDS} rounds; try again"
            )
        return [self.ids[index] for index in range(len(self.tasks))]


#: COPY text format: these four characters are the only ones a field must escape here (JSON
#: text and checked names hold no other control character, and no NUL).
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
#: Rows per write to the COPY stream: small writes let the server parse one while the
#: next is built (about 5% faster than one write per 5,000 rows).
COPY_CHUNK_ROWS = 500


def _copy_field(text: str) -> str:
    if "\\" in text or not text.isprintable():
        return text.translate(_COPY_ESCAPES)
    return text


def copy_query(tasks: Sequence[NewTask], run_at: bool) -> str:
    """The name of the COPY block for these rows: with run_at, with a trace context."""
    traced = "_traced" if tasks and tasks[0].trace_context is not None else ""
    return ("copy_tasks_with_run_at" if run_at else "copy_tasks") + traced


def copy_text_chunks(
    tasks: Sequence[NewTask],
    run_at: bool,
    now: Any = None,
    suffix: Callable[[NewTask], str] | None = None,
) -> Iterator[str]:
    """The rows of `copy_query(tasks, run_at)` as COPY text, built here rather than by
    psycopg's per-value dumpers: at a few microseconds a row, bulk queueing is bound by this
    loop. Ids are written as 32 hex digits (a valid uuid input), followed by producer_wakes
    (true: `wake_copied_queues` runs after every COPY). The rows of one call share its trace
    context (one field, the same on every line). `suffix` gives the fields that follow run_at
    instead (`copy_workflow_tasks`, whose last field is the trace context)."""
    trace = tasks[0].trace_context if tasks else None
    traced = "" if trace is None or suffix is not None else "\t" + _copy_field(trace)
    names: dict[str, str] = {}
    # The run_at of the rows due now (most of a workflow's), written once.
    now_text = now.isoformat() if run_at and now is not None else ""
    for start in range(0, len(tasks), COPY_CHUNK_ROWS):
        lines = []
        for task in tasks[start : start + COPY_CHUNK_ROWS]:
            prefix = names.get(task.name + "\x00" + task.queue)
            if prefix is None:
                prefix = f"\tt\t{_copy_field(task.name)}\t{_copy_field(task.queue)}\t"
                names[task.name + "\x00" + task.queue] = prefix
            kwargs = task.kwargs_json
            if kwargs != "{}":
                kwargs = _copy_field(kwargs)
            line = f"{task.id.int:032x}{prefix}{task.priority}\t{kwargs}\t{task.max_retries}"
            if run_at:
                if task.schedule_at is None and not task.delay:
                    line = f"{line}\t{now_text}"
                else:
                    when = task.schedule_at or now + datetime.timedelta(seconds=task.delay)
                    line = f"{line}\t{when.isoformat()}"
            if suffix is not None:
                line = f"{line}\t{suffix(task)}"
            lines.append(line + traced if traced else line)
        lines.append("")
        yield "\n".join(lines)


def _array_field(keys: tuple[str, ...] | None) -> str:
    """A text[] as a COPY field: each element quoted, its quotes and backslashes escaped
    for the array literal, then the whole escaped for COPY (\\N: NULL)."""
    if keys is None:
        return "\\N"
    elements = ",".join('"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"' for key in keys)
    return _copy_field("{" + elements + "}")


def _keys_fields(task: NewTask) -> str:
    """limit_keys and fair_key, the last fields of copy_keyed_tasks / copy_workflow_tasks."""
    fair = "\\N" if task.fair_key is None else _copy_field(task.fair_key)
    return f"\t{_array_field(task.limit_keys)}\t{fair}"


def _is_keyed(tasks: Sequence[NewTask]) -> bool:
    """Whether some task holds limit keys or a fair key (its own insert and COPY)."""
    return any(task.limit_keys is not None or task.fair_key is not None for task in tasks)


def _needs_run_at(tasks: Sequence[NewTask]) -> bool:
    """False when every row runs now: the column default, now(), is the same instant (the
    transaction's start) that `SELECT now()` would give, without that round trip."""
    return any(task.delay or task.schedule_at is not None for task in tasks)


def _trace_field(task: NewTask) -> str:
    """The trace context as the last COPY field of `copy_workflow_tasks` (\\N: none)."""
    trace = "\\N" if task.trace_context is None else _copy_field(task.trace_context)
    return "\t" + trace + _keys_fields(task)


def _keyed_suffix(task: NewTask) -> str:
    """The fields of copy_keyed_tasks after run_at: trace context, limit keys, fair key."""
    return _trace_field(task)[1:]


def _split_roots(tasks: Sequence[NewTask]) -> tuple[list[NewTask], list[NewTask]]:
    """A workflow's tasks without parents or keys (PENDING, like any task: the plain COPY,
    fewer fields to write and parse; a chord's header is most of it) and the others, written
    with every column by copy_workflow_tasks."""
    roots: list[NewTask] = []
    dependents: list[NewTask] = []
    for task in tasks:
        plain = not task.depends_on and task.limit_keys is None and task.fair_key is None
        (roots if plain else dependents).append(task)
    return roots, dependents


def wake_params(tasks: Sequence[NewTask]) -> dict[str, Any]:
    """The queues of a COPY, for `wake_copied_queues`."""
    return {"queues": sorted({task.queue for task in tasks})}


def _is_workflow(tasks: Sequence[NewTask]) -> bool:
    """Whether some task has parents: written with its edges (`_write_workflow`)."""
    return any(task.depends_on for task in tasks)


def _atomic(conn: psycopg.Connection[Any], tasks: Sequence[NewTask]) -> Any:
    """A transaction for many rows; one row in autocommit saves the BEGIN and COMMIT trips."""
    if len(tasks) > 1 or tasks[0].depends_on:
        return conn.transaction()
    return contextlib.nullcontext()


def _async_atomic(conn: psycopg.AsyncConnection[Any], tasks: Sequence[NewTask]) -> Any:
    if len(tasks) > 1 or tasks[0].depends_on:
        return conn.transaction()
    return contextlib.AsyncExitStack()


class TaskStore:
    """Rows of the task table, read and written by producers and operators."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.queries = database.queries

    # -- insert ------------------------------------------------------------------------

    def insert(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        """Write new tasks: in the caller's transaction when given its connection."""
        if connection is not None:
            with translated(self.database.dsn, self.database.schema):
                self._write(sync_driver_connection(connection), tasks)
            return
        for attempt in (1, 2):
            try:
                with self.database.connection() as conn, _atomic(conn, tasks):
                    self._write(conn, tasks)
                return
            except psycopg.errors.UniqueViolation:
                if attempt == 1:
                    raise
                return  # the first attempt committed before its connection broke
            except DatabaseUnavailable:
                if attempt == 2:
                    raise

    def _write(self, conn: psycopg.Connection[Any], tasks: Sequence[NewTask]) -> None:
        if _is_workflow(tasks):
            self._write_workflow(conn, tasks)
            return
        if _is_keyed(tasks):
            self._write_keyed(conn, tasks)
            return
        if len(tasks) == 1:
            conn.execute(self.queries["insert_task"], insert_params(tasks[0]))
            return
        now = None
        run_at = _needs_run_at(tasks)
        if run_at:
            now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        query = self.queries[copy_query(tasks, run_at)]
        with conn.cursor() as cursor:
            with cursor.copy(query) as copy:
                for chunk in copy_text_chunks(tasks, run_at, now):
                    copy.write(chunk)
            cursor.execute(self.queries["wake_copied_queues"], wake_params(tasks))

    async def ainsert(self, tasks: Sequence[NewTask], connection: Any = None) -> None:
        if connection is not None:
            async with atranslated(self.database.dsn, self.database.schema):
                await self._awrite(await async_driver_connection(connection), tasks)
            return
        for attempt in (1, 2):
            try:
                async with self.database.async_connection() as conn, _async_atomic(conn, tasks):
                    await self._awrite(conn, tasks)
                return
            except psycopg.errors.UniqueViolation:
                if attempt == 1:
                    raise
                return
            except DatabaseUnavailable:
                if attempt == 2:
                    raise

    async def _awrite(self, conn: AsyncDriverConnection, tasks: Sequence[NewTask]) -> None:
        if _is_workflow(tasks):
            if isinstance(conn, AsyncpgConnection):
                raise InvalidTaskArguments(
                    "depends_on and workflows are queued on a psycopg connection, not asyncpg"
                )
            await self._awrite_workflow(conn, tasks)
            return
        if _is_keyed(tasks) and not isinstance(conn, AsyncpgConnection):
            await self._awrite_keyed(conn, tasks)
            return
        if len(tasks) == 1 and not _is_keyed(tasks):
            await conn.execute(self.queries["insert_task"], insert_params(tasks[0]))
            return
        if isinstance(conn, AsyncpgConnection):
            # No COPY through asyncpg's API for a statement of ours: the one-statement array
            # insert (rows without a unique key never conflict), in the caller's transaction.
            await conn.execute(self.queries["insert_unique_tasks"], unique_insert_params(tasks))
            return
        now = None
        run_at = _needs_run_at(tasks)
        if run_at:
            now = (await (await conn.execute("SELECT now()")).fetchone())[0]  # type: ignore[index]
        query = self.queries[copy_query(tasks, run_at)]
        async with conn.cursor() as cursor:
            async with cursor.copy(query) as copy:
                for chunk in copy_text_chunks(tasks, run_at, now):
                    await copy.write(chunk)
            await cursor.execute(self.queries["wake_copied_queues"], wake_params(tasks))

    # -- limits and fair share (sql/limits.sql) -------------------------------------------

    def _write_keyed(self, conn: psycopg.Connection[Any], tasks: Sequence[NewTask]) -> None:
        """Rows holding limit or fair keys: one INSERT, or a COPY of every column."""
        if len(tasks) == 1:
            conn.execute(self.queries["insert_keyed_task"], insert_params(tasks[0]))
            return
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        with conn.cursor() as cursor:
            with cursor.copy(self.queries["copy_keyed_tasks"]) as copy:
                for chunk in copy_text_chunks(tasks, True, now, _keyed_suffix):
                    copy.write(chunk)
            cursor.execute(self.queries["wake_copied_queues"], wake_params(tasks))

    async def _awrite_keyed(
        self, conn: psycopg.AsyncConnection[Any], tasks: Sequence[NewTask]
    ) -> None:
        if len(tasks) == 1:
            await conn.execute(self.queries["insert_keyed_task"], insert_params(tasks[0]))
            return
        now = (await (await conn.execute("SELECT now()")).fetchone())[0]  # type: ignore[index]
        async with conn.cursor() as cursor:
            async with cursor.copy(self.queries["copy_keyed_tasks"]) as copy:
                for chunk in copy_text_chunks(tasks, True, now, _keyed_suffix):
                    await copy.write(chunk)
            await cursor.execute(self.queries["wake_copied_queues"], wake_params(tasks))

    # -- workflows (db/dependencies.py) ---------------------------------------------------

    def _write_workflow(self, conn: psycopg.Connection[Any], tasks: Sequence[NewTask]) -> None:
        """Tasks with parents and their edges, in the transaction the caller opened."""
        parents = external_parents(tasks)
        status: dict[uuid.UUID, str] = {}
        if parents:
            rows = conn.execute(self.queries["lock_parents"], {"ids": parents}).fetchall()
            status = {row[0]: row[1] for row in rows}
        plan = plan_workflow(tasks, status)
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        stamp = now.isoformat()
        roots, dependents = _split_roots(tasks)
        with conn.cursor() as cursor:
            if roots:
                run_at = _needs_run_at(roots)
                with cursor.copy(self.queries[copy_query(roots, run_at)]) as copy:
                    for chunk in copy_text_chunks(roots, run_at, now):
                        copy.write(chunk)
            with cursor.copy(self.queries["copy_workflow_tasks"]) as copy:
                for chunk in copy_text_chunks(
                    dependents,
                    True,
                    now,
                    lambda task: plan.copy_suffix(task, stamp) + _trace_field(task),
                ):
                    copy.write(chunk)
            with cursor.copy(self.queries["copy_task_dependencies"]) as copy:
                for edges in edge_rows(dependents):
                    copy.write(edges)
            cursor.execute(self.queries["wake_copied_queues"], wake_params(tasks))

    async def _awrite_workflow(
        self, conn: psycopg.AsyncConnection[Any], tasks: Sequence[NewTask]
    ) -> None:
        parents = external_parents(tasks)
        status: dict[uuid.UUID, str] = {}
        if parents:
            cursor = await conn.execute(self.queries["lock_parents"], {"ids": parents})
            status = {row[0]: row[1] for row in await cursor.fetchall()}
        plan = plan_workflow(tasks, status)
        now = (await (await conn.execute("SELECT now()")).fetchone())[0]  # type: ignore[index]
        stamp = now.isoformat()
        roots, dependents = _split_roots(tasks)
        async with conn.cursor() as cursor:
            if roots:
                run_at = _needs_run_at(roots)
                async with cursor.copy(self.queries[copy_query(roots, run_at)]) as copy:
                    for chunk in copy_text_chunks(roots, run_at, now):
                        await copy.write(chunk)
            async with cursor.copy(self.queries["copy_workflow_tasks"]) as copy:
                for chunk in copy_text_chunks(
                    dependents,
                    True,
                    now,
                    lambda task: plan.copy_suffix(task, stamp) + _trace_field(task),
                ):
                    await copy.write(chunk)
            async with cursor.copy(self.queries["copy_task_dependencies"]) as copy:
                for edges in edge_rows(dependents):
                    await copy.write(edges)
            await cursor.execute(self.queries["wake_copied_queues"], wake_params(tasks))

    def parent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]:
        """{parent id: its result} of a task (None for a parent without one), bounded."""
        with self.database.connection() as conn:
            cursor = conn.execute(self.queries["parent_results"], {"id": task_id})
            return collect_parent_results(task_id, cursor)

    async def aparent_results(self, task_id: uuid.UUID) -> dict[uuid.UUID, Any]:
        async with self.database.async_connection() as conn:
            cursor = await conn.execute(self.queries["parent_results"], {"id": task_id})
            return collect_parent_results(task_id, await cursor.fetchall())

    # -- unique tasks (sql/features.sql) ------------------------------------------------

    def insert_unique(self, tasks: Sequence[NewTask], connection: Any = None) -> list[uuid.UUID]:
        """Write tasks that may carry a unique_key; per row, its own id or the id of the
        unfinished task that holds its key. In the caller's transaction when given."""
        if connection is not None:
            with translated(self.database.dsn, self.database.schema):
                return self._write_unique(sync_driver_connection(connection), tasks)
        for attempt in (1, 2):
            try:
                with self.database.connection() as conn, conn.transaction():
                    return self._write_unique(conn, tasks)
            except DatabaseUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _write_unique(
        self, conn: psycopg.Connection[Any], tasks: Sequence[NewTask]
    ) -> list[uuid.UUID]:
        state = _UniqueInsert(tasks)
        for _ in range(UNIQUE_INSERT_ROUNDS):
            params = unique_insert_params(state.batch())
            inserted = {row[0] for row in conn.execute(self.queries["insert_unique_tasks"], params)}
            keys = state.skipped_keys(inserted)
            holders: dict[str, uuid.UUID] = {}
            if keys:
                rows = conn.execute(self.queries["unique_key_holders"], {"unique_keys": keys})
                holders = {row[0]: row[1] for row in rows}
            if state.settle(inserted, holders):
                break
        return state.result()

    async def ainsert_unique(
        self, tasks: Sequence[NewTask], connection: Any = None
    ) -> list[uuid.UUID]:
        if connection is not None:
            async with atranslated(self.database.dsn, self.database.schema):
                return await self._awrite_unique(await async_driver_connection(connection), tasks)
        for attempt in (1, 2):
            try:
                async with self.database.async_connection() as conn, conn.transaction():
                    return await self._awrite_unique(conn, tasks)
            except DatabaseUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _awrite_unique(
        self, conn: AsyncDriverConnection, tasks: Sequence[NewTask]
    ) -> list[uuid.UUID]:
        state = _UniqueInsert(tasks)
        for _ in range(UNIQUE_INSERT_ROUNDS):
            params = unique_insert_params(state.batch())
            cursor = await conn.execute(self.queries["insert_unique_tasks"], params)
            inserted = {row[0] for row in await cursor.fetchall()}
            keys = state.skipped_keys(inserted)
            holders: dict[str, uuid.UUID] = {}
            if keys:
                cursor = await conn.execute(
                    self.queries["unique_key_holders"], {"unique_keys": keys}
                )
                holders = {row[0]: row[1] for row in await cursor.fetchall()}
            if state.settle(inserted, holders):
                break
        return state.result()

    # -- read and steer ------------------------------------------------------------------

    def get(self, task_id: Any) -> Task | None:
        row = self.database.fetch_one("get_task", {"id": parse_task_id(task_id)})
        return Task.from_row(row) if row else None

    async def aget(self, task_id: Any) -> Task | None:
        row = await self.database.afetch_one("get_task", {"id": parse_task_id(task_id)})
        return Task.from_row(row) if row else None

    def history(self, task_id: Any) -> list[TaskEvent]:
        rows = self.database.fetch_all("task_history", {"id": parse_task_id(task_id)})
        return [TaskEvent.from_row(row) for row in rows]

    async def ahistory(self, task_id: Any) -> list[TaskEvent]:
        rows = await self.database.afetch_all("task_history", {"id": parse_task_id(task_id)})
        return [TaskEvent.from_row(row) for row in rows]

    def cancel(self, task_id: Any) -> bool:
        row = self.database.fetch_one("cancel_task", {"id": parse_task_id(task_id)})
        return bool(row and row["cancel_task"])

    async def acancel(self, task_id: Any) -> bool:
        row = await self.database.afetch_one("cancel_task", {"id": parse_task_id(task_id)})
        return bool(row and row["cancel_task"])

    def retry(self, task_id: Any) -> bool:
        row = self.database.fetch_one("retry_task", {"id": parse_task_id(task_id)})
        return bool(row and row["retry_task"])

    async def aretry(self, task_id: Any) -> bool:
        row = await self.database.afetch_one("retry_task", {"id": parse_task_id(task_id)})
        return bool(row and row["retry_task"])
