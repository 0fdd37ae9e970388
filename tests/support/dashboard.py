"""The dashboard served for the browser tests: uvicorn in a thread on a free port."""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

from .paths import ROOT
from .waiting import wait_until

#: Where the browser tests save the screenshots the docs show (docs/dashboard.md).
SCREENSHOTS = ROOT / "docs" / "img"

#: Debian's Chromium, as a container runs it.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Served:
    """One ASGI app served by uvicorn on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            # Open event streams end within this when the test is over.
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
