"""The code blocks of a Markdown document, and a session that runs them in order.

The conventions (what runs, what is a file, what may be skipped and how) are written at the
top of tests/docs/test_code_blocks.py, which is what a docs writer reads.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg

from .waiting import wait_until

#: Languages whose blocks run; the others are shown only (output, diagrams, synopses).
RUN = {"python", "sh", "sql", "yaml"}
SHOWN = {"text", "promql"}

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>\S*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
_BACKGROUND = "<!-- run in the background -->"
_FILE = re.compile(r"^#\s*(?P<path>[\w./-]+\.py)\b")
_PYTHON_RUNNER = Path(__file__).with_name("run_python_blocks.py")


class DocumentError(AssertionError):
    """A block breaks the conventions, or ran and failed."""


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (the line of its first code line), its language,
    its text, and what the line before its fence says about it."""

    document: str
    line: int
    language: str
    text: str
    not_run: str | None = None  # the reason given by <!-- not run: ... -->
    background: bool = False  # <!-- run in the background -->

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def file(self) -> str | None:
        """The path a python block is written to, named by its first line (`# myapp/tasks.py`)."""
        first = self.text.splitlines()[0] if self.text else ""
        found = _FILE.match(first) if self.language == "python" else None
        return found["path"] if found else None


def parse(text: str, document: str) -> list[Block]:
    """Every fenced block of a Markdown text, checked against the conventions."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, language = opening["indent"], opening["language"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise DocumentError(f"{document}:{index + 1}: the block never closes")
        body = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end]) + "\n"
        before = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        not_run = _NOT_RUN.match(before)
        block = Block(
            document=document,
            line=index + 2,
            language=language,
            text=body,
            not_run=not_run["reason"] if not_run else None,
            background=before == _BACKGROUND,
        )
        _check(block)
        blocks.append(block)
        index = end + 1
    return blocks


def _check(block: Block) -> None:
    if block.language not in RUN | SHOWN:
        raise DocumentError(
            f"{block.where}: a block of language {block.language or '(none)'!r}: name one of "
            f"{sorted(RUN)} (run by the test) or {sorted(SHOWN)} (shown only)"
        )
    if block.background and block.language != "python":
        raise DocumentError(f"{block.where}: only python blocks run in the background")
    if block.not_run and block.language in SHOWN:
        raise DocumentError(f"{block.where}: a {block.language} block never runs: drop the marker")


class DocumentSession:
    """Runs the blocks of one document in order, in `folder`, against the database `dsn`.

    Python blocks share one namespace in one process; background blocks and `pgqueue worker`
    commands keep running until `finish`, which waits until their due tasks are done and then
    stops them, expecting exit code 0.
    """

    def __init__(self, folder: Path, dsn: str, document: Path | None = None) -> None:
        self.folder = folder
        self.document = document  # named in tracebacks, which then quote its lines
        self.dsn = dsn
        self.environment = _environment(dsn)
        self.log = folder / "blocks.log"
        self._log = self.log.open("ab")
        self._python: subprocess.Popen[bytes] | None = None
        self._replies: Any = None  # the pipe the runner answers on, one JSON line a block
        self.background: list[tuple[Block, subprocess.Popen[bytes]]] = []

    # -- one block ---------------------------------------------------------------------------

    def run(self, block: Block) -> None:
        if block.not_run or block.language in SHOWN:
            return
        if block.file:
            path = self.folder / block.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
        elif block.background:
            script = self.folder / f"background_{len(self.background)}.py"
            script.write_text("\n" * (block.line - 1) + block.text)
            self._start_background(block, [sys.executable, str(script)])
        elif block.language == "python":
            self._run_python(block)
        elif block.language == "sh":
            for command in _commands(block.text):
                self._run_shell(block, command)
        elif block.language == "sql":
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                try:
                    conn.execute(block.text.encode())
                except psycopg.Error as error:
                    raise DocumentError(f"{block.where}: the SQL failed: {error}") from error
        elif block.language == "yaml":
            self._check_config(block)

    def _run_python(self, block: Block) -> None:
        if self._python is None:
            read, write = os.pipe()
            self._python = subprocess.Popen(
                [sys.executable, str(_PYTHON_RUNNER), str(write)],
                cwd=self.folder,
                env=self.environment,
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(write,),
            )
            os.close(write)
            self._replies = os.fdopen(read, "rb")
        assert self._python.stdin is not None and self._replies is not None
        filename = str(self.document or block.document)
        request = {"filename": filename, "line": block.line, "source": block.text}
        self._python.stdin.write(json.dumps(request).encode() + b"\n")
        self._python.stdin.flush()
        ready, _, _ = select.select([self._replies], [], [], 120)
        reply = self._replies.readline().decode() if ready else ""
        if not reply:
            raise DocumentError(f"{block.where}: no answer within 120 s\n{self.output()}")
        answer = json.loads(reply)
        if not answer["ok"]:
            raise DocumentError(f"{block.where}: the block raised\n{answer['error']}")

    def _run_shell(self, block: Block, command: str) -> None:
        words = shlex.split(command, comments=True)
        if words[:2] == ["pgqueue", "worker"]:
            self._start_background(block, ["bash", "-c", f"exec {command}"])
            return
        self._log.write(f"$ {command}\n".encode())
        self._log.flush()
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=self.folder,
            env=self.environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
        if done.returncode != 0:
            raise DocumentError(
                f"{block.where}: `{command}` exited {done.returncode}\n{self.output()}"
            )

    def _check_config(self, block: Block) -> None:
        """A config file shown in the docs is one pgqueue accepts (`pgqueue config show`)."""
        config = self.folder / f"config_{block.line}.yaml"
        config.write_text(block.text)
        environment = {k: v for k, v in self.environment.items() if not k.startswith("PGQUEUE_")}
        done = subprocess.run(
            ["pgqueue", "config", "show"],
            cwd=self.folder,
            env={**environment, "PGQUEUE_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise DocumentError(f"{block.where}: pgqueue refuses this config: {done.stderr}")

    def _start_background(self, block: Block, args: list[str]) -> None:
        self._log.write(f"$ {shlex.join(args)} &\n".encode())
        self._log.flush()
        process = subprocess.Popen(
            args, cwd=self.folder, env=self.environment, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.background.append((block, process))

    # -- the end of the document -------------------------------------------------------------

    def finish(self, timeout: float = 60) -> None:
        """Wait until the workers have run what is due on their queues, then stop them
        (SIGTERM, as a deploy would) and expect each to exit 0."""
        if self.background:
            wait_until(self._settled, timeout=timeout, interval=0.2)
        for block, process in self.background:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                raise DocumentError(f"{block.where}: did not stop on SIGTERM") from None
            if code != 0:
                raise DocumentError(f"{block.where}: exited {code} on SIGTERM\n{self.output()}")

    def _settled(self) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgqueue.tasks WHERE status = 'RUNNING'"
                " OR (status IN ('PENDING', 'RETRYING') AND run_at <= now()"
                "     AND queue IN (SELECT unnest(queues) FROM pgqueue.live_workers))"
            ).fetchone()
        return row is not None and row[0] == 0

    def close(self) -> None:
        for _, process in self.background:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self._python is not None:
            self._python.kill()
            self._python.wait()
            self._replies.close()
        self._log.close()

    def output(self) -> str:
        """The last lines the blocks printed (for a failure's message)."""
        self._log.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def __enter__(self) -> DocumentSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _commands(text: str) -> list[str]:
    """The commands of a shell block: one a line (a trailing `\\` joins the next), comments
    and blank lines left out."""
    commands: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def _environment(dsn: str) -> dict[str, str]:
    """A user's shell: this venv's commands first on PATH, PGQUEUE_DSN set to the test
    database, no other PGQUEUE_* setting and nothing of the suite's on PYTHONPATH."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PGQUEUE_", "PYTHONPATH", "PYTEST_"))
    }
    bin_dir = str(Path(sys.executable).parent)
    environment["PATH"] = os.pathsep.join([bin_dir, environment.get("PATH", "")])
    environment["PGQUEUE_DSN"] = as_url(dsn)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def as_url(dsn: str) -> str:
    """`dsn` as a URL (`postgresql://user@host:port/db?...`), the form the docs show and an
    application's SQLAlchemy engine takes; a socket folder as host goes into the query."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    user = quote(str(params.pop("user", "")), safe="")
    password = params.pop("password", None)
    credentials = user + (":" + quote(str(password), safe="") if password else "")
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    netloc = "" if host.startswith("/") else host + (f":{port}" if port else "")
    if host.startswith("/"):
        params.update(host=host, **({"port": port} if port else {}))
    database = quote(str(params.pop("dbname", "")), safe="")
    query = urlencode({key: str(value) for key, value in params.items()})
    return f"postgresql://{credentials}@{netloc}/{database}" + (f"?{query}" if query else "")
