"""How the operations commands talk: rich tables for people, `--json` for scripts, one
database session per command."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pgqueue.db.database import resolve_dsn
from pgqueue.ops.admin import Admin, parse_status
from pgqueue.records import TaskStatus
from pgqueue.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])

#: Piped output is for grep and logs: wide enough that ids and names are never cut.
PIPED_WIDTH = 200

STATUS_STYLES = {
    TaskStatus.PENDING: "cyan",
    TaskStatus.RUNNING: "blue",
    TaskStatus.COMPLETED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.RETRYING: "yellow",
    TaskStatus.CANCELLED: "dim",
    TaskStatus.WAITING: "magenta",
}


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
    )(func)


class StatusType(click.ParamType):
    """A task status in any case (`--status failed`); a wrong one is a one-line error."""

    name = "status"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        # PgQueueError, not BadParameter: the main group prints it as one line, no usage.
        return parse_status(value)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "|".join(status.value.lower() for status in TaskStatus)


STATUS = StatusType()


@contextlib.contextmanager
def admin_session(settings: Settings | None = None) -> Iterator[Admin]:
    """An Admin on the configured database (one connection, closed at the end)."""
    settings = settings or get_settings()
    with Admin.connect(resolve_dsn(settings), settings.schema_name) as admin:
        yield admin


def console() -> Console:
    """A console on the current stdout (so click's test runner captures it)."""
    if os.environ.get("COLUMNS"):
        return Console(highlight=False)
    plain = Console(highlight=False)
    return plain if plain.is_terminal else Console(highlight=False, width=PIPED_WIDTH)


def jsonable(value: Any) -> Any:
    """Rows and records as JSON values: ISO 8601 times, ids and statuses as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), ensure_ascii=False))


def table(title: str | None, columns: Sequence[str], *, right: Sequence[str] = ()) -> Table:
    """A table whose `right` columns (numbers) are right-aligned; ids are never wrapped."""
    result = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        result.add_column(
            column,
            justify="right" if column in right else "left",
            no_wrap=column in ("ID", "Queue", "Status"),
        )
    return result


def status_text(status: TaskStatus | str) -> str:
    chosen = TaskStatus(status)
    return f"[{STATUS_STYLES[chosen]}]{chosen.value}[/]"


def duration(seconds: float | None) -> str:
    """90 -> '1m 30s', 7300 -> '2h 1m'; '-' when there is none."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def moment(value: datetime.datetime | None) -> str:
    """A timestamp in local time to the second; '-' when there is none."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cell(value: Any) -> str:
    """Data in a table cell: brackets in names and errors are text, not rich markup."""
    return escape("" if value is None else str(value))
