"""The wait-for graph on hand-made snapshots: each expected number is derived in the test."""

from __future__ import annotations

from contend.diagnosis.forest import build_forest


def lock(pid: int, *blockers: int) -> dict:
    return {"pid": pid, "blocked_by": list(blockers), "wait_event_type": "Lock"}


def idle(pid: int) -> dict:
    return {"pid": pid, "blocked_by": [], "wait_event_type": "Client"}


def test_nobody_waits() -> None:
    forest = build_forest([idle(1), idle(2)])
    assert (forest.edges, forest.blocked, forest.depth, forest.roots) == (0, 0, 0, {})


def test_one_holder_one_waiter_has_depth_one() -> None:
    forest = build_forest([idle(1), lock(2, 1)])
    assert (forest.edges, forest.blocked, forest.depth, forest.roots) == (1, 1, 1, {1: 1})


def test_row_lock_queue_of_five() -> None:
    # What Postgres reports for 1 holder (10) and 5 waiters (11..15) queued in that order on one
    # row: 11 waits on 10's transaction id, 12..15 wait on the tuple lock held by 11 and queue
    # behind each other. Edges: 1 + 1 + 2 + 3 + 4 = 11; longest path 15->14->13->12->11->10 = 5.
    rows = [idle(10), lock(11, 10), lock(12, 11), lock(13, 11, 12), lock(14, 11, 12, 13),
            lock(15, 11, 12, 13, 14)]
    forest = build_forest(rows)
    assert forest.edges == 11
    assert forest.blocked == 5
    assert forest.depth == 5
    assert forest.roots == {10: 5}
    assert forest.waiters[10] == [11]


def test_two_trees_and_duplicates_and_prepared_transactions() -> None:
    # 21 is blocked by 20 twice (parallel query repeats a leader) and by 0 (a prepared
    # transaction, no backend): one edge. 31 and 32 wait on 30. Roots 20 (blocks 1), 30 (blocks 2).
    rows = [idle(20), lock(21, 20, 20, 0), idle(30), lock(31, 30), lock(32, 30)]
    forest = build_forest(rows)
    assert (forest.edges, forest.blocked, forest.depth) == (3, 3, 1)
    assert forest.roots == {20: 1, 30: 2}


def test_deadlock_cycle_terminates() -> None:
    # 1 and 2 block each other (before deadlock_timeout fires), 3 waits on 2. There is no root;
    # the longest simple path is 3->2->1 = 2 edges.
    forest = build_forest([lock(1, 2), lock(2, 1), lock(3, 2)])
    assert forest.roots == {}
    assert (forest.edges, forest.blocked, forest.depth) == (3, 3, 2)
