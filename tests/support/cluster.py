"""The local PostgreSQL cluster (127.0.0.1:5432), restarted by the fault tests."""

from __future__ import annotations

import os
import subprocess
import time


def _cluster_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    return versions[0] if versions else "15"


PG_CTL = ["pg_ctlcluster", "--skip-systemctl-redirect", _cluster_version(), "main"]


def server_ready() -> bool:
    """The server accepts connections (pg_isready)."""
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0


def restart_server(mode: str) -> None:
    """Restart PostgreSQL (-m fast or immediate) and wait until it accepts connections."""
    subprocess.run([*PG_CTL, "restart", "-m", mode], check=False, capture_output=True)
    ensure_server_running()


def ensure_server_running() -> None:
    """Start the cluster if it is down; wait (at most 60 s) until it accepts connections."""
    deadline = time.monotonic() + 60
    while not server_ready():
        status = subprocess.run([*PG_CTL, "status"], check=False, capture_output=True)
        if status.returncode != 0:
            subprocess.run([*PG_CTL, "start"], check=False, capture_output=True)
        if time.monotonic() > deadline:
            raise AssertionError("PostgreSQL did not come back within 60 s")
        time.sleep(0.2)
