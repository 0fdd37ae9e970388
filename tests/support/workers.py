"""Workers the tests run: a WorkerManager in a thread, or `pgqueue worker` as a subprocess."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pgqueue.worker import WorkerManager

from .waiting import wait_until


class InProcessWorker:
    """A WorkerManager running on its own event loop in a thread of the test process."""

    def __init__(self, manager: WorkerManager) -> None:
        self.manager = manager
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.manager.start())
        except BaseException as error:  # surfaced by stop()
            self.error = error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> InProcessWorker:
        self._thread.start()
        wait_until(lambda: self.manager._loop is not None or self.error is not None)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.manager.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


class WorkerProcess:
    """`pgqueue worker` as a subprocess, its output in a file for assertions."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pgqueue.cli", "worker", "start", *args],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.wait()
