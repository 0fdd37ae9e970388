"""A task's cron schedule: a five-field expression in a time zone, its occurrences, and
its catch-up window. Declared with `@AsyncTask(cron="0 9 * * *", timezone=...)`; the
scheduler that queues the occurrences is `pgqueue.db.cron`."""

from __future__ import annotations

import dataclasses
import datetime
import inspect
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pgqueue.errors import InvalidTaskArguments, InvalidTaskOption, TaskDefinitionError
from pgqueue.tasks.options import duration_seconds

DEFAULT_CATCHUP_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True, slots=True)
class CronSchedule:
    """A five-field cron expression in a time zone, with its catch-up window."""

    expression: str
    timezone: str = "UTC"
    catchup_seconds: float = DEFAULT_CATCHUP_SECONDS

    @classmethod
    def checked(
        cls,
        task_name: str,
        signature: inspect.Signature,
        cron: Any,
        timezone: Any,
        catchup: Any,
    ) -> CronSchedule | None:
        """The schedule of a task's decorator options; a clear error at definition time."""
        if cron is None:
            if timezone is not None or catchup is not None:
                raise TaskDefinitionError(
                    f"task {task_name}: timezone and cron_catchup go with cron=..."
                )
            return None
        from croniter import croniter  # imported by cron tasks only: workers stay small

        if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise TaskDefinitionError(
                f"task {task_name}: cron {cron!r} is not a five-field cron expression "
                "(minute hour day-of-month month day-of-week), such as '0 9 * * *'"
            )
        zone = "UTC" if timezone is None else timezone
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise TaskDefinitionError(
                f"task {task_name}: timezone {timezone!r} is not an IANA time zone name, "
                "such as 'Europe/Paris' or 'UTC'"
            ) from None
        required = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.default is inspect.Parameter.empty
            and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
        ]
        if required:
            raise TaskDefinitionError(
                f"task {task_name}: a cron task is queued without arguments, but it requires "
                f"{', '.join(required)}; give them defaults"
            )
        return cls(" ".join(cron.split()), zone, _catchup_seconds(task_name, catchup))

    def occurrences(
        self, after: datetime.datetime, until: datetime.datetime
    ) -> list[datetime.datetime]:
        """The occurrences in (after, until], oldest first."""
        found = []
        moment = self.next_after(after)
        while moment <= until:
            found.append(moment)
            moment = self.next_after(moment)
        return found

    def next_after(self, moment: datetime.datetime) -> datetime.datetime:
        """The first occurrence strictly after `moment` (aware, in the schedule's zone)."""
        from croniter import croniter

        start = moment.astimezone(ZoneInfo(self.timezone))
        following: datetime.datetime = croniter(self.expression, start).get_next(datetime.datetime)
        return following


def _catchup_seconds(task_name: str, catchup: Any) -> float:
    if catchup is None:
        return DEFAULT_CATCHUP_SECONDS
    try:
        return duration_seconds(catchup, "cron_catchup")
    except (InvalidTaskArguments, InvalidTaskOption) as error:
        raise TaskDefinitionError(f"task {task_name}: {error}") from None
