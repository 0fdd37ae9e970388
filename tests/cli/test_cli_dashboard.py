"""`pgqueue dashboard`: its options, and one clear line when the extra is missing."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from pgqueue.cli import main


def test_help_names_the_safe_defaults() -> None:
    result = CliRunner().invoke(main, ["dashboard", "--help"])
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output and "--read-only" in result.output


def test_without_the_web_extra_one_line_says_what_to_install() -> None:
    # starlette made unimportable, as where pgqueue[web] is not installed
    script = (
        "import sys; sys.modules['starlette'] = None; "
        "from pgqueue.cli import main; main(['dashboard'])"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "Error: the dashboard needs the extra 'web' (starlette is not installed): "
        "pip install 'pgqueue-tasks[web]'"
    ]
