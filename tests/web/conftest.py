"""The dashboard under test: an app on the test database served by uvicorn in a thread (the
browser tests), and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("starlette", reason="the dashboard needs pgqueue[web]")

from playwright.sync_api import Browser, Page, sync_playwright
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (`playwright install` cannot download one), for one test module.

    Playwright's sync API runs an event loop in this thread while it is started: it is
    stopped when the module ends, so later tests can run their own (asyncio.run).
    """
    executable = shutil.which("chromium")
    if executable is None:
        message = "no chromium: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context and its page, closed after the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()
