"""Every code block of README.md and docs/*.md runs as written, against a fresh test database.

The conventions, for whoever writes the docs:

- Every fenced block names its language. `python`, `sh`, `sql` and `yaml` blocks run; `text`
  (output samples, diagrams, command synopses) and `promql` are only shown. A block of any
  other language, or of none, fails the test.
- A block that cannot run says why on the line right before its fence (blank lines
  allowed in between): `<!-- not run: needs a FastAPI server -->`. A python, sh, sql or
  yaml block without that marker runs; if it cannot, the test fails.
- Each document runs top to bottom in a temporary folder of its own (the user's project
  folder: the current directory of every command, and on `sys.path`), with `PGQUEUE_DSN`
  naming a fresh migrated test database and this venv's `pgqueue`, `python` and `pytest`
  first on PATH. Nothing else of the suite is on the path: what a block imports, the
  document defines.
- A python block whose first line is a comment naming a `.py` file (`# myapp/tasks.py`,
  `# shop.py`) is written to that file, not run; a later block imports it.
- The other python blocks of one document run in order in ONE namespace and one process
  (a story: a block may use what an earlier block of the same file defined), as lines
  typed into `python` in that folder. A block that raises fails the test, with the
  document's line in the traceback.
- `<!-- run in the background -->` before a python block runs it as a script of its own
  that keeps running (a worker started from Python).
- `sh` blocks run one command a line (`\\` continues a line; comments are left out) with
  bash; each must exit 0. A command starting with `pgqueue worker` starts a worker in the
  background instead.
- `sql` blocks run on an autocommit connection to the test database.
- `yaml` blocks are config files: `pgqueue config show` must accept each.
- At the end of a document, the background workers get until nothing due on their queues
  is left (nothing RUNNING either), then SIGTERM; each must exit 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.code_blocks import Block, DocumentError, DocumentSession, parse
from support.paths import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    return parse(path.read_text(), str(path.relative_to(ROOT)))


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_block_runs_as_written(document: Path, dsn: str, tmp_path: Path) -> None:
    with DocumentSession(tmp_path, dsn, document) as session:
        for block in blocks_of(document):
            session.run(block)
        session.finish()


def test_each_document_runs_some_code() -> None:
    """The convention did not silently turn a document's blocks into text."""
    runs = {
        path.name: sum(1 for block in blocks_of(path) if block.language != "text")
        for path in DOCUMENTS
    }
    for name in ("README.md", "features.md", "operations.md"):
        assert runs[name] >= 3, runs


# -- the machinery can fail -------------------------------------------------------------------


def run_text(markdown: str, dsn: str, folder: Path) -> None:
    with DocumentSession(folder, dsn) as session:
        for block in parse(markdown, "sample.md"):
            session.run(block)
        session.finish()


def test_a_block_that_raises_fails_with_its_line(dsn: str, tmp_path: Path) -> None:
    markdown = (
        "# Sample\n\n```python\nx = 1\n```\n\nThen:\n\n```python\nemail_service.send(x)\n```\n"
    )
    with pytest.raises(DocumentError, match=r"sample.md:10: the block raised[\s\S]*NameError"):
        run_text(markdown, dsn, tmp_path)


def test_blocks_share_a_namespace_and_files_are_written(dsn: str, tmp_path: Path) -> None:
    markdown = (
        "```python\n# app/tasks.py\nfrom pgqueue import AsyncTask\n\n"
        "@AsyncTask(queue='doc')\ndef add(x: int, y: int) -> int:\n    return x + y\n```\n\n"
        "```python\nfrom app.tasks import add\ntask_id = add.delay(x=1, y=2)\n```\n\n"
        "```sh\npgqueue worker --queues doc --import app.tasks\n```\n\n"
        "```python\nfrom pgqueue import TaskManager\n"
        "assert TaskManager().wait(task_id, timeout=30) == 3\n```\n"
    )
    run_text(markdown, dsn, tmp_path)
    assert (tmp_path / "app" / "tasks.py").exists()


def test_a_failing_command_fails(dsn: str, tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="`pgqueue tasks show 42` exited 2"):
        run_text("```sh\npgqueue status\npgqueue tasks show 42\n```\n", dsn, tmp_path)


def test_a_config_pgqueue_refuses_fails(dsn: str, tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="refuses this config"):
        run_text("```yaml\ntask:\n  dns: postgresql://x@y/z\n```\n", dsn, tmp_path)


@pytest.mark.parametrize(
    "markdown, message",
    [
        ("```\nls\n```\n", "language '(none)'"),
        ("```bash\nls\n```\n", "language 'bash'"),
        ("```python\nx = (\n", "never closes"),
        ("<!-- run in the background -->\n```sh\nls\n```\n", "only python blocks"),
        ("<!-- not run: output -->\n```text\n$ ls\n```\n", "never runs: drop the marker"),
    ],
)
def test_unlabelled_or_malformed_blocks_are_refused(markdown: str, message: str) -> None:
    with pytest.raises(DocumentError, match=re.escape(message)):
        parse(markdown, "sample.md")


def test_a_marker_without_a_reason_is_no_marker() -> None:
    [block] = parse("<!-- not run -->\n```python\nx\n```\n", "sample.md")
    assert block.not_run is None


def test_a_marker_skips_only_the_next_block() -> None:
    markdown = "<!-- not run: needs a server -->\n\n```sh\nuvicorn app:app\n```\n```sh\nls\n```\n"
    first, second = parse(markdown, "sample.md")
    assert first.not_run == "needs a server" and second.not_run is None
