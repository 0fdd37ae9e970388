"""The dashboard's routes through Starlette's TestClient, on a real database: pages, filters,
keyset pages, the defences (read-only, token and Origin, basic auth, escaping, redaction),
the actions and a mount under a path."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from pgqueue.task_manager import TaskManager
from pgqueue.web import create_app

ORIGIN = "http://testserver"


def fail(db: psycopg.Connection[Any], task_id: uuid.UUID, error: str) -> None:
    db.execute(
        "UPDATE pgqueue.tasks SET status = 'FAILED', attempts = 1, finished_at = now(), "
        "error = %s WHERE id = %s",
        (error, task_id),
    )


def status_of(db: psycopg.Connection[Any], task_id: uuid.UUID) -> str:
    row = db.execute("SELECT status::text FROM pgqueue.tasks WHERE id = %s", (task_id,)).fetchone()
    assert row is not None
    return str(row[0])


def token_of(page: str) -> str:
    found = re.search(r'name="token" value="([0-9a-f]+)"', page)
    assert found, "the page offers no action form"
    return found.group(1)


@pytest.fixture
def client(dsn: str) -> TestClient:
    return TestClient(create_app(dsn))


def test_every_page_answers(client: TestClient, tm: TaskManager) -> None:
    task_id = tm.queue_task(task="app.jobs.report", queue="reports", day=3)
    for path in ["/", "/queues", "/tasks", f"/tasks/{task_id}", "/failures", "/workers", "/cron"]:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
    assert "reports" in client.get("/").text
    assert "app.jobs.report" in client.get(f"/tasks/{task_id}").text


def test_the_workers_page_shows_limits_and_each_keys_use(
    client: TestClient, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    tm.set_limit("tenant:*", concurrency=3)
    tm.set_limit("api", rate=14, per=1)
    tm.queue_task(task="app.jobs.mail", queue="emails", limits=["tenant:acme", "api"])
    db.execute("SELECT * FROM pgqueue.claim_keyed_tasks(ARRAY['emails'], 5, 'w', 60.0)")
    page = client.get("/workers").text
    assert "tenant:*" in page and "14 per 1 s, burst 14" in page
    assert re.search(r"tenant:acme</td>\s*<td[^>]*>tenant:\*</td>\s*<td[^>]*>1 / 3<", page)


def test_filters_pick_exactly_the_matching_tasks(
    client: TestClient, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    a = tm.queue_task(task="app.jobs.mail", queue="emails", user_id=1, plan="pro")
    b = tm.queue_task(task="app.jobs.mail", queue="emails", user_id=2, plan="free")
    c = tm.queue_task(task="app.jobs.bill", queue="billing", user_id=1)
    fail(db, b, "ValueError: nope")

    def ids(**params: str) -> set[str]:
        page = client.get("/tasks", params=params)
        assert page.status_code == 200, page.text
        return set(re.findall(r'data-task-id="([0-9a-f-]+)"', page.text))

    assert ids() == {str(a), str(b), str(c)}
    assert ids(status="FAILED") == ids(status="failed") == {str(b)}
    assert ids(queue="emails") == {str(a), str(b)}
    assert ids(name="app.jobs.bill") == {str(c)}
    assert ids(q='{"user_id": 1}') == {str(a), str(c)}
    assert ids(q='{"user_id": 1}', queue="emails", status="pending") == {str(a)}
    assert ids(name="app.jobs") == set()  # the exact name, not a prefix


def test_bad_filters_are_one_clear_line(client: TestClient) -> None:
    for params, words in [
        ({"status": "nope"}, "unknown status 'nope'"),
        ({"q": "[1, 2]"}, "q must be a JSON object"),
        ({"q": "{oops"}, "q must be a JSON object"),
        ({"before": "xyz"}, "not a task id"),
    ]:
        response = client.get("/tasks", params=params)
        assert response.status_code == 400
        assert words in response.text.replace("&#39;", "'")


def test_keyset_pages_cover_every_task_once_newest_first(
    client: TestClient, tm: TaskManager
) -> None:
    queued = tm.queue_tasks("app.jobs.step", [{"n": n} for n in range(120)])
    seen: list[str] = []
    path: str | None = "/tasks"
    while path:
        page = client.get(path).text
        assert "OFFSET" not in page
        seen += re.findall(r'data-task-id="([0-9a-f-]+)"', page)
        older = re.search(r'href="(/tasks\?before=[^"]+)">older', page)
        path = older.group(1).replace("&amp;", "&") if older else None
    assert seen == [str(task_id) for task_id in sorted(queued, reverse=True)]
    assert "120 tasks" in client.get("/tasks").text


def test_task_page_shows_arguments_result_and_last_error(
    client: TestClient, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    task_id = tm.queue_task(task="app.jobs.mail", to="ann@example.com", api_key="k-123")
    fail(db, task_id, "ValueError: mailbox full\n\nTraceback (most recent call last):\n  ...")
    page = client.get(f"/tasks/{task_id}").text
    assert "ann@example.com" in page
    assert "k-123" not in page and "***" in page
    assert "mailbox full" in page and "Traceback (most recent call last)" in page


def test_script_in_a_name_or_argument_is_text(client: TestClient, tm: TaskManager) -> None:
    evil = "<script>alert(1)</script>"
    task_id = tm.queue_task(task=evil, queue=evil, note=evil)
    for path in ["/", "/queues", "/tasks", f"/tasks/{task_id}"]:
        page = client.get(path).text
        assert evil not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


def test_secret_arguments_are_redacted_and_cannot_be_searched(
    dsn: str, tm: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    tm.queue_task(task="app.jobs.login", user="ann", password="hunter2", pin="0000")
    page = TestClient(create_app(dsn)).get("/tasks").text
    assert "hunter2" not in page and "ann" in page and "0000" in page
    refused = TestClient(create_app(dsn)).get("/tasks", params={"q": '{"password": "hunter2"}'})
    assert refused.status_code == 400 and "redacted" in refused.text

    monkeypatch.setenv("PGQUEUE_DASHBOARD_REDACT", "pin")
    page = TestClient(create_app(dsn)).get("/tasks").text
    assert "0000" not in page and "hunter2" in page


def test_actions_need_the_token_and_this_origin(
    client: TestClient, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    task_id = tm.queue_task(task="app.jobs.mail")
    token = token_of(client.get(f"/tasks/{task_id}").text)
    cancel = f"/tasks/{task_id}/cancel"

    no_token = client.post(cancel, data={}, headers={"Origin": ORIGIN})
    wrong_token = client.post(cancel, data={"token": "0" * 64}, headers={"Origin": ORIGIN})
    foreign = client.post(cancel, data={"token": token}, headers={"Origin": "https://evil.test"})
    no_origin = client.post(cancel, data={"token": token})
    assert [r.status_code for r in (no_token, wrong_token, foreign, no_origin)] == [403] * 4
    assert status_of(db, task_id) == "PENDING"

    done = client.post(
        cancel, data={"token": token}, headers={"Origin": ORIGIN}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"].startswith(f"/tasks/{task_id}")
    assert status_of(db, task_id) == "CANCELLED"

    retried = client.post(
        f"/tasks/{task_id}/retry", data={"token": token}, headers={"Origin": ORIGIN}
    )
    assert retried.status_code == 200
    assert status_of(db, task_id) == "PENDING"


def test_a_token_of_another_browser_is_refused(
    dsn: str, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    task_id = tm.queue_task(task="app.jobs.mail")
    app = create_app(dsn)
    victim, attacker = TestClient(app), TestClient(app)
    token = token_of(attacker.get(f"/tasks/{task_id}").text)
    victim.get("/")  # the victim has a cookie of its own
    forged = victim.post(
        f"/tasks/{task_id}/cancel", data={"token": token}, headers={"Origin": ORIGIN}
    )
    assert forged.status_code == 403
    assert status_of(db, task_id) == "PENDING"


def test_read_only_offers_no_action_and_refuses_all(
    dsn: str, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    task_id = tm.queue_task(task="app.jobs.mail", queue="emails")
    fail(db, task_id, "ValueError: x")
    client = TestClient(create_app(dsn, read_only=True))
    for path in [f"/tasks/{task_id}", "/queues", "/tasks?status=failed"]:
        page = client.get(path).text
        assert 'method="post"' not in page and "Retry all" not in page, path
        assert "read-only" in page
    token = TestClient(create_app(dsn)).get("/queues").text  # a page that has forms
    for path, data in [
        (f"/tasks/{task_id}/retry", {}),
        (f"/tasks/{task_id}/cancel", {}),
        ("/queues/pause", {"queue": "emails"}),
        ("/tasks/retry", {"status": "failed"}),
    ]:
        response = client.post(path, data={**data, "token": token}, headers={"Origin": ORIGIN})
        assert response.status_code == 403, path
    assert status_of(db, task_id) == "FAILED"
    assert db.execute("SELECT count(*) FROM pgqueue.paused_queues").fetchone() == (0,)


def test_basic_auth_when_user_and_password_are_set(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGQUEUE_DASHBOARD_USER", "ops")
    monkeypatch.setenv("PGQUEUE_DASHBOARD_PASSWORD", "s3cret")
    client = TestClient(create_app(dsn))
    for path in ["/", "/tasks", "/static/htmx.min.js", "/events"]:
        assert client.get(path).status_code == 401, path
    assert client.get("/", auth=("ops", "wrong")).status_code == 401
    assert client.get("/", auth=("nobody", "s3cret")).status_code == 401
    response = client.post("/queues/pause", data={"queue": "q"}, headers={"Origin": ORIGIN})
    assert response.status_code == 401
    assert client.get("/", auth=("ops", "s3cret")).status_code == 200


def test_pause_and_resume_a_queue(
    client: TestClient, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    tm.queue_task(task="app.jobs.mail", queue="emails")
    token = token_of(client.get("/queues").text)
    form = {"token": token, "queue": "emails"}
    client.post("/queues/pause", data=form, headers={"Origin": ORIGIN})
    assert db.execute("SELECT queue FROM pgqueue.paused_queues").fetchall() == [("emails",)]
    assert "Resume" in client.get("/queues").text
    client.post("/queues/resume", data=form, headers={"Origin": ORIGIN})
    assert db.execute("SELECT count(*) FROM pgqueue.paused_queues").fetchone() == (0,)


def test_bulk_retry_is_confirmed_with_its_count_and_retries_only_the_matches(
    client: TestClient, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    mails = [tm.queue_task(task="app.jobs.mail", queue="emails", n=n) for n in range(3)]
    bill = tm.queue_task(task="app.jobs.bill", queue="billing")
    for task_id in [*mails, bill]:
        fail(db, task_id, "ValueError: down")
    confirm = client.get("/tasks/retry", params={"status": "failed", "queue": "emails"}).text
    assert re.search(r'class="confirm-count">\s*3<', confirm)
    assert "Retry 3 tasks" in confirm
    form = {"token": token_of(confirm), "status": "failed", "queue": "emails"}
    done = client.post(
        "/tasks/retry", data=form, headers={"Origin": ORIGIN}, follow_redirects=False
    )
    assert done.status_code == 303 and "retried+3" in done.headers["location"]
    assert [status_of(db, task_id) for task_id in mails] == ["PENDING"] * 3
    assert status_of(db, bill) == "FAILED"
    assert client.get("/tasks/retry", params={"status": "pending"}).status_code == 400


def test_failures_are_grouped_by_error_shape(
    client: TestClient, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    for user in (7, 42, 1234):
        fail(db, tm.queue_task(task="app.jobs.mail"), f"ValueError: user {user} not found\n\n...")
    fail(db, tm.queue_task(task="app.jobs.mail"), "KeyError: 'plan'\n\n...")
    page = client.get("/failures").text
    rows = re.findall(r'<td class="num">(\d+)</td>\s*<td><code class="shape">([^<]*)</code>', page)
    assert rows == [("3", "ValueError: user N not found"), ("1", "KeyError: &#39;…&#39;")]


def test_mounted_under_a_path_every_link_keeps_it_without_lifespan(
    dsn: str, tm: TaskManager
) -> None:
    task_id = tm.queue_task(task="app.jobs.mail", queue="emails")
    outer = Starlette(routes=[Mount("/ops/queue", app=create_app(dsn))])
    client = TestClient(outer)  # not entered: no lifespan runs
    for path in ["/", "/queues", "/tasks", f"/tasks/{task_id}", "/failures"]:
        page = client.get("/ops/queue" + path)
        assert page.status_code == 200, path
        links = re.findall(r'(?:href|src|action|hx-get|data-events)="([^"]*)"', page.text)
        assert links and all(link.startswith("/ops/queue/") for link in links), links
    assert client.get("/ops/queue/static/htmx.min.js").status_code == 200
    token = token_of(client.get("/ops/queue/queues").text)
    done = client.post(
        "/ops/queue/queues/pause",
        data={"token": token, "queue": "emails"},
        headers={"Origin": ORIGIN},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/ops/queue/queues")


def test_the_vendored_htmx_keeps_its_license_header(client: TestClient) -> None:
    script = client.get("/static/htmx.min.js")
    assert script.status_code == 200
    assert script.text.startswith("/*! htmx 2.")
    assert "Zero-Clause BSD" in client.get("/static/htmx.LICENSE.txt").text


def test_database_away_is_one_line_not_a_traceback() -> None:
    client = TestClient(create_app("postgresql://postgres@127.0.0.1:1/none"))
    response = client.get("/tasks")
    assert response.status_code == 503
    assert "cannot use PostgreSQL" in response.text and "Traceback" not in response.text


def _graph(page: str) -> str:
    found = re.search(r'<svg class="workflow-graph".*?</svg>', page, re.S)
    assert found, "the page draws no workflow graph"
    return found.group(0)


def test_task_page_draws_its_workflow_parents_and_children_with_links_and_statuses(
    dsn: str, tm: TaskManager, db: psycopg.Connection[Any]
) -> None:
    evil = "<script>alert(1)</script>"
    done = tm.queue_task(task="app.jobs.fetch")
    db.execute(
        "UPDATE pgqueue.tasks SET status = 'COMPLETED', finished_at = now() WHERE id = %s", (done,)
    )
    pending = tm.queue_task(task=evil)
    child = tm.queue_task(task="app.jobs.merge", depends_on=[done, pending])
    grandchildren = tm.queue_tasks(
        "app.jobs.report", [{"n": n} for n in range(25)], depends_on=[child]
    )
    outer = Starlette(routes=[Mount("/ops", app=create_app(dsn))])
    page = TestClient(outer).get(f"/ops/tasks/{child}").text
    graph = _graph(page)
    drawn = re.findall(r'data-task="([0-9a-f-]+)"', graph)
    # Parents (the unsettled first), the task, then the first 20 children in id order.
    assert drawn == [str(pending), str(done), str(child), *map(str, sorted(grandchildren)[:20])]
    links = re.findall(r'<a href="([^"]+)">', graph)
    assert f"/ops/tasks/{child}" not in links  # the task shown is no link
    assert links == [f"/ops/tasks/{t}" for t in drawn if t != str(child)]
    assert re.search(rf'status-completed" data-task="{done}"', graph)
    assert re.search(rf'status-pending" data-task="{pending}"', graph)
    assert re.search(rf'node-current status-waiting" data-task="{child}"', graph)
    assert "and 5 more children" in graph
    assert evil not in page and "&lt;script&gt;" in graph
    assert "2 parents · 25 children" in page
    alone = tm.queue_task(task="app.jobs.fetch")
    assert "workflow-graph" not in TestClient(create_app(dsn)).get(f"/tasks/{alone}").text
