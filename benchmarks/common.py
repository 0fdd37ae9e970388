"""Shared helpers for the benchmark harness: databases, processes, machine facts.

Nothing here imports a queue library; the system modules under ``systems/`` do.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- databases


def dsn_for(dbname: str) -> str:
    """The admin DSN with its database name replaced."""
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def url_for(dbname: str) -> str:
    """A postgresql:// URL for libraries that only take URLs (asyncpg, pgqueue)."""
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    user = info.get("user", "postgres")
    pw = info.get("password")
    auth = f"{user}:{pw}" if pw else user
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    return f"postgresql://{auth}@{host}:{port}/{dbname}"


def connect(dsn: str = ADMIN_DSN, wait: float = 30.0) -> psycopg.Connection:
    """An autocommit connection; waits while the server is full or restarting (shared box)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def admin_exec(*statements: str) -> None:
    with connect() as conn:
        for sql in statements:
            conn.execute(sql)


def drop_db(name: str) -> None:
    admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_db(name: str, template: str | None = None) -> None:
    drop_db(name)
    tpl = f' TEMPLATE "{template}"' if template else ""
    admin_exec(f'CREATE DATABASE "{name}"{tpl}')


def checkpoint() -> None:
    admin_exec("CHECKPOINT")


def pg_facts() -> dict:
    names = (
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "max_connections",
        "fsync",
        "wal_level",
        "work_mem",
        "max_wal_size",
        "checkpoint_timeout",
        "full_page_writes",
        "autovacuum",
        "commit_delay",
        "wal_buffers",
    )
    with connect() as conn:
        rows = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            [list(names)],
        ).fetchall()
        version = conn.execute("SELECT version()").fetchone()[0]
    settings = {n: (f"{s} {u}" if u else s) for n, s, u in rows}
    if "shared_buffers" in settings:  # 8kB pages -> MB, easier to read
        pages = int(settings["shared_buffers"].split()[0])
        settings["shared_buffers"] = f"{pages * 8 // 1024} MB"
    return {"version": version, "settings": settings}


# ------------------------------------------------------------------- machine


def machine_facts() -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    versions = {}
    for pkg in (
        "pgqueue-tasks",  # the distribution of pgqueue
        "procrastinate",
        "pgqueuer",
        "psycopg",
        "psycopg-pool",
        "asyncpg",
        "matplotlib",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    git_rev = None
    with contextlib.suppress(Exception):
        git_rev = (
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git_rev": git_rev,
    }


def loadavg() -> float:
    """1-minute load average: other jobs on this machine skew every figure."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# ----------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def proc_cpu_seconds(pid: int) -> float:
    """user+system CPU of a process and its live children, from /proc."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process plus its live children, in MB."""
    total_kb = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


class Worker:
    """A worker subprocess started through runner.py with a READY/GO handshake.

    The runner imports the system's code and connects nothing, prints READY, and waits
    for a line on stdin: timings start at GO, so interpreter start-up and imports are
    not counted as drain time (they are reported as worker start-up instead).
    """

    def __init__(self, system: str, dsn: str, concurrency: int, env: dict | None = None):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH_DIR), full_env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        full_env.update(env or {})
        self.started = time.perf_counter()
        # stderr goes to a file: a chatty worker must never block on a full pipe.
        self.errfile = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "runner.py"), system, dsn, str(concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errfile,
            text=True,
            cwd=str(BENCH_DIR),
            env=full_env,
        )
        self.cpu0 = 0.0

    def wait_ready(self, timeout: float = 60) -> float:
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            self.proc.wait(5)
            err = self.stderr_tail()
            raise RuntimeError(f"worker did not start: {line!r}\n{err[-3000:]}")
        self.cpu0 = proc_cpu_seconds(self.proc.pid)
        return time.perf_counter() - self.started

    def go(self) -> None:
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_used(self) -> float:
        return proc_cpu_seconds(self.proc.pid) - self.cpu0

    def peak_rss_mb(self) -> float:
        return proc_peak_rss_mb(self.proc.pid)

    def stderr_tail(self) -> str:
        with contextlib.suppress(Exception):
            self.errfile.seek(0)
            return self.errfile.read()[-3000:]
        return ""

    def stop(self, grace: float = 1.0) -> None:
        # Graceful shutdown is not measured: SIGTERM, then SIGKILL after ``grace``.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.errfile):
            with contextlib.suppress(Exception):
                stream.close()


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
