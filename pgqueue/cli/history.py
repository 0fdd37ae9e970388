"""`pgqueue history [on|off]`: whether the database keeps every task's history."""

from __future__ import annotations

import click

from pgqueue.cli.output import admin_session, json_option, print_json


@click.group(name="history", invoke_without_command=True)
@json_option
@click.pass_context
def history(ctx: click.Context, as_json: bool) -> None:
    """Say whether task history is kept; `on` / `off` switch it for every process."""
    if ctx.invoked_subcommand is not None:
        return
    with admin_session() as admin:
        enabled = admin.history_enabled()
    if as_json:
        print_json({"history": enabled})
    else:
        click.echo(f"history is {'on' if enabled else 'off'}")


@history.command()
def on() -> None:
    """Keep every task's history (the default)."""
    _switch(True)


@history.command()
def off() -> None:
    """Stop writing task events (the last few percent of throughput); kept events stay."""
    _switch(False)


def _switch(enabled: bool) -> None:
    with admin_session() as admin:
        previous = admin.set_history(enabled)
    state = "on" if enabled else "off"
    click.echo(f"history is {state}" + ("" if previous != enabled else " (it was already)"))
