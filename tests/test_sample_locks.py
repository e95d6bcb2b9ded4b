"""The wait graph through both paths, on the same hand-made lock queues: one pg_blocking_pids() call
per waiter, or one read of pg_locks (the lock-mode conflict table and the queue order by waitstart)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from contend.diagnosis.locks import Lock, blockers_from_locks, conflicts
from contend.sample.pg import PgSampler, connect
from tests.conftest import Contention, wait_for


@pytest.fixture()
def samplers(sample_dsn: str) -> Iterator[tuple[PgSampler, PgSampler]]:
    """(pg_blocking_pids always, pg_locks always)."""
    a, b = connect(sample_dsn), connect(sample_dsn)
    yield PgSampler(a, locks_above=None), PgSampler(b, locks_above=0)
    a.close()
    b.close()


def both(samplers: tuple[PgSampler, PgSampler],
         pids: set[int]) -> list[tuple[dict[str, Any], dict[int, Any]]]:
    found = []
    for sampler in samplers:
        tick, backends = sampler.tick()
        found.append((tick, {b["pid"]: b for b in backends if b["pid"] in pids}))
    return found


@pytest.mark.integration
@pytest.mark.parametrize("n", [1, 5, 12])
def test_a_row_lock_queue_gives_the_same_edges_through_both_paths(
        sample_dsn: str, samplers: tuple[PgSampler, PgSampler], n: int) -> None:
    with Contention(sample_dsn, waiters=n) as c:
        holder, pids = c.holder_pid, {c.holder_pid, *c.waiter_pids}
        (calls, by_calls), (locks, by_locks) = both(samplers, pids)
    assert (calls["wait_graph"], locks["wait_graph"]) == ("pg_blocking_pids", "pg_locks")
    assert (calls["blocking_calls"], locks["blocking_calls"]) == (n, 0)
    edges = [{p: b["blocked_by"] for p, b in found.items()} for found in (by_calls, by_locks)]
    assert edges[0] == edges[1]
    for tick in (calls, locks):
        # 1 holder + N waiters: blocked N, edges 1 + N(N-1)/2, depth N, idle in transaction 1.
        assert (tick["blocked"], tick["edges"], tick["depth"]) == (n, 1 + n * (n - 1) // 2, n)
        assert tick["idle_in_tx"] == 1 and [r["pid"] for r in tick["roots"]] == [holder]
    # The waits are timed the same way (pg_locks.waitstart) through both paths.
    assert sorted(w["waitstart"] for w in calls["waits"]) == sorted(w["waitstart"] for w in locks["waits"])


def lock_waits(dsn: str,
               statements: list[str]) -> tuple[list[psycopg.Connection[Any]], list[threading.Thread]]:
    """Each statement in a transaction of its own, started once the previous one waits (the queue order)."""
    conns, threads = [], []
    for sql in statements:
        conn = psycopg.connect(dsn)
        conns.append(conn)
        thread = threading.Thread(target=_quietly, args=(conn, sql), daemon=True)
        thread.start()
        threads.append(thread)
        pid = conn.info.backend_pid
        wait_for(lambda pid=pid: _waits(dsn, pid), timeout=20)
    return conns, threads


def _quietly(conn: psycopg.Connection[Any], sql: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql)
        conn.rollback()  # the lock goes once granted: the next in the queue gets its own and ends


def _waits(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.integration
def test_a_table_lock_queue_of_mixed_modes_gives_the_same_soft_blockers(
        sample_dsn: str, samplers: tuple[PgSampler, PgSampler]) -> None:
    with psycopg.connect(sample_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sample_modes (id int)")
    holder = psycopg.connect(sample_dsn)
    holder.execute("LOCK TABLE sample_modes IN SHARE MODE")
    # A conflicts with the holder; B is compatible with the holder but queues behind A, whose
    # mode it conflicts with (a soft blocker); C conflicts with all three.
    conns, threads = lock_waits(sample_dsn, [
        "LOCK TABLE sample_modes IN ROW EXCLUSIVE MODE",
        "LOCK TABLE sample_modes IN SHARE MODE",
        "LOCK TABLE sample_modes IN ACCESS EXCLUSIVE MODE",
    ])
    try:
        h, (a, b, c) = holder.info.backend_pid, [conn.info.backend_pid for conn in conns]
        (calls, by_calls), (locks, by_locks) = both(samplers, {h, a, b, c})
    finally:
        holder.rollback()
        holder.close()
        for thread in threads:
            thread.join(timeout=20)
        for conn in conns:
            conn.close()
    expected = {h: [], a: [h], b: [a], c: sorted([h, a, b])}
    assert {p: x["blocked_by"] for p, x in by_calls.items()} == expected
    assert {p: x["blocked_by"] for p, x in by_locks.items()} == expected
    assert (calls["edges"], calls["depth"]) == (locks["edges"], locks["depth"]) == (5, 3)


def test_the_conflict_table_is_symmetric_and_as_documented() -> None:
    assert conflicts("RowExclusiveLock", "ShareLock") and not conflicts("ShareLock", "ShareLock")
    assert not conflicts("AccessShareLock", "ExclusiveLock") and conflicts("RowShareLock", "ExclusiveLock")
    assert not conflicts("SIReadLock", "AccessExclusiveLock")
    modes = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
             "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]
    assert all(conflicts(x, y) == conflicts(y, x) for x in modes for y in modes)
    assert all(conflicts("AccessExclusiveLock", x) for x in modes)


def test_the_documented_differences_from_pg_blocking_pids() -> None:
    row = "(tuple,5,16384,0,1,,,,,)"
    xid = "(transactionid,,,,,,742,,,)"
    locks = [
        Lock(10, 10, xid, "ExclusiveLock", True),
        Lock(11, 11, xid, "ShareLock", False, 100.0),
        Lock(11, 11, row, "ExclusiveLock", True),
        # Two waits that began in the same microsecond: Postgres has one ahead, waitstart cannot say
        # which, so neither is a soft blocker of the other (pg_blocking_pids would give one such edge).
        Lock(12, 12, row, "ExclusiveLock", False, 101.0),
        Lock(13, 13, row, "ExclusiveLock", False, 101.0),
        # A wait whose waitstart is not set yet counts as last in its queue.
        Lock(14, 14, row, "ExclusiveLock", False, None),
        # A parallel worker (15, leader 12) is reported as its leader, as pg_blocking_pids does, and
        # members of one lock group never block one another.
        Lock(15, 12, row, "ExclusiveLock", False, 102.0),
    ]
    assert blockers_from_locks(locks) == {11: [10], 12: [11], 13: [11], 14: [11, 12, 13], 15: [11, 13]}
