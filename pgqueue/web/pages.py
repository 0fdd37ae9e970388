"""The dashboard's pages (GET): overview, queues, tasks, one task, failures, workers, cron.

Each page reads through `DashboardQueries` (pgqueue/ops) in a worker thread and renders a
template; a page is also what its live region fetches again when the database changes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pgqueue.errors import InvalidTaskOption, TaskNotFound
from pgqueue.ops.dashboard import PAGE_SCAN_LIMIT, RETRYABLE, DashboardQueries, TaskFilter
from pgqueue.records import TaskStatus
from pgqueue.web.charts import throughput_svg
from pgqueue.web.graph import workflow_svg
from pgqueue.web.state import WINDOW_SECONDS, DashboardState, link

PAGE_SIZE = 50


def state_of(request: Request) -> DashboardState:
    dashboard: DashboardState = request.app.state.dashboard
    return dashboard


async def overview(request: Request) -> Response:
    state = state_of(request)

    def read(board: DashboardQueries) -> dict[str, Any]:
        recent = board.recent(state.recent)
        queues = board.queue_overview(WINDOW_SECONDS, recent)
        buckets = recent.buckets
        return {
            "queues": queues,
            "chart": throughput_svg(buckets),
            "totals": _totals(queues, buckets),
            "total_estimate": board.total_estimate(),
            "workers": len(board.live_workers()),
        }

    return state.render(request, "overview.html", {"page": "overview", **await state.run(read)})


def _totals(queues: list[dict[str, Any]], buckets: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("pending", "scheduled", "running", "retrying", "waiting", "failed", "cancelled")
    totals = {key: sum(row[key] for row in queues) for key in keys}
    totals["completed_recent"] = sum(bucket["completed"] for bucket in buckets)
    totals["failed_recent"] = sum(bucket["failed"] for bucket in buckets)
    return totals


async def queues(request: Request) -> Response:
    state = state_of(request)
    rows = await state.run(
        lambda board: board.queue_overview(WINDOW_SECONDS, board.recent(state.recent))
    )
    return state.render(request, "queues.html", {"page": "queues", "queues": rows})


async def tasks(request: Request) -> Response:
    state = state_of(request)
    try:
        filters = _filters(request)
        before = request.query_params.get("before") or None
    except InvalidTaskOption as error:
        return _bad_request(request, "tasks", error)

    def read(board: DashboardQueries) -> dict[str, Any]:
        return {
            "result": board.tasks_page(filters, before=before, limit=PAGE_SIZE),
            "count": board.count_matching(filters),
        }

    try:
        found = await state.run(read)
    except (InvalidTaskOption, TaskNotFound) as error:  # a malformed cursor
        return _bad_request(request, "tasks", error)
    return state.render(
        request,
        "tasks.html",
        {
            "page": "tasks",
            "filters": filters,
            "statuses": [status.value.lower() for status in TaskStatus],
            "before": before,
            "tasks": found["result"].tasks,
            "next_cursor": found["result"].next_cursor,
            "window_ended": found["result"].window_ended,
            "count": found["count"],
            "can_bulk_retry": filters.status in RETRYABLE,
            "scan_limit": PAGE_SCAN_LIMIT,
            "redact": state.security.redact,
        },
    )


async def confirm_retry(request: Request) -> Response:
    """The confirmation of a bulk retry, with the number of tasks it will retry."""
    state = state_of(request)
    try:
        filters = _filters(request)
        if filters.status not in RETRYABLE:
            raise InvalidTaskOption(
                "a bulk retry needs the filter status=failed or status=cancelled"
            )
    except InvalidTaskOption as error:
        return _bad_request(request, "tasks", error)
    count = await state.run(lambda board: board.count_matching(filters))
    return state.render(
        request, "confirm_retry.html", {"page": "tasks", "filters": filters, "count": count}
    )


async def task(request: Request) -> Response:
    state = state_of(request)
    task_id = request.path_params["task_id"]

    def read(board: DashboardQueries) -> dict[str, Any]:
        found = board.get_task(task_id)
        reasons = [] if found.status.is_finished else board.explain(found.id)["reasons"]
        return {
            "task": found,
            "timeline": board.history(found.id),
            "history_on": board.history_enabled(),
            "reasons": reasons,
            "relatives": board.relatives(found.id),
        }

    try:
        found = await state.run(read)
    except TaskNotFound as error:
        return state.render(
            request, "error.html", {"page": "tasks", "message": str(error)}, status=404
        )
    except InvalidTaskOption as error:
        return _bad_request(request, "tasks", error)
    attempts = [event for event in found["timeline"] if event.event == "failed" and event.error]
    return state.render(
        request,
        "task.html",
        {
            "page": "tasks",
            **found,
            "attempt_errors": attempts,
            "kwargs": state.security.redact(found["task"].kwargs),
            "result": state.security.redact(found["task"].result),
            "retryable": found["task"].status in RETRYABLE,
            "cancellable": not found["task"].status.is_finished,
            "graph": workflow_svg(
                found["task"],
                found["relatives"],
                functools.partial(link, request.scope.get("root_path", "")),
            ),
        },
    )


async def failures(request: Request) -> Response:
    state = state_of(request)
    groups = await state.run(lambda board: board.failure_groups())
    return state.render(request, "failures.html", {"page": "failures", "groups": groups})


#: Keys shown in the limits table of the workers page (the busiest are not picked: by key).
LIMIT_KEYS_SHOWN = 200


async def workers(request: Request) -> Response:
    state = state_of(request)

    def read(board: DashboardQueries) -> dict[str, Any]:
        running: dict[str, list[dict[str, Any]]] = {}
        for row in board.running_tasks():
            running.setdefault(row["worker_id"], []).append(row)
        # Limits (sql/limits.sql) beside the workers they hold back: each key's use now.
        return {
            "workers": board.live_workers(),
            "running": running,
            "limits": board.limits(),
            "limit_keys": board.limit_usage()[:LIMIT_KEYS_SHOWN],
        }

    return state.render(request, "workers.html", {"page": "workers", **await state.run(read)})


async def cron(request: Request) -> Response:
    state = state_of(request)
    schedules = await state.run(lambda board: board.cron_schedules())
    return state.render(request, "cron.html", {"page": "cron", "schedules": schedules})


def _filters(request: Request) -> TaskFilter:
    return parse_filters(request, request.query_params)


def parse_filters(request: Request, params: Mapping[str, str]) -> TaskFilter:
    """The task filters of a page or a form; a `q` naming a redacted key is refused."""
    filters = TaskFilter.parse(params)
    hidden = state_of(request).security.redacted_keys_in(filters.contains)
    if hidden:
        raise InvalidTaskOption(
            f"q may not filter on the redacted argument {hidden[0]!r} "
            "(PGQUEUE_DASHBOARD_REDACT): it would reveal its value"
        )
    return filters


def _bad_request(request: Request, page: str, error: Exception) -> Response:
    return state_of(request).render(
        request, "error.html", {"page": page, "message": str(error)}, status=400
    )
