"""The dashboard's actions (POST): retry and cancel a task, retry every task a filter
matches, pause and resume a queue. Each goes through Admin's own calls (pgqueue/ops).

Before anything, every action is checked: refused (403) in read-only mode, from a foreign
Origin, or without this browser's token. It answers with a redirect to a page (303).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from pgqueue.errors import InvalidTaskOption, TaskNotFound
from pgqueue.ops.dashboard import DashboardQueries
from pgqueue.web.pages import parse_filters, state_of
from pgqueue.web.security import CSRF_COOKIE, same_origin
from pgqueue.web.state import link

#: Largest form an action reads (its fields are a token, a queue name, filters).
MAX_FORM_BYTES = 64 * 1024


async def retry_task(request: Request) -> Response:
    return await _on_task(request, lambda board, task_id: board.retry(task_id), "retried")


async def cancel_task(request: Request) -> Response:
    return await _on_task(request, lambda board, task_id: board.cancel(task_id), "cancelled")


async def _on_task(
    request: Request, act: Callable[[DashboardQueries, str], bool], verb: str
) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    task_id = request.path_params["task_id"]
    try:
        changed = await state_of(request).run(lambda board: act(board, task_id))
    except (TaskNotFound, InvalidTaskOption) as error:
        return PlainTextResponse(str(error), status_code=400)
    return _back(request, f"/tasks/{task_id}", done=verb if changed else f"not {verb}")


async def pause_queue(request: Request) -> Response:
    return await _on_queue(request, lambda board, queue: board.pause_queue(queue), "paused")


async def resume_queue(request: Request) -> Response:
    return await _on_queue(request, lambda board, queue: board.resume_queue(queue), "resumed")


async def _on_queue(
    request: Request, act: Callable[[DashboardQueries, str], bool], verb: str
) -> Response:
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    queue = form.get("queue", "")
    try:
        await state_of(request).run(lambda board: act(board, queue))
    except InvalidTaskOption as error:
        return PlainTextResponse(str(error), status_code=400)
    return _back(request, "/queues", done=f"{verb} {queue}")


async def retry_matching(request: Request) -> Response:
    """Retry every task the filters match; the form carries the count the person confirmed."""
    form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    try:
        filters = parse_filters(request, form)
        retried = await state_of(request).run(lambda board: board.retry_matching(filters))
    except InvalidTaskOption as error:
        return PlainTextResponse(str(error), status_code=400)
    return _back(request, "/tasks", done=f"retried {len(retried)}", **filters.query())


async def _checked_form(request: Request) -> dict[str, str] | Response:
    """The action's form fields, or the 403 that refuses it."""
    state = state_of(request)
    if state.read_only:
        return _refuse("this dashboard is read-only: actions are disabled")
    if not same_origin(Headers(scope=request.scope), request.scope):
        return _refuse("cross-site request refused: the Origin is not this dashboard")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return PlainTextResponse("form too large", status_code=413)
    form = _parse_form(body)
    if not state.security.token_matches(request.cookies.get(CSRF_COOKIE), form.get("token")):
        return _refuse("missing or wrong form token: reload the page and try again")
    return form


def _parse_form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the last value of each field)."""
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs)


def _refuse(message: str) -> Response:
    return PlainTextResponse(message, status_code=403)


def _back(request: Request, path: str, **params: Any) -> Response:
    root = request.scope.get("root_path", "")
    return RedirectResponse(link(root, path, **params), status_code=303)
