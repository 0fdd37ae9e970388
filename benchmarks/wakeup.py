"""Worker-side recorder for the wake-up workload.

A task called with ``i`` (the sample number) appends ``i time.time()`` to the file named
by BENCH_WAKEUP_FILE. The time is taken first thing in the task body, before the write.
"""

from __future__ import annotations

import os
import time

_FILE = None


def record(i: int | None) -> None:
    now = time.time()
    if i is None:
        return
    global _FILE
    if _FILE is None:
        path = os.environ.get("BENCH_WAKEUP_FILE")
        if not path:
            return
        _FILE = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the process
    _FILE.write(f"{i} {now!r}\n")


def read(path: str) -> dict[int, float]:
    out: dict[int, float] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    out[int(parts[0])] = float(parts[1])
    except FileNotFoundError:
        pass
    return out
