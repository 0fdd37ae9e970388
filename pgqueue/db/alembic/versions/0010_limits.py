"""Limits and fair share: the keys a task holds (limit_keys, fair_key), the limits and their
usage, fair-share passes, the keyed claim, and the lifecycle functions giving back slots.

Revision ID: 0010
Revises: 0009
Create Date: 2027-03-01
"""

from pathlib import Path

from pgqueue.db.migrations import run_downgrade_sql, run_revision_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: The lifecycle functions this revision replaces (each gained a call of give_back_slots).
_CHANGED_FUNCTIONS = (
    "complete_tasks",
    "fail_task",
    "reschedule_task",
    "give_back_unknown_tasks",
    "release_tasks",
    "rescue_expired_leases",
    "cancel_task",
)

#: Earlier revision scripts, newest first: a function's text before this revision is its
#: latest definition among them.
_EARLIER = (
    "0008_workflows.sql",
    "0006_trace_context.sql",
    "0005_dashboard_indexes.sql",
    "0004_wake_sleeping_workers.sql",
    "0003_history.sql",
    "0002_one_claim.sql",
    "0001_initial.sql",
)


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same change is in the live
    # files of pgqueue/db/sql/ (limits.sql, functions.sql).
    run_revision_sql(__file__)


def downgrade() -> None:
    """Put back the lifecycle functions as revision 0008 left them, then drop the limit
    objects and restore the runnable index of every PENDING and RETRYING row."""
    here = Path(__file__).parent
    scripts = [(here / name).read_text(encoding="utf-8") for name in _EARLIER]
    blocks = [_latest_block(scripts, name) for name in _CHANGED_FUNCTIONS]
    run_downgrade_sql(
        "\n".join(blocks)
        + _due_tasks_view(scripts[-1])
        + "DROP FUNCTION pgqueue.give_back_slots(uuid[]);\n"
        "DROP FUNCTION pgqueue.claim_keyed_tasks(text[], integer, text, double precision,\n"
        "    integer, timestamptz);\n"
        "DROP FUNCTION pgqueue.recount_limit_usage();\n"
        "DROP FUNCTION pgqueue.set_limit(text, integer, double precision, double precision,\n"
        "    double precision);\n"
        "DROP FUNCTION pgqueue.set_fair_weight(text, text, double precision);\n"
        "DROP FUNCTION pgqueue.limit_for_key(text);\n"
        "DROP TYPE pgqueue.limit_candidate;\n"
        "DROP TABLE pgqueue.limits, pgqueue.limit_usage, pgqueue.fair_weights,\n"
        "    pgqueue.fair_passes, pgqueue.fair_clocks;\n"
        "DROP INDEX pgqueue.tasks_keyed_idx;\n"
        "DROP INDEX pgqueue.tasks_runnable_idx;\n"
        "ALTER TABLE pgqueue.tasks DROP COLUMN limit_keys, DROP COLUMN fair_key;\n"
        "CREATE INDEX tasks_runnable_idx ON pgqueue.tasks (queue, priority DESC, run_at, id)\n"
        "    WHERE status IN ('PENDING', 'RETRYING');\n"
    )


def _latest_block(scripts: list[str], name: str) -> str:
    """The `-- name: <name>` block of the newest script defining it, through its `$$;`,
    made a replacement."""
    for script in scripts:
        marker = f"-- name: {name}\n"
        if marker in script:
            start = script.index(marker)
            text = script[start : script.index("$$;\n", script.index("AS $$", start)) + 4]
            return text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") + "\n"
    raise LookupError(f"no earlier revision defines {name}")


def _due_tasks_view(script: str) -> str:
    """The view due_tasks as revision 0001 made it (over the whole runnable index)."""
    start = script.index("CREATE OR REPLACE VIEW pgqueue.due_tasks AS")
    return script[start : script.index(";\n", start) + 2]
