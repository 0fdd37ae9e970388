"""`pgqueue dashboard`: serve the web dashboard (needs the extra pgqueue-tasks[web])."""

from __future__ import annotations

import importlib

import click

from pgqueue.db.database import resolve_dsn
from pgqueue.settings import get_settings
from pgqueue.version import install_hint


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind: this machine only by default; 0.0.0.0 exposes it to the network.",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--read-only", is_flag=True, help="Offer no action; every action answers 403.")
def dashboard(host: str, port: int, read_only: bool) -> None:
    """Serve the web dashboard: queues, tasks, failures, workers, cron, live.

    Set PGQUEUE_DASHBOARD_USER and PGQUEUE_DASHBOARD_PASSWORD to ask for a password.
    """
    try:
        uvicorn = importlib.import_module("uvicorn")
        web = importlib.import_module("pgqueue.web")
    except ImportError as error:
        missing = getattr(error, "name", None) or "a module"
        raise click.ClickException(
            f"the dashboard needs the extra 'web' ({missing} is not installed): "
            + install_hint("web")
        ) from None
    app = web.create_app(resolve_dsn(get_settings()), read_only=read_only)
    click.echo(
        f"pgqueue dashboard on http://{host}:{port}/" + (" (read-only)" if read_only else "")
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
