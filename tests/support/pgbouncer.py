"""A real PgBouncer in transaction pooling mode (Debian's `pgbouncer`), in front of the test
server: started on a free port with a generated ini, stopped at the end of the test.

Its stock behaviour is what pgqueue must live with: startup `options` refused, each
transaction on whichever server connection is free, no prepared statements (1.18).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

INI = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/users.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
server_lifetime = 3600
log_connections = 0
log_disconnections = 0
"""


def pgbouncer_executable() -> str | None:
    """Debian installs it in /usr/sbin, often not on a user's PATH."""
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return found if os.access(found, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """`PgBouncer(server_dsn).start()`; `.dsn(database)` goes through it, `.admin()` is its
    console. Run as the `postgres` user when the tests run as root (it refuses root)."""

    def __init__(self, server_dsn: str, pool_size: int = 4) -> None:
        params = conninfo_to_dict(server_dsn)
        self.host = str(params.get("host") or "127.0.0.1")
        self.server_port = int(params.get("port") or 5432)
        self.user = str(params.get("user") or "postgres")
        self.pool_size = pool_size
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgqueue-pgbouncer-"))
        self.log_path = self.directory / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PgBouncer:
        executable = pgbouncer_executable()
        assert executable is not None, "pgbouncer is not installed"
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            INI.format(
                host=self.host,
                port=self.server_port,
                listen_port=self.port,
                directory=self.directory,
                user=self.user,
                pool_size=self.pool_size,
            )
        )
        (self.directory / "users.txt").write_text(f'"{self.user}" ""\n')
        command = [executable, str(ini)]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "postgres"]
            os.chmod(self.directory, 0o755)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                with self.admin():
                    return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start:\n{self.output}") from None
                time.sleep(0.05)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dsn(self, database_dsn: str) -> str:
        """`database_dsn`, through this PgBouncer."""
        return make_conninfo(database_dsn, host="127.0.0.1", port=self.port)

    def admin(self) -> psycopg.Connection[Any]:
        """Its admin console (SHOW POOLS, RECONNECT, ...): simple queries only."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            dbname="pgbouncer",
            autocommit=True,
            prepare_threshold=None,
        )

    def server_pids(self, database: str) -> list[int]:
        """The backend pids of its server connections to `database`."""
        with self.admin() as console:
            cursor = console.cursor()
            cursor.execute("SHOW SERVERS")
            columns = [c.name for c in cursor.description or []]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        return [int(row["remote_pid"]) for row in rows if row["database"] == database]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
