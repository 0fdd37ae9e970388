"""Tasks of the beyond-the-seed features for subprocess workers (`--import feature_tasks`)."""

from __future__ import annotations

from pgqueue import AsyncTask, current_task


@AsyncTask(queue="cron-race", cron="* * * * *", cron_catchup=300)
def every_minute() -> str:
    return str(current_task().id)


@AsyncTask(queue="cron-hourly", cron="0 * * * *", cron_catchup=7200)
def hourly() -> str:
    return "hourly"
