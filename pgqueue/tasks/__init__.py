"""Declaring tasks, no I/O: `definition` (@AsyncTask), `options` (and their checks),
`typed_arguments`, `registry` (the tasks this process knows), `schedule` (cron) and
`context` (what a running task sees: current_task, Retry, Snooze)."""
