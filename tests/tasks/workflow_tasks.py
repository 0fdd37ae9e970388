"""Tasks of the workflow tests (tests/test_workflows.py, tests/faults/test_workflows.py)."""

from __future__ import annotations

from typing import Any

from pgqueue import AsyncTask, current_task

QUEUE = "workflows"


@AsyncTask(queue=QUEUE)
def step(n: int = 0) -> int:
    return n


@AsyncTask(queue=QUEUE)
def collect() -> dict[str, Any]:
    """Its parents' results, by parent id."""
    return {str(parent): result for parent, result in current_task().parent_results().items()}


@AsyncTask(queue=QUEUE)
async def acollect() -> int:
    return len(await current_task().aparent_results())


@AsyncTask(queue=QUEUE, max_retries=0)
def boom() -> None:
    raise RuntimeError("boom")


@AsyncTask(queue=QUEUE, max_retries=2)
def fails_three_times() -> str:
    """FAILED after its retries (attempts 1 to 3); a retry's attempt 4 completes."""
    if current_task().attempt <= 3:
        raise RuntimeError(f"attempt {current_task().attempt} fails")
    return "done"
