"""The daemon thread pool of sync tasks: grows when busy, reuses idle threads, never blocks exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from pgqueue.worker.threads import DaemonThreadPool


def test_runs_in_parallel_in_daemon_threads() -> None:
    pool = DaemonThreadPool(name="t")
    barrier = threading.Barrier(5, timeout=5)

    def meet() -> tuple[str, bool]:
        barrier.wait()  # only returns if all five run at once
        return threading.current_thread().name, threading.current_thread().daemon

    results = [future.result(10) for future in [pool.submit(meet) for _ in range(5)]]
    assert len({name for name, _ in results}) == 5
    assert all(daemon for _, daemon in results)
    assert all(name.startswith("t-") for name, _ in results)
    pool.shutdown(wait=True)


def test_idle_threads_are_reused() -> None:
    pool = DaemonThreadPool()
    names = set()
    for n in range(20):
        names.add(pool.submit(lambda n=n: (n, threading.current_thread().name)).result(5)[1])
        # Wait for the thread to mark itself idle before the next submit.
        deadline = time.monotonic() + 5
        while pool._idle == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
    assert len(names) == 1
    pool.shutdown(wait=True)


def test_exceptions_and_arguments_travel_through_futures() -> None:
    pool = DaemonThreadPool()

    def divide(a: int, b: int = 1) -> float:
        return a / b

    assert pool.submit(divide, 6, b=3).result(5) == 2
    with pytest.raises(ZeroDivisionError):
        pool.submit(divide, 1, b=0).result(5)
    pool.shutdown(wait=True)


def test_a_stuck_thread_never_holds_up_process_exit() -> None:
    script = (
        "import threading, time\n"
        "from pgqueue.worker.threads import DaemonThreadPool\n"
        "pool = DaemonThreadPool()\n"
        "started = threading.Event()\n"
        "pool.submit(lambda: (started.set(), time.sleep(600)))\n"
        "started.wait(5)\n"
        "print('leaving')\n"
    )
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaving"
    assert time.monotonic() - began < 10
