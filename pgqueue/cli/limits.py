"""`pgqueue limits list|set|remove`: limits on keys, and each key's use now (sql/limits.sql)."""

from __future__ import annotations

from typing import Any

import click

from pgqueue.cli.output import admin_session, console, json_option, print_json, table


@click.group(name="limits")
def limits() -> None:
    """Limits on task keys: concurrency and rate, across every worker."""


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}"


def _rate(row: dict[str, Any]) -> str:
    if row["rate"] is None:
        return "-"
    return f"{row['rate']:g} per {row['per']:g} s, burst {row['burst']:g}"


@limits.command(name="list")
@json_option
def list_limits(as_json: bool) -> None:
    """Every limit, then each key that has one: running now, tokens now."""
    with admin_session() as admin:
        defined = admin.limits()
        usage = admin.limit_usage()
    if as_json:
        print_json({"limits": defined, "keys": usage})
        return
    out = console()
    if not defined:
        click.echo("no limits (`pgqueue limits set NAME --concurrency N`)")
        return
    out.print(
        table(
            ["Limit", "Concurrency", "Rate"],
            [[row["name"], _number(row["concurrency"]), _rate(row)] for row in defined],
            width=out.width,
            right=("Concurrency",),
            folding=("Limit",),
        )
    )
    if usage:
        click.echo()
        out.print(
            table(
                ["Key", "Limit", "Running", "Tokens"],
                [
                    [
                        row["key"],
                        row["limit_name"],
                        f"{row['running']} of {_number(row['concurrency'])}"
                        if row["concurrency"] is not None
                        else str(row["running"]),
                        "-" if row["tokens"] is None else f"{row['tokens']:.1f}",
                    ]
                    for row in usage
                ],
                width=out.width,
                right=("Running", "Tokens"),
                folding=("Key", "Limit"),
            )
        )


@limits.command(name="set")
@click.argument("name")
@click.option("--concurrency", type=click.IntRange(min=0), help="At most N running at once.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Starts per --per.")
@click.option("--per", type=click.FloatRange(min=0, min_open=True), help="Seconds of --rate.")
@click.option("--burst", type=click.FloatRange(min=1), help="Starts at once (default: rate).")
@json_option
def set_limit(
    name: str,
    concurrency: int | None,
    rate: float | None,
    per: float | None,
    burst: float | None,
    as_json: bool,
) -> None:
    """Define or replace the limit NAME (a key, or a pattern ending in *)."""
    if concurrency is None and rate is None:
        raise click.UsageError("give --concurrency N, or --rate R --per SECONDS, or both")
    if (rate is None) != (per is None) or (burst is not None and rate is None):
        raise click.UsageError("--rate and --per go together (--burst needs them)")
    with admin_session() as admin:
        row = admin.set_limit(name, concurrency, rate, per, burst)
    if as_json:
        print_json(row)
        return
    parts = []
    if row["concurrency"] is not None:
        parts.append(f"at most {row['concurrency']} running")
    if row["rate"] is not None:
        parts.append(_rate(row))
    click.echo(f"limit {name!r}: {'; '.join(parts)}")


@limits.command(name="remove")
@click.argument("name")
@json_option
def remove_limit(name: str, as_json: bool) -> None:
    """Drop the limit NAME: its keys restrict nothing from the next claim on."""
    with admin_session() as admin:
        removed = admin.remove_limit(name)
    if as_json:
        print_json({"name": name, "removed": removed})
    elif removed:
        click.echo(f"removed limit {name!r}")
    else:
        raise click.ClickException(f"no limit named {name!r} (`pgqueue limits list`)")
