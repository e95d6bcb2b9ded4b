"""The embedded server's own log: lock waits (log_lock_waits) and errors, parsed from what it wrote."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from contend.pglog import parse_lines, read_server_log
from contend.stack import Stack
from tests.conftest import wait_for

P = "2026-11-30 10:20:0"
LINES = [
    f"{P}1.500 UTC [101] LOG:  process 101 still waiting for ShareLock on transaction 789 after 1000.000 ms",
    f"{P}1.500 UTC [101] DETAIL:  Process holding the lock: 100. Wait queue: 101.",
    f"{P}3.000 UTC [101] LOG:  process 101 acquired ShareLock on transaction 789 after 2500.000 ms",
    f"{P}4.000 UTC [102] LOG:  process 102 still waiting for ExclusiveLock on tuple (0,1) of relation 1 "
    "of database 5 after 1000.000 ms",
    f"{P}5.000 UTC [103] ERROR:  deadlock detected",
    f"{P}6.000 UTC [104] FATAL:  sorry, too many clients already",
    f"{P}7.000 UTC [105] ERROR:  canceling statement due to statement timeout",
    f"{P}7.000 UTC [105] STATEMENT:  SELECT pg_sleep(1)",
    f"{P}8.000 UTC [106] [contend-sampler] ERROR:  canceling statement due to statement timeout",  # ours
    f"{P}8.500 UTC [107] [[unknown]] ERROR:  deadlock detected",
]


def test_parse_lines_times_each_wait_and_counts_each_error() -> None:
    log = parse_lines(LINES)
    first, second = log.waits
    assert (first.pid, first.mode) == (101, "ShareLock")
    assert first.end is not None and first.end - first.start == pytest.approx(2.5)
    assert first.logged - first.start == pytest.approx(1.0)
    assert (second.pid, second.end) == (102, None)  # never acquired in this log
    assert log.counts() == {"lock_wait": 2, "deadlock": 2, "statement_timeout": 1, "lock_timeout": 0,
                            "too_many_clients": 1, "idle_in_tx_timeout": 0}


def _log(stack: Stack) -> Path:
    return stack.run_dir / "postgres" / "postgres.log"


@pytest.mark.integration
def test_the_embedded_server_logs_a_lock_wait_and_the_errors_it_raised(stack: Stack) -> None:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pglog_hot (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO pglog_hot VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING")
    holder = psycopg.connect(stack.dsn)
    waiter = psycopg.connect(stack.dsn, autocommit=True)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            waiter.execute("UPDATE pglog_hot SET n = n + 1 WHERE id = 1")
        except BaseException as exc:
            errors.append(exc)

    try:
        holder.execute("UPDATE pglog_hot SET n = n + 1 WHERE id = 1")
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        pid = waiter.info.backend_pid
        # Postgres logs the wait once it passes deadlock_timeout (1 s); then the holder commits.
        wait_for(lambda: f"process {pid} still waiting" in _log(stack).read_text(), timeout=30)
        released = time.time()
        holder.commit()
        thread.join(timeout=30)
        assert not errors
        with psycopg.connect(stack.dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SET statement_timeout = '50ms'")
            conn.execute("SELECT pg_sleep(2)")
        wait_for(lambda: f"process {pid} acquired" in _log(stack).read_text(), timeout=30)
        wait_for(lambda: "due to statement timeout" in _log(stack).read_text(), timeout=30)
    finally:
        holder.close()
        waiter.close()
    log = read_server_log(_log(stack))
    assert log is not None
    mine = [w for w in log.waits if w.pid == pid]
    assert len(mine) == 1
    wait_ = mine[0]
    assert wait_.end is not None and wait_.end - wait_.start >= 1.0  # longer than deadlock_timeout
    assert abs(wait_.end - released) < 1.0  # acquired when the holder committed (ms-stamped lines)
    assert log.counts()["statement_timeout"] >= 1


def test_a_log_without_the_utc_prefix_is_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "postgres.log"
    path.write_text("2026-11-30 11:20:01.500 CET [101] ERROR:  deadlock detected\nnoise\n")
    log = read_server_log(path)
    assert log is not None and log.counts()["deadlock"] == 0
    assert read_server_log(tmp_path / "none.log") is None


def test_a_command_target_keeps_what_its_postgres_log_gains_during_the_variant(tmp_path: Path) -> None:
    # target.postgres_log: the lines written while the variant ran reach the variant's folder, where
    # the analysis counts statement timeouts as for the embedded server; older lines stay out.
    from contend.run_targets import _server_log

    log = tmp_path / "server.log"
    log.write_text("2026-12-01 10:00:00.000 UTC [41] ERROR:  canceling statement due to statement timeout\n")
    copy = tmp_path / "variant" / "stack" / "postgres" / "postgres.log"
    with _server_log(str(log), copy), log.open("a") as fh:
        fh.write("2026-12-01 10:00:05.000 UTC [42] ERROR:  canceling statement due to statement timeout\n"
                 "2026-12-01 10:00:06.000 UTC [43] ERROR:  deadlock detected\n")
    parsed = read_server_log(copy)
    assert parsed is not None
    assert [(e.pid, e.kind) for e in parsed.events] == [(42, "statement_timeout"), (43, "deadlock")]


def test_a_missing_postgres_log_is_a_one_line_error(tmp_path: Path) -> None:
    from contend.errors import ConfigError
    from contend.run_targets import _server_log

    with pytest.raises(ConfigError, match=r"cannot read target\.postgres_log"), \
            _server_log(str(tmp_path / "nope.log"), tmp_path / "copy.log"):
        pass
