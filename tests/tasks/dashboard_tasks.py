"""Tasks of the dashboard's tests (tests/web): one that fails its first two attempts."""

from __future__ import annotations

from pgqueue import AsyncTask
from pgqueue.tasks.context import current_task


@AsyncTask(queue="web", max_retries=1)
async def flaky(user_id: int) -> dict[str, int]:
    """Fails attempts 1 and 2 (its retries spent: FAILED); an operator's retry succeeds."""
    attempt = current_task().attempt
    if attempt <= 2:
        raise ValueError(f"user {user_id} unreachable on attempt {attempt}")
    return {"user_id": user_id, "attempt": attempt}


@AsyncTask(queue="web")
async def greet(name: str) -> str:
    return f"hello {name}"
