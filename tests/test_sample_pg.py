"""The Postgres sampler against real contention created from background threads."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from contend.sample import pg
from contend.sample.pg import APPLICATION_NAME, PgSampler, connect, fingerprint
from tests.conftest import HOT_UPDATE, Contention, wait_for


@pytest.fixture()
def sampler(sample_dsn: str):
    conn = connect(sample_dsn)
    yield PgSampler(conn)
    conn.close()


@pytest.mark.integration
def test_one_holder_five_queued_waiters(sample_dsn: str, sampler: PgSampler) -> None:
    with Contention(sample_dsn, waiters=5) as c:
        h, (w1, w2, w3, w4, w5) = c.holder_pid, c.waiter_pids
        tick, backends = sampler.tick()
    # Other sessions of the database (a connection just closed may linger a moment) wait on nobody.
    blocked_by = {b["pid"]: b["blocked_by"] for b in backends if b["pid"] in {h, w1, w2, w3, w4, w5}}
    assert all(not b["blocked_by"] for b in backends if b["pid"] not in blocked_by)
    # Postgres queues row-lock waiters: w1 waits on h's transaction id and holds the tuple lock;
    # w2..w5 wait on that tuple lock, blocked by w1 (holder) and by every waiter queued before them.
    assert blocked_by == {h: [], w1: [h], w2: [w1], w3: sorted([w1, w2]), w4: sorted([w1, w2, w3]),
                          w5: sorted([w1, w2, w3, w4])}
    # edges = 1 + 1 + 2 + 3 + 4 = 11 pairs; blocked = the 5 waiters; depth = path
    # w5 -> w4 -> w3 -> w2 -> w1 -> h = 5 edges; one root, h, blocking all 5 transitively.
    assert (tick["edges"], tick["blocked"], tick["depth"]) == (11, 5, 5)
    assert tick["blocking_calls"] == 5  # pg_blocking_pids() only for the 5 Lock waiters
    assert [(r["pid"], r["blocks"], r["state"]) for r in tick["roots"]] == [(h, 5, "idle in transaction")]
    assert tick["roots"][0]["fingerprint"] == "UPDATE sample_hot SET n = n + ? WHERE id = ?"
    assert tick["locked_relations"] == ["sample_hot"]
    events = tick["wait_events"]
    assert (events["Lock:transactionid"], events["Lock:tuple"]) == (1, 4)
    assert events["Client:ClientRead"] >= 1  # the holder, idle in its transaction
    shown = sum(b["backend_type"] == "client backend" for b in backends)
    assert tick["backends"] == shown + tick["idle_hidden"] and shown >= 6
    assert all(b["app"] != APPLICATION_NAME for b in backends)  # the sampler's own backend is excluded
    holder = next(b for b in backends if b["pid"] == h)
    assert holder["has_xid"] is True and holder["client_addr"] == "127.0.0.1" and holder["client_port"] > 0


@pytest.mark.integration
def test_idle_in_transaction_holder_found_with_its_age(sample_dsn: str, sampler: PgSampler) -> None:
    with Contention(sample_dsn, waiters=1) as c:
        time.sleep(0.5)
        before = time.time()
        tick, _ = sampler.tick()
        age_bound = before - c.holder_started
    assert tick["idle_in_tx"] == 1
    # The holder's transaction began just before holder_started (its UPDATE returned then).
    assert age_bound - 0.2 <= tick["idle_in_tx_max_age"] <= age_bound + 1.0
    assert tick["roots"][0]["xact_age"] == pytest.approx(tick["idle_in_tx_max_age"])


RUNBOOK_IDLE = """SELECT count(*) AS idle_in_tx FROM pg_stat_activity
 WHERE datname = current_database() AND state = 'idle in transaction'"""
RUNBOOK_CHAIN = """SELECT count(*) AS blocker_chain
  FROM pg_stat_activity blocked
  JOIN pg_stat_activity blocking ON blocking.pid = ANY(pg_blocking_pids(blocked.pid))
 WHERE blocked.wait_event_type = 'Lock' AND blocked.datname = current_database()"""
RUNBOOK_TOP = """SELECT state, wait_event,
       substring(query, 1, 80), EXTRACT(EPOCH FROM now() - xact_start) AS xact_age_s
  FROM pg_stat_activity
 WHERE datname = current_database() AND state != 'idle'
   AND (state = 'idle in transaction' OR wait_event_type = 'Lock')
 ORDER BY xact_start NULLS LAST LIMIT 20"""


@pytest.mark.integration
def test_runbook_queries_agree_with_our_records(sample_dsn: str, sampler: PgSampler) -> None:
    # The lock state is frozen while the holder sits idle in its transaction, so the runbook's
    # three queries and one sampler tick see the same snapshot.
    with Contention(sample_dsn, waiters=4), psycopg.connect(sample_dsn, autocommit=True) as psql:
        idle_in_tx = psql.execute(RUNBOOK_IDLE).fetchone()[0]
        chain = psql.execute(RUNBOOK_CHAIN).fetchone()[0]
        top = psql.execute(RUNBOOK_TOP).fetchall()
        tick, backends = sampler.tick()
    assert tick["idle_in_tx"] == idle_in_tx == 1
    assert tick["edges"] == chain == 1 + 1 + 2 + 3
    ours = [b for b in backends if b["state"] == "idle in transaction" or b["wait_event_type"] == "Lock"]
    ours.sort(key=lambda b: -(b["xact_age"] or 0.0))  # oldest transaction first = xact_start order
    assert [(b["state"], b["wait_event"], b["query"][:80]) for b in ours] == [tuple(r[:3]) for r in top]
    for b, r in zip(ours, top, strict=True):
        assert b["xact_age"] == pytest.approx(float(r[3]), abs=0.5)


@pytest.mark.integration
def test_least_privilege_role_is_warned_once_and_sampling_goes_on(sample_dsn: str) -> None:
    with psycopg.connect(sample_dsn, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS sample_nobody")
        admin.execute("CREATE ROLE sample_nobody LOGIN")
    dsn = sample_dsn.replace("postgres@", "sample_nobody@")
    try:
        with Contention(sample_dsn, waiters=2):
            with connect(dsn) as conn:
                sampler = PgSampler(conn)
                assert not sampler.can_see_all
                assert len(sampler.warnings) == 1
                assert "GRANT pg_monitor TO sample_nobody" in sampler.warnings[0]
                tick, backends = sampler.tick()
                # Other roles' sessions show no state or wait event: what the warning says.
                assert (tick["blocked"], tick["edges"], tick["idle_in_tx"]) == (0, 0, 0)
                assert {b["state"] for b in backends} == {None}
            with psycopg.connect(sample_dsn, autocommit=True) as admin:
                admin.execute("GRANT pg_monitor TO sample_nobody")
            with connect(dsn) as conn:
                sampler = PgSampler(conn)
                tick, _ = sampler.tick()
                assert sampler.warnings == []
                assert (tick["blocked"], tick["edges"], tick["idle_in_tx"]) == (2, 2, 1)
    finally:
        with psycopg.connect(sample_dsn, autocommit=True) as admin:
            admin.execute("DROP ROLE IF EXISTS sample_nobody")


@pytest.mark.integration
def test_sampler_connection_is_a_polite_observer(sample_dsn: str, sampler: PgSampler) -> None:
    conn = sampler.conn
    assert conn.autocommit
    settings = conn.execute(
        "SELECT current_setting('application_name'), current_setting('statement_timeout'), "
        "current_setting('lock_timeout')"
    ).fetchone()
    assert settings == (APPLICATION_NAME, "200ms", "50ms")


def test_fingerprint_normalises_literals() -> None:
    assert fingerprint("SELECT * FROM t WHERE a = 'x''y' AND b IN (1, 2,3) AND c = $1") == (
        "SELECT * FROM t WHERE a = ? AND b IN (?) AND c = ?"
    )
    assert fingerprint('UPDATE "jobs_job" SET "logs" = \'{"x": 1}\'::jsonb\n  WHERE id = 42') == (
        'UPDATE "jobs_job" SET "logs" = ?::jsonb WHERE id = ?'
    )


def test_fingerprint_of_a_truncated_statement_closes_its_open_literal() -> None:
    # The same statement cut at 1024 characters, its log lines (newest first) differing in content.
    def cut(job: int) -> str:
        lines = [f"[2026-11-28 11:{n % 60:02d}:07] Updated job {job} progress to {n * job % 101}%"
                 for n in range(40, 0, -1)]
        logs = json.dumps({"stderr": [], "stdout": lines})
        return f'UPDATE "jobs_job" SET "logs" = \'{logs}\'::jsonb WHERE "jobs_job"."id" = {job}'[:1024]

    assert {fingerprint(cut(job)) for job in (3, 47, 1250)} == {'UPDATE "jobs_job" SET "logs" = ?'}
    # A literal closed before the cut stays one "?", what follows is kept.
    assert fingerprint("UPDATE t SET a = 'x', b = 'it''s 2 o") == "UPDATE t SET a = ?, b = ?"


@pytest.mark.integration
def test_idle_sessions_are_counted_in_sql_not_returned(sample_dsn: str, sampler: PgSampler) -> None:
    # Twenty pooled connections doing nothing: counted (backends, Client:ClientRead), never a row.
    idle = [psycopg.connect(sample_dsn, autocommit=True) for _ in range(20)]
    try:
        with Contention(sample_dsn, waiters=2) as c:
            tick, backends = sampler.tick()
            pids = {b["pid"] for b in backends}
            assert {c.holder_pid, *c.waiter_pids} <= pids
            assert not pids & {conn.info.backend_pid for conn in idle}
            assert all(b["state"] != "idle" for b in backends)
            assert tick["idle_hidden"] >= 20 and tick["backends"] >= 23
            assert tick["wait_events"]["Client:ClientRead"] >= 21  # the idle ones and the holder
            assert (tick["edges"], tick["blocked"], tick["depth"]) == (2, 2, 2)
    finally:
        for conn in idle:
            conn.close()


@pytest.mark.integration
def test_an_idle_session_holding_a_lock_is_still_returned(sample_dsn: str, sampler: PgSampler) -> None:
    # A session-level advisory lock outlives its transaction: its idle holder blocks, so it is shown.
    with advisory_lock_waited_on(sample_dsn, 4242) as holder:
        wait_for(lambda: sampler.tick()[0]["blocked"] == 1, timeout=10)
        tick, backends = sampler.tick()
        by_pid = {b["pid"]: b for b in backends}
        assert by_pid[holder]["state"] == "idle"
        assert [r["pid"] for r in tick["roots"]] == [holder]


@contextlib.contextmanager
def advisory_lock_waited_on(dsn: str, key: int) -> Iterator[int]:
    """An idle session holding a session-level advisory lock, one waiting for it; yields the holder's pid."""
    with psycopg.connect(dsn, autocommit=True) as holder, psycopg.connect(dsn, autocommit=True) as waiter:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        blocked = threading.Thread(target=lambda: waiter.execute("SELECT pg_advisory_lock(%s)", (key,)))
        blocked.start()
        try:
            yield holder.info.backend_pid
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
            blocked.join(timeout=20)


@pytest.mark.integration
def test_a_sqlcommenter_comment_is_kept_beyond_the_cut_query_text(sample_dsn: str,
                                                                   sampler: PgSampler) -> None:
    # longer than the text the sampler keeps (500), shorter than what Postgres keeps (1024 by default)
    padding = ", ".join(f"{i} AS c{i}" for i in range(60))
    comment = ("/*controller='JobViewSet',route='api%2Fv2%2Fjobs%2F%3Cpk%3E%2Fresult%2F',"
               "traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/")
    with psycopg.connect(sample_dsn) as conn:
        conn.execute(f"SELECT {padding} {comment}")  # the session stays idle in transaction after it
        _, backends = sampler.tick()
        pid = conn.info.backend_pid
    (mine,) = [b for b in backends if b["pid"] == pid]
    assert comment not in mine["query"]  # cut
    assert mine["comment"] == {"controller": "JobViewSet", "route": "api/v2/jobs/<pk>/result/",
                               "traceparent": "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01"}
    assert all(b["comment"] is None for b in backends if b["pid"] != pid)


def _seen(sampler: PgSampler) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    tick, backends = sampler.tick()
    metrics = {k: tick[k] for k in ("backends", "idle_hidden", "blocked", "edges", "depth", "idle_in_tx",
                                    "wait_events", "roots")}
    for root in metrics["roots"]:
        root.pop("xact_age")
    # A statement still running may take a transaction id without any change the keys show: its
    # has_xid is read again with the next change or the next full read (docs/metrics.md).
    return metrics, {b["pid"]: {k: v for k, v in b.items() if k != "t" and not k.endswith("_age")
                                and not (k == "has_xid" and b["state"] == "active")}
                     for b in backends}


def _same_as_a_fresh_read(kept: PgSampler, dsn: str) -> bool:
    """The kept sampler's tick (rows and edges kept from tick to tick) equals a first tick's (all read)."""
    with connect(dsn) as conn:
        return _seen(kept) == _seen(PgSampler(conn))


@pytest.mark.integration
@pytest.mark.parametrize("by_pid_max", [pg.ROWS_BY_PID_MAX, 0])  # rows read by pid, or in one pass
def test_rows_and_edges_kept_from_tick_to_tick_equal_a_fresh_read(
        sample_dsn: str, monkeypatch: pytest.MonkeyPatch, by_pid_max: int) -> None:
    monkeypatch.setattr(pg, "ROWS_BY_PID_MAX", by_pid_max)
    # Nothing is read again by age: what the kept sampler shows follows from what changed alone.
    kept = PgSampler(connect(sample_dsn), edges_max_age_s=3600, rows_full_every_s=3600)
    try:
        kept.tick()
        with Contention(sample_dsn, waiters=3) as c:
            wait_for(lambda: _same_as_a_fresh_read(kept, sample_dsn), timeout=20)
            assert _seen(kept)[0]["blocked"] == 3
            # Nothing changes: no row and no edge is read again.
            tick, _ = kept.tick()
            assert (tick["rows_read"], tick["blocking_calls"], tick["edges"]) == (0, 0, 1 + 3)
            # The holder commits: each waiter in turn takes the row, the queue drains.
            assert c.holder is not None
            c.holder.commit()
            wait_for(lambda: _seen(kept)[0]["blocked"] == 0, timeout=20)
            wait_for(lambda: _same_as_a_fresh_read(kept, sample_dsn), timeout=20)
            # A new holder idle in its transaction, and two waiters that keep the row once they have it.
            c.holder.execute(HOT_UPDATE)
            queue = [psycopg.connect(sample_dsn) for _ in range(2)]
            threads = []
            try:
                for n, conn in enumerate(queue, 1):
                    threads.append(threading.Thread(target=conn.execute, args=(HOT_UPDATE,), daemon=True))
                    threads[-1].start()
                    wait_for(lambda n=n: _seen(kept)[0]["blocked"] == n, timeout=20)
                wait_for(lambda: _same_as_a_fresh_read(kept, sample_dsn), timeout=20)
                # The holder ends: the first waiter holds the row, idle in its transaction, the
                # second waits on it now (its own wait event unchanged: transactionid, then tuple).
                c.holder.rollback()
                wait_for(lambda: _seen(kept)[0]["idle_in_tx"] == 1, timeout=20)
                wait_for(lambda: _same_as_a_fresh_read(kept, sample_dsn), timeout=20)
                assert [r["pid"] for r in _seen(kept)[0]["roots"]] == [queue[0].info.backend_pid]
            finally:  # the queue ends from its head, the holder first, so that no rollback waits
                c.holder.rollback()
                for conn in queue:
                    conn.rollback()
                for thread in threads:
                    thread.join(timeout=20)
                for conn in queue:
                    conn.close()
            wait_for(lambda: _same_as_a_fresh_read(kept, sample_dsn), timeout=20)
        # A session-level advisory lock held by an idle session, outside any transaction.
        with advisory_lock_waited_on(sample_dsn, 4243) as holder:
            wait_for(lambda: _seen(kept)[0]["blocked"] == 1, timeout=20)
            wait_for(lambda: _same_as_a_fresh_read(kept, sample_dsn), timeout=20)
            assert [r["pid"] for r in kept.tick()[0]["roots"]] == [holder]
        wait_for(lambda: _same_as_a_fresh_read(kept, sample_dsn), timeout=20)
    finally:
        kept.conn.close()
