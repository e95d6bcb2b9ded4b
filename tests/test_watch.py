"""``contend watch`` against a contended database: JSON lines, the live tree, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest
from rich.console import Console

from contend.sample.pg import APPLICATION_NAME, PgSampler, Ticker, connect
from contend.sample.watch import StackWatch
from contend.sample.watchview import parents, render
from tests.conftest import CONTEND, Contention, contend, wait_for


def start_watch(dsn: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CONTEND_DSN": dsn, "COLUMNS": "200"}
    return subprocess.Popen([*CONTEND, "watch", "--interval", "0.2", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def watch_ticks(dsn: str, n: int) -> None:
    """Wait until the watch's sampler has ended ``n`` ticks, seen from outside: each tick is one
    transaction, and the view of a tick is drawn before the next one begins."""
    starts: set[object] = set()
    with psycopg.connect(dsn, autocommit=True) as conn:
        def begun() -> bool:
            rows = conn.execute("SELECT query_start FROM pg_stat_activity WHERE application_name = %s "
                                "AND query = 'COMMIT'", (APPLICATION_NAME,)).fetchall()
            starts.update(row[0] for row in rows)
            return len(starts) >= n
        wait_for(begun, timeout=30, interval=0.02)


@pytest.mark.integration
def test_watch_json_streams_correct_metrics_and_sigint_exits_cleanly(sample_dsn: str) -> None:
    with Contention(sample_dsn, waiters=5):
        proc = start_watch(sample_dsn, "--json")
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 30
            ticks = []
            while time.monotonic() < deadline and len(ticks) < 3:
                ticks.append(json.loads(proc.stdout.readline()))
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
    # 1 holder + 5 queued waiters: edges 1+1+2+3+4 = 11, blocked 5, depth 5 (test_sample_pg).
    assert [(t["edges"], t["blocked"], t["depth"], t["idle_in_tx"]) for t in ticks] == [(11, 5, 5, 1)] * 3
    assert [r["blocks"] for r in ticks[0]["roots"]] == [5]
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    for line in out.splitlines():  # whatever was printed before the signal is whole JSON
        json.loads(line)


@pytest.mark.integration
def test_watch_view_draws_the_queue_as_one_chain(sample_dsn: str) -> None:
    with Contention(sample_dsn, waiters=3) as c, connect(sample_dsn) as conn:
        tick, backends = PgSampler(conn).tick()
        h, (w1, w2, w3) = c.holder_pid, c.waiter_pids
    # w3 is blocked by w1 and w2: drawn under w2, the deeper one, so the queue reads as a chain.
    blocked_by = {b["pid"]: b["blocked_by"] for b in backends if b["blocked_by"]}
    assert parents(blocked_by) == {w1: h, w2: w1, w3: w2}
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render(tick, backends))
    text = console.file.getvalue()
    lines = text.splitlines()
    holder_line = next(i for i, line in enumerate(lines) if f"pid {h} idle in transaction" in line)
    assert "blocks 3" in lines[holder_line]
    # Each waiter's line is indented deeper than the one before it.
    indents = [next(line.index(f"pid {p} ") for line in lines if f"pid {p} " in line)
               for p in (h, w1, w2, w3)]
    assert indents == sorted(indents) and len(set(indents)) == 4
    assert "idle in transaction" in text and "UPDATE sample_hot SET n = n + 1 WHERE id = 1" in text
    assert "edges 4" in text and "depth 3" in text  # edges 1 + 1 + 2, chain w3->w2->w1->h


@pytest.mark.integration
def test_watch_live_view_runs_until_sigterm(sample_dsn: str) -> None:
    with Contention(sample_dsn, waiters=1) as c:
        proc = start_watch(sample_dsn)
        watch_ticks(sample_dsn, 3)  # the view of the first two is drawn
        proc.send_signal(signal.SIGTERM)  # ends a watch like Ctrl-C: exit 0
        out, err = proc.communicate(timeout=15)
        holder = c.holder_pid
    assert proc.returncode == 0, err
    assert "blocker forest" in out and f"pid {holder}" in out


def test_watch_without_dsn_is_a_usage_error() -> None:
    done = contend("watch", "--json", env={"CONTEND_DSN": None})
    assert done.returncode == 2
    assert "--dsn" in done.stderr


@pytest.mark.integration
def test_watch_says_what_a_role_without_pg_monitor_cannot_see(sample_dsn: str) -> None:
    with psycopg.connect(sample_dsn, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS watch_nobody")
        admin.execute("CREATE ROLE watch_nobody LOGIN")
    try:
        proc = start_watch(sample_dsn.replace("postgres@", "watch_nobody@"), "--json")
        assert proc.stdout is not None
        tick = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        with psycopg.connect(sample_dsn, autocommit=True) as admin:
            admin.execute("DROP ROLE IF EXISTS watch_nobody")
    assert proc.returncode == 0
    assert "Warning: role 'watch_nobody' is neither superuser nor member of pg_monitor" in err
    assert "GRANT pg_monitor TO watch_nobody" in err
    assert tick["blocked"] == 0


def test_the_ticker_measures_real_lateness_and_does_not_replay_missed_ticks() -> None:
    now = [100.0]
    ticker = Ticker(0.5, clock=lambda: now[0])
    assert ticker.late_ms() == 0.0
    now[0] += 0.1  # the tick took 100 ms
    assert ticker.wait_s() == pytest.approx(0.4)
    now[0] += 0.4 + 1.3  # the next tick began 1.3 s after its due time (a slow dump, a busy machine)
    assert ticker.late_ms() == pytest.approx(1300.0)
    assert ticker.wait_s() == 0.0  # behind: begin at once, the missed ticks are not replayed
    now[0] += 0.05
    assert ticker.wait_s() == pytest.approx(0.45)


@pytest.mark.integration
def test_a_slow_py_spy_never_delays_the_postgres_snapshots(sample_dsn: str) -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck_dump(pid: int, **_: object) -> list[dict[str, object]]:
        entered.set()
        release.wait(30)
        return []

    with Contention(sample_dsn, waiters=2):
        stacks = StackWatch(sample_dsn, [os.getpid()], warn=lambda _: None, dumper=stuck_dump)
        try:
            with connect(sample_dsn) as conn:
                sampler = PgSampler(conn)
                tick, backends = sampler.tick()
                assert tick["blocked"] == 2
                stacks.update(tick, backends)
                wait_for(entered.is_set, timeout=10)
                # The dump hangs; every further snapshot is handed over and answered at once.
                for _ in range(3):
                    tick, backends = sampler.tick()
                    assert stacks.update(tick, backends) == []
                assert not release.is_set() and stacks._thread.is_alive()
        finally:
            release.set()
            stacks.close()
    assert not stacks._thread.is_alive()


@pytest.mark.integration
def test_the_forest_is_cut_to_the_terminal_and_says_how_many_more_wait(sample_dsn: str) -> None:
    with Contention(sample_dsn, waiters=8) as c, connect(sample_dsn) as conn:
        tick, backends = PgSampler(conn).tick()
        h, waiters = c.holder_pid, c.waiter_pids
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render(tick, backends, max_lines=24))
    cut = console.file.getvalue()
    # 24 lines: the header, the relations line and the idle table leave room for 6 nodes of two
    # lines: the root and 5 waiters of its chain, then the count of the 3 others.
    drawn = [p for p in waiters if f"pid {p} " in cut]
    assert f"pid {h} " in cut and drawn == waiters[:5]
    assert "… and 3 more waiters" in cut
    assert len(cut.splitlines()) <= 24
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render(tick, backends))
    assert all(f"pid {p} " in console.file.getvalue() for p in waiters) and "more waiters" not in \
        console.file.getvalue()


def test_parents_of_a_deadlock_cycle_and_a_long_queue() -> None:
    assert parents({1: [2], 2: [1]}) == {1: 2, 2: 1}  # a cycle is not followed round again
    # 300 waiters queued on one row: each under the one just ahead of it (one chain).
    queue = {k: list(range(1, k)) for k in range(2, 302)} | {1: [0]}
    assert parents(queue) == {k: k - 1 for k in range(1, 302)}


def test_the_view_says_when_and_how_far_the_budget_lowered_the_rate() -> None:
    from contend.sample.watch import Budget

    now = [0.0]
    ticker = Ticker(0.1, clock=lambda: now[0], cpu_budget_pct=3.0)
    budget = Budget(ticker)
    tick = {"t": 1_700_000_000.0, "backends": 1050}
    assert budget.lowered(tick) == []
    for _ in range(12):  # a second of ticks at 7.5 ms each: 7.5 % of a core
        ticker.spend(0.0075)
        now[0] += ticker.wait_s()
    [line] = budget.lowered(tick)
    assert line.startswith("sampler 10 Hz lowered to 4 Hz since ") and line.endswith(
        "to keep within its CPU budget (3 % of a core): 1,050 backends")
    for _ in range(30):  # the cost falls: back to 10 Hz, and the line goes
        ticker.spend(0.0005)
        now[0] += ticker.wait_s()
    assert budget.lowered(tick) == []
