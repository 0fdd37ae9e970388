"""The only home of connections and SQL text: `database` (pools), `queries` (the named
blocks of `sql/`), `store` (task rows from the producer's side), `cron` (the cron_runs
side of schedules) and `migrations` (alembic, `alembic/`)."""
