"""Backends mapped to threads in an application that sets no application_name: real threads, a real
Postgres, real py-spy, ``contend watch`` in a process of its own.

The applications are ``tests/mapping_helper.py`` (two threads, psycopg 3 or psycopg2) and
``tests/mapping_django.py`` (a threaded Django server whose requests log inside ``atomic``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contend.stack import Stack
from tests.conftest import CONTEND, wait_for

HELPER = Path(__file__).with_name("mapping_helper.py")


@pytest.fixture(scope="module")
def map_dsn(stack: Stack) -> str:
    """A database of its own: the helpers' backends must not show in other tests' counts."""
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE mapping_tests")
    return stack.dsn.rsplit("/", 1)[0] + "/mapping_tests"


def end_sessions(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture()
def app(map_dsn: str, tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Start the helper with a driver; return its info (pid, threads); always killed."""
    with psycopg.connect(map_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wg_rows (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO wg_rows SELECT g, 0 FROM generate_series(1, 20) g ON CONFLICT DO NOTHING")
    procs: list[subprocess.Popen[bytes]] = []

    def start(driver: str) -> dict[str, Any]:
        info_path = tmp_path / f"info-{driver}.json"
        procs.append(subprocess.Popen([sys.executable, str(HELPER), driver, str(info_path)],
                                      env={"SAMPLE_DSN": map_dsn, "PATH": "/usr/bin:/bin"}))
        wait_for(info_path.exists, timeout=60)
        return dict(json.loads(info_path.read_text()))

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)
    end_sessions(map_dsn)


def application_names(dsn: str, pids: list[int]) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        return {str(r[0]) for r in rows}


def watch_until(dsn: str, pid: int, found: Callable[[dict[str, Any]], object],
                timeout: float = 60.0) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``contend watch --json --pyspy-pid pid`` until ``found`` returns something for a line."""
    env = {**os.environ, "CONTEND_DSN": dsn}
    proc = subprocess.Popen([*CONTEND, "watch", "--json", "--interval", "0.3", "--pyspy-pid", str(pid)],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None

        def look() -> object:
            line = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            seen.append(line)
            return found(line)

        result = wait_for(look, timeout=timeout, interval=0)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return result, seen


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_watch_names_a_deadlock_of_an_application_that_sets_no_application_name(
        app: Callable[[str], dict[str, Any]], map_dsn: str, driver: str) -> None:
    info = app(driver)
    row_first, lock_first = info["threads"]["row-first"], info["threads"]["lock-first"]
    backends = [row_first["backend_pid"], lock_first["backend_pid"]]
    assert application_names(map_dsn, backends) == {""}

    def deadlock(line: dict[str, Any]) -> dict[str, Any] | None:
        return next((f for f in line["findings"] if f["kind"] == "cross_layer_deadlock"), None)

    found, seen = watch_until(map_dsn, info["pid"], deadlock)
    threads = {t["tid"]: t for t in found["threads"]}
    assert threads[row_first["tid"]]["function"] == "row_first"
    assert threads[row_first["tid"]]["backend_pid"] == row_first["backend_pid"]
    assert threads[lock_first["tid"]]["function"] == "update_row"
    assert threads[lock_first["tid"]]["backend_pid"] == lock_first["backend_pid"]
    # lock-first waits on its socket; row-first, idle in transaction, is the one thread left
    assert threads[lock_first["tid"]]["mapped_by"] == "socket"
    assert threads[row_first["tid"]]["mapped_by"] == "elimination"
    assert found["proof"] == "proven" and found["candidates"] == []
    mapping = seen[-1]["mapping"]
    assert mapping["text"] == ("2 backends of the dumped processes: 0 by application_name, 1 by socket, "
                               "1 by elimination, 0 not mapped")
