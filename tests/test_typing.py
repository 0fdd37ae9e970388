"""A user's type checker holds `.delay()` / `.adelay()` to the task's own parameters: mypy,
run on a sample file as a user would run it on theirs, reports exactly the wrong calls, and
`reveal_type` shows the task id and the function's own return type.

The sample marks each line mypy must reject with `# E`; every other line must pass.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

SAMPLE = """\
import datetime
import uuid

from pgqueue import AsyncTask, TaskFunction


@AsyncTask(queue="emails")
def send(to: str, subject: str = "Hi") -> str:
    return to


@AsyncTask
async def fetch(url: str, retries: int = 3) -> bytes:
    return url.encode()


# Right: every call style of the documentation.
send.delay(to="a@x")
send.delay("a@x", subject="s")
send.delay(delay=3600, to="a@x")
send.delay(delay=datetime.timedelta(hours=1), to="a@x")
send.delay(schedule_at=datetime.datetime(2030, 1, 1), to="a@x")
send.delay(priority=5, queue="bulk", max_retries=2, unique_key="k", to="a@x")
send.delay(unique_key=lambda arguments: str(arguments["to"]), to="a@x")
send.delay(connection=object(), to="a@x")
send.options(delay=60, priority=1).delay(to="a@x")
send.options(queue="bulk").delay("a@x", "s")
kept: str = send("a@x")


async def in_async_code() -> None:
    await send.adelay(to="a@x")
    await send.adelay(delay=5, to="a@x")
    await send.options(queue="q").adelay(to="a@x")
    data: bytes = await fetch("u")
    await fetch.adelay(url="u", retries=1)
    reveal_type(await send.adelay(to="a@x"))
    reveal_type(await send.options(priority=1).adelay(to="a@x"))
    reveal_type(await fetch("u"))
    await fetch.adelay(url=1)  # E
    await fetch.options(priority=1).adelay(retries="3", url="u")  # E


def takes_any_task(task: TaskFunction[str]) -> uuid.UUID:  # the one-parameter spelling
    return task.delay(to="a@x")


takes_any_task(send)
reveal_type(send.delay(to="a@x"))
reveal_type(send.delay(delay=1, to="a@x"))
reveal_type(send.options(priority=1).delay(to="a@x"))
reveal_type(send("a@x"))

# Wrong: each line is one mistake mypy must name.
send.delay(to=1)  # E
send.delay(nn="typo")  # E
send.delay(to="a@x", nn="typo")  # E
send.delay()  # E
send.delay("a@x", "s", "extra")  # E
send.delay(delay="soon", to="a@x")  # E
send.delay(priority="high", to="a@x")  # E
send.options(delay=60).delay(to=1)  # E
send.options(priority="high")  # E
send.options(nn="typo")  # E
send.options(delay=60).delay(to="a@x", priority=1)  # E
send(to=1)  # E
"""

MYPY_CONFIG = """\
[mypy]
python_version = 3.11
strict = True
"""

REVEALED = {
    'await send.adelay(to="a@x")': "uuid.UUID",
    'await send.options(priority=1).adelay(to="a@x")': "uuid.UUID",
    'await fetch("u")': "bytes",
    'send.delay(to="a@x")': "uuid.UUID",
    'send.delay(delay=1, to="a@x")': "uuid.UUID",
    'send.options(priority=1).delay(to="a@x")': "uuid.UUID",
    'send("a@x")': "str",
}


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("typing")
    (folder / "sample.py").write_text(SAMPLE)
    (folder / "mypy.ini").write_text(MYPY_CONFIG)
    options = ["--config-file", "mypy.ini", "--no-error-summary", "--show-error-codes"]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *options, "--cache-dir", str(folder / "cache"), "sample.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert not result.stderr, result.stderr
    return result.stdout


def lines_of(output: str, kind: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for match in re.finditer(rf"^sample\.py:(\d+): {kind}: (.*)$", output, re.MULTILINE):
        found.setdefault(int(match.group(1)), match.group(2))
    return found


def test_mypy_rejects_exactly_the_wrong_calls(mypy_output: str) -> None:
    marked = {number for number, line in enumerate(SAMPLE.splitlines(), 1) if "# E" in line}
    assert set(lines_of(mypy_output, "error")) == marked, mypy_output


def test_reveal_type_shows_the_task_id_and_the_functions_own_result(mypy_output: str) -> None:
    notes = lines_of(mypy_output, "note")
    revealed = {}
    for number, line in enumerate(SAMPLE.splitlines(), 1):
        if line.strip().startswith("reveal_type("):
            call = line.strip().removeprefix("reveal_type(").removesuffix(")")
            revealed[call] = notes.get(number, "").replace("builtins.", "")
    assert revealed == {call: f'Revealed type is "{type_}"' for call, type_ in REVEALED.items()}
