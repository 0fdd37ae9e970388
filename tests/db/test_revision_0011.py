"""Revision 0011 (workflows, faster and seen) goes down to what 0010 left and up again."""

from __future__ import annotations

from typing import Any

import psycopg
from alembic import command
from sqlalchemy import create_engine

from pgqueue.db.migrations import alembic_config, sqlalchemy_url, upgrade


def _schema(dsn: str) -> dict[str, Any]:
    """The function bodies, the columns of queue_stats and the indexes of pgqueue."""
    with psycopg.connect(dsn) as conn:
        functions = conn.execute(
            "SELECT p.proname, p.prosrc FROM pg_proc AS p"
            " JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = 'pgqueue'"
        ).fetchall()
        columns = conn.execute(
            "SELECT attname FROM pg_attribute"
            " WHERE attrelid = 'pgqueue.queue_stats'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'pgqueue'"
        ).fetchall()
        comment = conn.execute(
            "SELECT obj_description('pgqueue.queue_stats'::regclass, 'pg_class')"
        ).fetchone()
    return {
        "functions": dict(functions),
        "columns": [c[0] for c in columns],
        "indexes": dict(indexes),
        "comment": comment,
    }


def test_revision_0011_downgrades_to_what_0010_left_and_up_again(empty_dsn: str) -> None:
    upgrade(empty_dsn, revision="0010")
    before = _schema(empty_dsn)
    upgrade(empty_dsn, revision="0011")
    after = _schema(empty_dsn)
    assert "complete_and_hand_off" in after["functions"]
    assert after["columns"][-1] == "waiting"
    assert "tasks_waiting_idx" in after["indexes"]
    engine = create_engine(sqlalchemy_url(empty_dsn))
    try:
        with engine.connect() as conn:
            command.downgrade(alembic_config(connection=conn), "0010")
            conn.commit()
    finally:
        engine.dispose()
    assert _schema(empty_dsn) == before
    upgrade(empty_dsn, revision="0011")
    assert _schema(empty_dsn) == after
