"""Where the project and the task modules of the tests are, for subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

#: The project folder (pyproject.toml, pgqueue/, tests/).
ROOT = Path(__file__).resolve().parents[2]

#: The task modules `pgqueue worker --import ...` subprocesses load (tests/tasks).
TASK_MODULES = ROOT / "tests" / "tasks"


def worker_pythonpath() -> str:
    """PYTHONPATH of a worker subprocess: the test task modules, then the project."""
    return os.pathsep.join([str(TASK_MODULES), str(ROOT)])
