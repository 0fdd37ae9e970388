"""Task history: pgqueue.task_events, written by the lifecycle functions in the statement
that changes a task's state; the switch that turns it off.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-10
"""

from pathlib import Path

from pgqueue.db.migrations import run_downgrade_sql, run_revision_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it (written for the schema "pgqueue",
    # like the live files); the same change is made in the live files of pgqueue/db/sql/.
    run_revision_sql(__file__)


def downgrade() -> None:
    """Put back the lifecycle functions of revision 0001 (frozen in 0001_initial.sql, the
    same text for these), then drop the history objects."""
    frozen = Path(__file__).with_name("0001_initial.sql").read_text(encoding="utf-8")
    blocks = [_function_block(frozen, name) for name in _CHANGED_FUNCTIONS]
    script = "\n".join(blocks) + (
        "DROP TRIGGER tasks_history_insert ON pgqueue.tasks;\n"
        "DROP FUNCTION pgqueue.record_enqueued();\n"
        "DROP FUNCTION pgqueue.set_history(boolean);\n"
        "DROP FUNCTION pgqueue.history_enabled();\n"
        "DROP TABLE pgqueue.history_settings;\n"
        "DROP TABLE pgqueue.task_events;\n"
    )
    run_downgrade_sql(script)


#: The functions this revision replaces (0002 changed none of them).
_CHANGED_FUNCTIONS = (
    "complete_tasks",
    "fail_task",
    "reschedule_task",
    "give_back_unknown_tasks",
    "extend_leases",
    "release_tasks",
    "rescue_expired_leases",
    "cancel_task",
    "retry_task",
    "cleanup_tasks",
    "retry_failed_tasks",
    "purge_tasks",
    "broker_start_tasks",
)


def _function_block(script: str, name: str) -> str:
    """The `-- name: <name>` block of a frozen script, through its closing `$$;`."""
    start = script.index(f"-- name: {name}\n")
    return script[start : script.index("$$;\n", script.index("AS $$", start)) + 4]
