"""The dashboard under test: an app on the test database, served by uvicorn in a thread for
the browser tests, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.paths import ROOT
from support.waiting import wait_until

uvicorn = pytest.importorskip("uvicorn", reason="the dashboard needs pgqueue[web]")

from pgqueue.web import create_app  # noqa: E402

#: Where the browser tests save the screenshots the docs show (docs/dashboard.md).
SCREENSHOTS = ROOT / "docs" / "img"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Served:
    """One dashboard served by uvicorn on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


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
