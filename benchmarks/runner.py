"""Worker subprocess: ``python runner.py SYSTEM DSN CONCURRENCY``.

Imports the system's worker code, prints READY, waits for a line on stdin (GO), then runs
the system's worker until SIGTERM. The harness times from GO and reads CPU and peak RSS
of this process from /proc.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from systems import get_system_class


def main() -> None:
    name, dsn, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cls = get_system_class(name)
    cls.prepare_worker()
    print("READY", flush=True)
    sys.stdin.readline()
    cls.run_worker(dsn, concurrency)


if __name__ == "__main__":
    main()
