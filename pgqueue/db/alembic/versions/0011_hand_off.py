"""Workflows, faster: a completion hands the children it makes ready to the worker that
completed their parents, in its own transaction (complete_and_hand_off).

Revision ID: 0011
Revises: 0010
Create Date: 2027-02-12
"""

from pathlib import Path

from pgqueue.db.migrations import frozen_function, run_downgrade_sql, run_revision_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same functions are in
    # sql/functions.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    """Drop what this revision added; put back the functions of revision 0008 and the view
    of revision 0001 that it changed (a view loses a column only by being made again)."""
    versions = Path(__file__).parent
    functions = (versions / "0008_workflows.sql").read_text(encoding="utf-8")
    initial = (versions / "0001_initial.sql").read_text(encoding="utf-8")
    run_downgrade_sql(
        "DROP FUNCTION IF EXISTS pgqueue.complete_and_hand_off(\n"
        "    uuid[], integer[], jsonb[], timestamptz[], text, text[], integer,\n"
        "    double precision);\n"
        "DROP INDEX IF EXISTS pgqueue.tasks_waiting_idx;\n"
        "DROP VIEW pgqueue.queue_stats;\n"
        + _statement(initial, "CREATE OR REPLACE VIEW pgqueue.queue_stats AS")
        + _statement(initial, "COMMENT ON VIEW pgqueue.queue_stats IS")
        + "\n".join(frozen_function(functions, n) for n in _CHANGED)
    )


#: The functions of revision 0008 that this revision redefines.
_CHANGED = ("release_children",)


def _statement(script: str, start_text: str) -> str:
    """The statement of a frozen script that starts with `start_text`, through its `;`."""
    start = script.index(start_text)
    return script[start : script.index(";\n", start) + 2]
