"""Workflows: the status WAITING, task dependencies, and the lifecycle functions that advance
a dependent in the transaction that settles its last parent.

Revision ID: 0008
Revises: 0006
Create Date: 2027-02-01
"""

from pathlib import Path

from alembic import context, op

from pgqueue.db.migrations import run_revision_sql
from pgqueue.db.queries import DEFAULT_SCHEMA, for_schema

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it (written for the schema "pgqueue",
    # like the live files); the same change is made in the live files of pgqueue/db/sql/.
    run_revision_sql(__file__)


def downgrade() -> None:
    """Put back the functions of revision 0003, then drop the workflow objects. The enum
    value WAITING stays (PostgreSQL cannot drop one); no task has it once the columns are
    gone, since the tasks still WAITING are deleted first."""
    schema = context.config.attributes.get("schema", DEFAULT_SCHEMA)
    frozen = Path(__file__).with_name("0003_history.sql").read_text(encoding="utf-8")
    blocks = [_function_block(frozen, name) for name in _CHANGED_FUNCTIONS]
    script = (
        "DELETE FROM pgqueue.tasks WHERE status = 'WAITING';\n"
        "DROP FUNCTION pgqueue.complete_tasks(uuid[], integer[], jsonb[], timestamptz[]);\n"
        "DROP FUNCTION pgqueue.fail_task(uuid, integer, text, boolean);\n"
        + "\n".join(blocks)
        + _enqueued_block(frozen)
        + "DROP FUNCTION pgqueue.release_children(uuid[]);\n"
        "DROP FUNCTION pgqueue.cancel_children(uuid[]);\n"
        "DROP FUNCTION pgqueue.revive_children(uuid[]);\n"
        "ALTER TABLE pgqueue.tasks DROP COLUMN parents_left, DROP COLUMN on_parent_failure,\n"
        "    DROP COLUMN cancelled_by;\n"
        "DROP TABLE pgqueue.task_dependencies;\n"
    )
    driver_connection = op.get_bind().connection.driver_connection
    assert driver_connection is not None
    driver_connection.execute(for_schema(script, schema).encode())


#: The functions this revision replaces, as revision 0003 left them.
_CHANGED_FUNCTIONS = (
    "complete_tasks",
    "fail_task",
    "give_back_unknown_tasks",
    "rescue_expired_leases",
    "cancel_task",
    "retry_task",
    "cleanup_tasks",
    "retry_failed_tasks",
    "purge_tasks",
)


def _function_block(script: str, name: str) -> str:
    """The `-- name: <name>` block of a frozen script, through its closing `$$;`."""
    start = script.index(f"-- name: {name}\n")
    return script[start : script.index("$$;\n", script.index("AS $$", start)) + 4]


def _enqueued_block(script: str) -> str:
    """The trigger function record_enqueued of a frozen script, made a replacement."""
    start = script.index("CREATE FUNCTION pgqueue.record_enqueued()")
    body = script[start : script.index("$$;\n", start) + 4]
    return body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") + "\n"
