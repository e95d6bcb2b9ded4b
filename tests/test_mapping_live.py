"""Backends mapped to threads in an application that sets no application_name: real threads, a real
Postgres, real py-spy, ``contend watch`` in a process of its own.

The applications are ``tests/mapping_helper.py`` (two threads, psycopg 3 or psycopg2) and
``tests/mapping_django.py`` (a threaded Django server whose requests log inside ``atomic``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from contend.errors import ExitCode
from contend.stack import Stack
from contend.stack.process import free_port
from tests.conftest import CONTEND, end_sessions, helper_processes, wait_for

HELPER = Path(__file__).with_name("mapping_helper.py")


@pytest.fixture(scope="module")
def map_dsn(stack: Stack) -> str:
    """A database of its own: the helpers' backends must not show in other tests' counts."""
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE mapping_tests")
    return stack.dsn.rsplit("/", 1)[0] + "/mapping_tests"


@pytest.fixture()
def app(map_dsn: str, tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Start the helper with a driver; return its info (pid, threads); always killed."""
    with helper_processes(map_dsn, HELPER, tmp_path) as start:
        yield start


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

        started = time.monotonic()
        try:
            result = wait_for(look, timeout=timeout, interval=0)
            print(f"contend watch found it after {time.monotonic() - started:.1f} s")  # a figure, not a check
        except pytest.fail.Exception:
            print(json.dumps(seen[-1:], indent=1))  # what contend watch said last
            raise
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


SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
PYTHON_KINDS = ("cross_layer_deadlock", "python_lock_convoy", "idle_in_tx_waiting_on_app")


def kinds_and_functions(findings: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Return finding kind -> the functions of the threads its findings name, a backend's candidate
    threads included (Python kinds only)."""
    out: dict[str, set[str]] = {}
    for found in findings:
        if found["kind"] in PYTHON_KINDS:
            threads = [*(found.get("threads") or ()),
                       *(t for c in found.get("candidates") or () for t in c["candidates"])]
            out.setdefault(found["kind"], set()).update(
                str(t["function"]) for t in threads if t.get("function"))
    return out


@pytest.mark.slow
def test_log_persist_logs_on_gives_the_same_findings_without_application_name(tmp_path: Path) -> None:
    data = yaml.safe_load((SCENARIOS / "log-persist.yaml").read_text())
    data.update(warm_up_s=1, cool_down_s=1, thresholds=[])
    data["variants"] = [
        {"name": "named", "baseline": True, "flags": {"JOB_LOG_PERSIST_ENABLED": True}},
        {"name": "unnamed", "flags": {"JOB_LOG_PERSIST_ENABLED": True, "APPLICATION_NAME": "off"}},
    ]
    scenario = tmp_path / "log-persist-unnamed.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    out = subprocess.run([*CONTEND, "run", str(scenario), "--reports", str(tmp_path / "reports"), "--json"],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode in (ExitCode.OK, ExitCode.THRESHOLDS_FAILED), out.stderr
    variants = json.loads(out.stdout)["summary"]["variants"]
    named, unnamed = variants["named"], variants["unnamed"]
    assert named["mapping"]["application_name"] > 0
    assert unnamed["mapping"]["application_name"] == 0
    assert unnamed["mapping"]["socket"] + unnamed["mapping"]["elimination"] > 0
    found = kinds_and_functions(unnamed["findings"])
    assert "cross_layer_deadlock" in found
    assert found == kinds_and_functions(named["findings"])


DJANGO_APP = Path(__file__).with_name("mapping_django.py")


@pytest.mark.slow
def test_watch_finds_a_convoy_behind_a_logging_handler_in_a_threaded_django_server(
        map_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(map_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wg_rows (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO wg_rows SELECT g, 0 FROM generate_series(1, 20) g ON CONFLICT DO NOTHING")
    port = free_port()
    server = subprocess.Popen([sys.executable, str(DJANGO_APP), str(port)], stderr=subprocess.DEVNULL,
                              env={"SAMPLE_DSN": map_dsn, "PATH": "/usr/bin:/bin"})
    row_holder = psycopg.connect(map_dsn)
    posters: list[threading.Thread] = []
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/ping/") == "pong", timeout=60)
        row_holder.execute("UPDATE wg_rows SET n = n + 1 WHERE id = 1")  # the job row, held
        for row in range(10, 15):
            posters.append(threading.Thread(target=_post, args=(f"http://127.0.0.1:{port}/save/{row}/",),
                                            daemon=True))
            posters[-1].start()

        def convoy(line: dict[str, Any]) -> dict[str, Any] | None:
            return next((f for f in line["findings"]
                         if f["kind"] == "python_lock_convoy" and f["waiters"] == 4), None)

        found, seen = watch_until(map_dsn, server.pid, convoy)
        with psycopg.connect(map_dsn, autocommit=True) as conn:
            waiting = conn.execute("SELECT pid, application_name FROM pg_stat_activity"
                                   " WHERE %s = ANY(pg_blocking_pids(pid))",
                                   (row_holder.info.backend_pid,)).fetchall()
    finally:
        server.kill()
        server.wait(timeout=10)
        row_holder.close()
        end_sessions(map_dsn)
    # the holder: the request thread in the handler's emit(), waiting on the job row, found by its socket
    ((holder_backend, app_name),) = waiting
    assert app_name == ""
    holder = found["holder"]
    assert holder["function"] == "JobLogHandler.emit" and holder["backend_pid"] == holder_backend
    assert holder["mapped_by"] == "socket" and holder["pid"] == server.pid
    # four request threads with open transactions queue on its lock: their backends are idle in
    # transaction, each one of the four threads (elimination leaves them all as candidates)
    waiters = [t for t in found["threads"] if t["tid"] != holder["tid"]]
    assert len(waiters) == 4 and {t["function"] for t in waiters} == {"save"}
    assert found["proof"] == "proven"
    assert seen[-1]["mapping"]["socket"] >= 1


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _post(url: str) -> None:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=120).close()
