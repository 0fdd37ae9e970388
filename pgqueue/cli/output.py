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
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pgqueue.db.database import resolve_dsn
from pgqueue.errors import PgQueueError
from pgqueue.ops.admin import Admin, parse_short_id, parse_status
from pgqueue.records import TaskStatus
from pgqueue.settings import Settings, get_settings
from pgqueue.tasks.options import duration_seconds

F = TypeVar("F", bound=Callable[..., Any])

#: Piped output is for grep and logs: wide enough that ids and names are never cut.
PIPED_WIDTH = 200
#: Tables show a task's id by its last hex digits (more when two listed ids share them);
#: every command that takes an id takes these back.
SHORT_ID_DIGITS = 8
#: Spaces between two columns of a table.
COLUMN_GAP = 2
#: A table's filling column (an error's text) is left out when it would be narrower.
FILL_MIN_WIDTH = 12

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
    """A task status in any case (`--status failed`); a wrong one is a usage error."""

    name = "status"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_status(value)
        except PgQueueError as error:
            self.fail(str(error), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "|".join(status.value.lower() for status in TaskStatus)


class Duration(float):
    """Seconds, with the text they were written as ('7d'), to say them back the same way."""

    text: str

    def __new__(cls, seconds: float, text: str) -> Duration:
        value = super().__new__(cls, seconds)
        value.text = text
        return value


class DurationType(click.ParamType):
    """Seconds, or a number with a unit: 30, 90s, 5m, 2h, 7d, 2w."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Duration):
            return value
        try:
            what = param.opts[0] if param is not None else "duration"
            return Duration(duration_seconds(value, what, text=True), str(value))
        except PgQueueError as error:
            self.fail(str(error), param, ctx)


class TaskIdType(click.ParamType):
    """A task id, whole or short (its last hex digits, as tables show it): the text is
    checked here, the task looked up by the command (`Admin.find_task_id`)."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            parse_short_id(value)
        except PgQueueError as error:  # the message names the text: no "Invalid value for"
            raise click.UsageError(str(error), ctx) from None
        return value


STATUS = StatusType()
DURATION = DurationType()
TASK_ID = TaskIdType()


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


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    right: Sequence[str] = (),
    folding: Sequence[str] = (),
    filling: str | None = None,
) -> Table:
    """A compact table of rows of rich markup, at most `width` wide: a rule under the
    header, two spaces between columns, the `right` columns (numbers) right-aligned.

    Cells never wrap nor lose characters (ids, names, statuses are shown whole), except in
    the `folding` columns (names that may be very long: wrapped only when the table cannot
    fit otherwise) and the `filling` column (free text such as an error: it takes the
    width left, cut with "…", and is left out when less than FILL_MIN_WIDTH is left).
    """
    left = width
    if filling is not None:
        taken = sum(
            max(len(column), *(_cell_width(row[index]) for row in rows))
            for index, column in enumerate(columns)
            if column != filling
        )
        left = width - taken - COLUMN_GAP * (len(columns) - 1)
        if left < FILL_MIN_WIDTH:
            keep = [index for index, column in enumerate(columns) if column != filling]
            columns = [columns[index] for index in keep]
            rows = [[row[index] for index in keep] for row in rows]
    result = Table(
        box=box.SIMPLE_HEAD,
        header_style="bold",
        show_edge=False,
        pad_edge=False,
        padding=(0, COLUMN_GAP - 1, 0, 0),
    )
    for column in columns:
        folds = column in folding
        result.add_column(
            column,
            justify="right" if column in right else "left",
            no_wrap=not folds,
            overflow="fold" if folds else "ellipsis",
            max_width=max(left, 0) if column == filling else None,
        )
    for row in rows:
        result.add_row(*row)
    return result


def _cell_width(markup: str) -> int:
    return Text.from_markup(markup).cell_len


def count(number: int) -> str:
    """10001 -> '10,001'."""
    return f"{number:,}"


def short_ids(ids: Sequence[uuid.UUID]) -> list[str]:
    """The ids as tables show them: their last SHORT_ID_DIGITS hex digits, more when two of
    them share those (every command that takes an id takes these back)."""
    digits = [task_id.hex for task_id in ids]
    length = SHORT_ID_DIGITS
    while length < 32 and len({text[-length:] for text in digits}) < len(digits):
        length += 2
    return [text[-length:] for text in digits]


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
    """A timestamp in UTC to the second, 'Z' for the zone: '2026-03-01 12:03:04Z'."""
    if value is None:
        return "-"
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def short_moment(value: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """A timestamp in UTC as short as the day allows: '12:03:04Z' today, '03-01 12:03Z'
    this year, '2025-12-31' before; '-' when there is none."""
    if value is None:
        return "-"
    value = value.astimezone(datetime.UTC)
    now = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    if value.date() == now.date():
        return value.strftime("%H:%M:%SZ")
    if value.year == now.year:
        return value.strftime("%m-%d %H:%MZ")
    return value.strftime("%Y-%m-%d")


def cell(value: Any) -> str:
    """Data in a table cell: brackets in names and errors are text, not rich markup."""
    return escape("" if value is None else str(value))
