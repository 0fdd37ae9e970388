"""The dashboard under test: an app on the test database served by uvicorn in a thread (the
browser tests), and Debian's Chromium for pytest-playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard needs pgqueue[web]")

from support.dashboard import CHROMIUM_ARGS, Served

from pgqueue.web import create_app


@pytest.fixture
def serve(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Served]]:
    """serve(read_only=False, env={...}) -> a running dashboard on the test database."""
    servers: list[Served] = []

    def start(read_only: bool = False, env: dict[str, str] | None = None) -> Served:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        served = Served(create_app(dsn, read_only=read_only)).start()
        servers.append(served)
        return served

    yield start
    for served in servers:
        served.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    """pytest-playwright launches Debian's Chromium (`playwright install` cannot download)."""
    executable = shutil.which("chromium")
    if executable is None:
        message = "no chromium: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {"executable_path": executable, "args": CHROMIUM_ARGS}
