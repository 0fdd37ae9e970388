"""The FastAPI recipe of docs/fastapi.md, for real: an app on SQLAlchemy's postgresql+asyncpg
whose endpoint queues a task in the request's transaction, served through httpx's ASGI
transport, with pgqueue.contrib.asgi.lifespan running the worker that runs the task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from support.database import asyncpg_url

pytest.importorskip("fastapi")
pytest.importorskip("asyncpg")

import httpx
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from pgqueue import AsyncTask
from pgqueue.contrib.asgi import lifespan
from pgqueue.errors import ConfigurationError
from pgqueue.settings import Settings
from pgqueue.task_manager import TaskManager


@AsyncTask(queue="web")
async def send_welcome(user_id: int) -> str:
    return f"welcome {user_id}"


def make_app(dsn: str, settings: Settings) -> FastAPI:
    engine = create_async_engine(asyncpg_url(dsn, "postgresql+asyncpg"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions() as db, db.begin():  # one transaction per request
            yield db

    app = FastAPI(lifespan=lifespan(queues=["web"], settings=settings, dashboard_path="/pgqueue"))

    @app.post("/users/{user_id}")
    async def create_user(
        user_id: int,
        db: AsyncSession = Depends(session),  # noqa: B008 - FastAPI's way
    ) -> dict[str, Any]:
        await db.execute(text("INSERT INTO users VALUES (:id)"), {"id": user_id})
        task_id = await send_welcome.adelay(user_id=user_id, connection=db)
        if user_id < 0:
            raise HTTPException(400, "negative ids are refused")  # rolls back user and task
        return {"task_id": str(task_id)}

    return app


def test_a_request_queues_in_its_transaction_and_the_lifespan_worker_runs_it(
    tm: TaskManager, settings: Settings, dsn: str, db: psycopg.Connection[Any]
) -> None:
    db.execute("CREATE TABLE users (id int)")
    app = make_app(dsn, settings)

    async def main() -> tuple[Any, int, Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                created = await client.post("/users/7")
                refused = await client.post("/users/-1")
                result = await tm.await_result(created.json()["task_id"], timeout=30)
        return result, refused.status_code, created.json()["task_id"]

    result, refused_status, task_id = asyncio.run(main())
    assert result == "welcome 7"
    assert refused_status == 400
    assert db.execute("SELECT id FROM users").fetchall() == [(7,)]
    assert db.execute("SELECT id::text, status::text FROM pgqueue.tasks").fetchall() == [
        (task_id, "COMPLETED")
    ]


def test_a_lifespan_whose_worker_cannot_start_stops_the_app(settings: Settings) -> None:
    from pgqueue.tasks import registry

    app = FastAPI(lifespan=lifespan(queues=["web"], settings=settings))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            pass

    saved = dict(registry._tasks)
    registry._tasks.clear()
    try:
        with pytest.raises(ConfigurationError, match="no task is registered"):
            asyncio.run(main())
    finally:
        registry._tasks.update(saved)


def test_lifespan_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="list of queue names"):
        lifespan(queues="web")
    with pytest.raises(ValueError, match="concurrency"):
        lifespan(concurrency=0)
