"""Workflows, faster again: a completion moves the children it hands off from WAITING to
RUNNING in one update, and every row of a chain step is found by its key, not by a scan
of a small table (release_children, complete_and_hand_off, complete_tasks); and
history_enabled() in PL/pgSQL, so that its plan is kept.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from pathlib import Path

from pgqueue.db.migrations import frozen_function, run_downgrade_sql, run_revision_sql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The change, in the .sql file of this name beside it; the same functions are in
    # sql/functions.sql.
    run_revision_sql(__file__)


def downgrade() -> None:
    """Put back the functions as revisions 0003 (history_enabled), 0010 (complete_tasks)
    and 0011 made them."""
    versions = Path(__file__).parent
    limits = (versions / "0010_limits.sql").read_text(encoding="utf-8")
    hand_off = (versions / "0011_hand_off.sql").read_text(encoding="utf-8")
    run_downgrade_sql(
        "CREATE OR REPLACE FUNCTION pgqueue.history_enabled() RETURNS boolean\n"
        "LANGUAGE sql STABLE AS $$\n"
        "    SELECT coalesce((SELECT s.enabled FROM pgqueue.history_settings AS s), true);\n"
        "$$;\n"
        "DROP FUNCTION pgqueue.complete_tasks(uuid[], integer[], jsonb[], timestamptz[]);\n"
        "DROP FUNCTION pgqueue.complete_and_hand_off(\n"
        "    uuid[], integer[], jsonb[], timestamptz[], text, text[], integer,\n"
        "    double precision);\n"
        "DROP FUNCTION pgqueue.release_children(\n"
        "    uuid[], text, text[], integer, double precision);\n"
        + frozen_function(hand_off, "release_children")
        + "\n"
        + frozen_function(limits, "complete_tasks")
        + "\n"
        + frozen_function(hand_off, "complete_and_hand_off")
    )
