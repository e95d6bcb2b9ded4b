"""Exact wait accounting: a lock queue of known shape and durations, sampled at 10 Hz, against the
sampler's waits timed from pg_locks.waitstart and against the server's own log_lock_waits lines."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contend.analysis.waits import Wait, coverage, wait_metrics, waits_from_ticks
from contend.pglog import read_server_log
from contend.sample.pg import PgSampler, connect
from contend.stack import Stack
from tests.conftest import wait_for

pytestmark = pytest.mark.integration  # every test here starts processes

INTERVAL_S = 0.1
UPDATE = "UPDATE waits_hot SET n = n + 1 WHERE id = 1"


class Ticker:
    """The Postgres sampler ticking every INTERVAL_S on a thread of its own, keeping its tick records."""

    def __init__(self, dsn: str) -> None:
        self.sampler = PgSampler(connect(dsn))
        self.ticks: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(INTERVAL_S):
            self.ticks.append(self.sampler.tick()[0])

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sampler.conn.close()


def _log_has(stack: Stack, text: str) -> bool:
    return text in (stack.run_dir / "postgres" / "postgres.log").read_text()


def test_blocked_seconds_from_waitstart_match_a_known_lock_queue_within_one_tick(
    sample_dsn: str, stack: Stack
) -> None:
    with psycopg.connect(sample_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS waits_hot (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO waits_hot VALUES (1, 0) ON CONFLICT DO NOTHING")
    holder = psycopg.connect(sample_dsn)
    waiters = [psycopg.connect(sample_dsn, autocommit=True) for _ in range(3)]
    pids = [w.info.backend_pid for w in waiters]
    started: dict[int, float] = {}
    errors: list[BaseException] = []

    def wait(conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute(UPDATE)
        except BaseException as exc:
            errors.append(exc)

    def waiting(pid: int) -> bool:
        with psycopg.connect(sample_dsn, autocommit=True) as conn:
            sql = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
            row = conn.execute(sql, (pid,)).fetchone()
        return row is not None and row[0] == "Lock"

    threads = []
    with Ticker(sample_dsn) as ticker:
        try:
            holder.execute(UPDATE)
            # A queue of three, one after another, each queued before the next starts.
            for conn, pid in zip(waiters, pids, strict=True):
                started[pid] = time.time()
                thread = threading.Thread(target=wait, args=(conn,), daemon=True)
                thread.start()
                threads.append(thread)
                wait_for(lambda pid=pid: waiting(pid), timeout=20)
            # Hold until Postgres has logged every wait (each passed deadlock_timeout, 1 s).
            for pid in pids:
                wait_for(lambda pid=pid: _log_has(stack, f"process {pid} still waiting"), timeout=30)
            holder.rollback()
            released = time.time()
            for thread in threads:
                thread.join(timeout=30)
            wait_for(lambda: len([t for t in ticker.ticks if t["t"] > released]) >= 2, timeout=30)
        finally:
            holder.close()
            for conn in waiters:
                conn.close()
    assert not errors
    waits = [w for w in waits_from_ticks(ticker.ticks) if w.pid in pids]
    # Each waiter's first wait is the queue's; a waiter that then waited a moment on the one ahead
    # of it (tuple lock granted, that transaction still committing) has a second, short one.
    first: dict[int, Wait] = {}
    for w in waits:
        first.setdefault(w.pid, w)
    assert sorted(first) == sorted(pids)
    for pid, w in first.items():
        truth = released - started[pid]
        assert w.next_tick is not None
        # The truth lies between the last tick that saw the wait and the next one (+ the few ms
        # between the client's start and the server's waitstart, and between release and grant).
        assert w.duration <= truth + 0.05
        assert truth <= w.duration + (w.next_tick - w.last_seen) + 0.05
    metrics = wait_metrics(waits, None)
    assert metrics["lock_waits"] == len(waits)
    expected = sum(released - started[pid] for pid in pids)
    ticks_allowed = sum((w.next_tick or w.last_seen) - w.last_seen for w in first.values())
    assert expected - ticks_allowed - 0.15 <= metrics["blocked_seconds"] <= expected + 0.15
    # The server's log: every logged wait of the queue was seen by the sampler.
    for pid in pids:
        wait_for(lambda pid=pid: _log_has(stack, f"process {pid} acquired"), timeout=30)
    log = read_server_log(Path(stack.run_dir / "postgres" / "postgres.log"))
    assert log is not None
    logged = [w for w in log.waits if w.pid in pids and w.end is not None and w.end >= released - 0.5]
    assert len({w.pid for w in logged}) == 3
    assert coverage(logged, waits) == (len(logged), len(logged))
    for w in logged:
        assert w.end is not None and w.end == pytest.approx(released, abs=0.5)
