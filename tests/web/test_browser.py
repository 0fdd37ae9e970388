"""The dashboard as a person uses it: Debian's Chromium, driven by Playwright, against a
dashboard served by uvicorn and real workers. The run saves the screenshots the docs show
(docs/img/dashboard-*.png)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dashboard_tasks
import pytest
from playwright.sync_api import Browser, Page, expect
from support.dashboard import SCREENSHOTS, Served
from support.waiting import wait_until

from pgqueue import chain
from pgqueue.records import TaskStatus
from pgqueue.task_manager import TaskManager

pytestmark = pytest.mark.slow

#: How long a live update may take to show (a batch, a fetch, a slow shared machine).
LIVE_MS = 20_000


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"dashboard-{name}.png"), full_page=True)


def status_is(tm: TaskManager, task_id: Any, status: TaskStatus) -> bool:
    task = tm.get_task(task_id)
    return task is not None and task.status is status


def test_a_task_queued_while_the_overview_is_open_appears_without_a_reload(
    serve: Callable[..., Served], page: Page, tm: TaskManager
) -> None:
    served = serve()
    page.goto(served.url + "/")
    expect(page.locator("h1")).to_have_text("Overview")
    page.evaluate("window.__same_page = true")

    tm.queue_task(task="app.jobs.report", queue="reports", day=1)
    row = page.locator('tr[data-queue="reports"]')
    expect(row).to_be_visible(timeout=LIVE_MS)
    expect(row.locator("td").nth(1)).to_have_text("1")
    assert page.evaluate("window.__same_page") is True  # no reload happened


def test_filter_failed_open_one_see_each_attempt_then_retry_it_to_completion(
    serve: Callable[..., Served],
    page: Page,
    tm: TaskManager,
    start_worker: Callable[..., Any],
) -> None:
    start_worker(queues=["web"])
    task_id = dashboard_tasks.flaky.delay(user_id=7)
    dashboard_tasks.greet.delay(name="ann")
    wait_until(lambda: status_is(tm, task_id, TaskStatus.FAILED), timeout=60)

    served = serve()
    page.goto(served.url + "/")
    shot(page, "overview")
    page.goto(served.url + "/tasks")
    page.select_option('select[name="status"]', "failed")
    page.click('form.filters button[type="submit"]')
    expect(page).to_have_url(f"{served.url}/tasks?status=failed&queue=&name=&q=")
    rows = page.locator("tr[data-task-id]")
    expect(rows).to_have_count(1)
    shot(page, "tasks")
    rows.first.locator("a").first.click()

    errors = page.locator("ol.attempt-errors > li")
    expect(errors).to_have_count(2)
    expect(errors.nth(0)).to_contain_text("ValueError: user 7 unreachable on attempt 1")
    expect(errors.nth(1)).to_contain_text("ValueError: user 7 unreachable on attempt 2")
    expect(errors.nth(1).locator("pre")).to_contain_text("Traceback (most recent call last)")
    events = page.locator("table.timeline tbody td:nth-child(2)")
    expect(events).to_have_text(
        ["enqueued", "started", "failed", "retry_scheduled", "started", "failed"]
    )
    expect(page.locator("#task-status")).to_have_text("failed")
    shot(page, "task")

    page.goto(served.url + "/failures")
    expect(page.locator("code.shape").first).to_contain_text("ValueError: user N unreachable")
    shot(page, "failures")

    page.go_back()
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#task-status")).to_have_text("completed", timeout=LIVE_MS)
    expect(page.locator("#task-result")).to_contain_text('"attempt": 3')
    expect(events.last).to_have_text("completed")
    assert status_is(tm, task_id, TaskStatus.COMPLETED)


def test_pause_a_queue_from_the_page_and_the_worker_skips_it(
    serve: Callable[..., Served],
    page: Page,
    tm: TaskManager,
    start_worker: Callable[..., Any],
) -> None:
    start_worker(queues=["web", "other"])
    served = serve()
    page.goto(served.url + "/queues")
    row = page.locator('tr[data-queue="web"]')
    expect(row).to_be_visible(timeout=LIVE_MS)  # a live worker serves it
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".status-paused")).to_have_text("paused")

    held = dashboard_tasks.greet.delay(name="held")
    passed = tm.queue_task(task=dashboard_tasks.greet, queue="other", name="passed")
    wait_until(lambda: status_is(tm, passed, TaskStatus.COMPLETED), timeout=30)
    assert status_is(tm, held, TaskStatus.PENDING)  # claimed by no one, while "other" ran

    page.goto(f"{served.url}/tasks/{held}")
    expect(page.locator("ul.reasons")).to_contain_text("queue 'web' is paused")
    page.goto(served.url + "/workers")
    expect(page.locator("table.workers")).to_contain_text("web, other")
    shot(page, "workers")

    page.goto(served.url + "/queues")
    page.locator('tr[data-queue="web"]').get_by_role("button", name="Resume").click()
    wait_until(lambda: status_is(tm, held, TaskStatus.COMPLETED), timeout=30)
    shot(page, "queues")


def test_read_only_refuses_actions_in_the_browser(
    serve: Callable[..., Served], page: Page, tm: TaskManager, db: Any
) -> None:
    task_id = tm.queue_task(task="app.jobs.mail", queue="emails")
    served = serve(read_only=True)
    page.goto(f"{served.url}/tasks/{task_id}")
    expect(page.locator(".badge")).to_have_text("read-only")
    expect(page.get_by_role("button")).to_have_count(0)
    answer = page.request.post(
        f"{served.url}/tasks/{task_id}/cancel",
        form={"token": "x"},
        headers={"Origin": served.url},
    )
    assert answer.status == 403
    assert status_is(tm, task_id, TaskStatus.PENDING)


def test_basic_auth_refuses_without_the_password(
    serve: Callable[..., Served], browser: Browser, tm: TaskManager
) -> None:
    task_id = tm.queue_task(task="app.jobs.mail", queue="emails")
    served = serve(env={"PGQUEUE_DASHBOARD_USER": "ops", "PGQUEUE_DASHBOARD_PASSWORD": "pw"})
    stranger = browser.new_context()
    assert stranger.request.get(served.url + "/").status == 401
    assert stranger.request.get(f"{served.url}/tasks/{task_id}").status == 401
    refused = stranger.request.post(
        f"{served.url}/tasks/{task_id}/cancel", headers={"Origin": served.url}
    )
    assert refused.status == 401
    stranger.close()

    operator = browser.new_context(http_credentials={"username": "ops", "password": "pw"})
    page = operator.new_page()
    assert page.goto(f"{served.url}/tasks/{task_id}").status == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#task-status")).to_have_text("cancelled")
    operator.close()


def test_a_script_task_name_is_shown_as_text(
    serve: Callable[..., Served], page: Page, tm: TaskManager
) -> None:
    evil = "<script>window.__xss = 1</script>"
    task_id = tm.queue_task(task=evil, queue="default", note="<img src=x onerror=alert(1)>")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    served = serve()
    for path in ["/tasks", f"/tasks/{task_id}"]:
        page.goto(served.url + path)
        expect(page.locator(".name").first).to_have_text(evil)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []


def test_a_task_page_draws_its_workflow_and_each_box_leads_to_that_task(
    serve: Callable[..., Served],
    page: Page,
    tm: TaskManager,
    start_worker: Callable[..., Any],
) -> None:
    start_worker(queues=["web"])
    first, second = tm.queue_workflow(
        chain(dashboard_tasks.greet.s(name="a"), dashboard_tasks.greet.s(name="b")).steps()
    )
    assert tm.wait(second, timeout=60) == "hello b"
    elsewhere = tm.queue_task(task="app.jobs.fetch", queue="elsewhere")  # no worker serves it
    # (tm's calls, not .delay(): Playwright runs an event loop in this thread)
    child = tm.queue_task(dashboard_tasks.greet, name="c", depends_on=[second, elsewhere])

    served = serve()
    page.goto(f"{served.url}/tasks/{child}")
    graph = page.locator("svg.workflow-graph")
    expect(graph).to_be_visible()
    nodes = graph.locator("g.node")
    expect(nodes).to_have_count(3)  # two parents, the task
    expect(graph.locator(f'g.node-current[data-task="{child}"] .state')).to_have_text("WAITING")
    expect(graph.locator(f'g[data-task="{elsewhere}"] .state')).to_have_text("PENDING")
    expect(graph.locator(f'g[data-task="{second}"] .state')).to_have_text("COMPLETED")
    expect(page.locator("#workflow figcaption")).to_contain_text("2 parents · 0 children")
    shot(page, "workflow")

    graph.locator(f'g[data-task="{second}"]').click()
    expect(page).to_have_url(f"{served.url}/tasks/{second}")
    graph = page.locator("svg.workflow-graph")
    expect(graph.locator(f'g.node-parent[data-task="{first}"]')).to_be_visible()
    expect(graph.locator(f'g.node-child[data-task="{child}"] .state')).to_have_text("WAITING")
