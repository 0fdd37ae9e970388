"""Task ids (pgqueue/records.py): time-ordered UUIDv7, strictly increasing in a process."""

from __future__ import annotations

import itertools
import time
import uuid

from pgqueue.records import new_task_id, new_task_ids


def test_ids_are_real_version_7_uuids() -> None:
    made = new_task_id()
    same = uuid.UUID(int=made.int)
    assert made == same and hash(made) == hash(same) and str(made) == str(same)
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert uuid.UUID(str(made)) == made
    milliseconds = made.int >> 80
    assert abs(milliseconds - time.time_ns() // 1_000_000) < 5_000


def test_ids_strictly_increase_within_and_across_calls() -> None:
    # More than 4,096 in one call: the 12-bit sequence runs out and borrows milliseconds.
    ids = [new_task_id(), *new_task_ids(10_000), new_task_id(), *new_task_ids(3)]
    assert all(earlier.int < later.int for earlier, later in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)
    assert all(task_id.version == 7 for task_id in ids)


def test_no_ids_for_zero() -> None:
    assert new_task_ids(0) == []
