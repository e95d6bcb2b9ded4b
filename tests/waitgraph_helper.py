"""A small threaded server stand-in for the wait-for graph tests: ``python waitgraph_helper.py MODE INFO``.

Each connection names its thread in the reference server's ``application_name`` format, as a
threaded server does. Modes (the DSN comes from ``SAMPLE_DSN``; table ``wg_rows`` has rows 1..20):

deadlock  thread "row-first" updates row 1, then takes LOCK; thread "lock-first" takes LOCK, then
          updates row 1. Neither can go on: a cycle through a Python lock and a row lock.
convoy    the main thread holds row 1; thread "emitter" logs inside its transaction, and the job log
          handler's emit() updates row 1 (it waits on Postgres while holding the handler's lock);
          four "poster" threads with open transactions then log too and queue on that lock.
rows      thread "holder" updates row 1 and runs pg_sleep; three "waiter" threads update row 1 and
          queue in Postgres. No Python waits.

When every thread is in place, INFO (a path) gets a JSON object: pid, and per thread name its
native thread id and backend pid. ``HELPER_DELAY_S`` waits that long before starting.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import psycopg

DSN = os.environ["SAMPLE_DSN"]
LOCK = threading.Lock()
local = threading.local()
info: dict[str, object] = {"pid": os.getpid(), "threads": {}}
ready = threading.Event()


def connect(autocommit: bool = False) -> psycopg.Connection:
    app = f"contend-ref:web pid={os.getpid()} tid={threading.get_ident()} ntid={threading.get_native_id()}"
    conn = psycopg.connect(DSN, autocommit=autocommit, application_name=app)
    info["threads"][threading.current_thread().name] = {  # type: ignore[index]
        "tid": threading.get_native_id(), "backend_pid": conn.info.backend_pid,
    }
    return conn


def update_row(conn: psycopg.Connection, row: int) -> None:
    conn.execute("UPDATE wg_rows SET n = n + 1 WHERE id = %s", (row,))


# --- deadlock ---


def row_first(row_held: threading.Event, lock_held: threading.Event) -> None:
    conn = connect()
    update_row(conn, 1)
    row_held.set()
    lock_held.wait()
    with LOCK:  # waits: lock_first holds LOCK
        update_row(conn, 2)


def lock_first(row_held: threading.Event, lock_held: threading.Event) -> None:
    conn = connect()
    row_held.wait()
    with LOCK:
        lock_held.set()
        update_row(conn, 1)  # waits: row_first holds row 1


# --- convoy ---


class JobLogHandler(logging.Handler):
    """Writes each log line to the job row inside the caller's transaction, as Antenna's job logger does."""

    def emit(self, record: logging.LogRecord) -> None:
        update_row(local.conn, 1)


log = logging.getLogger("wg.jobs")
log.propagate = False
log.addHandler(JobLogHandler())
log.setLevel(logging.INFO)


def save_results(row: int) -> None:
    local.conn = connect()
    update_row(local.conn, row)  # the request's transaction is now open
    log.info("saved results of row %s", row)
    local.conn.commit()


# --- rows ---


def hold_row() -> None:
    conn = connect()
    update_row(conn, 1)
    conn.execute("SELECT pg_sleep(600)")


def wait_for_row() -> None:
    update_row(connect(), 1)


def start(name: str, target: object, *args: object) -> None:
    threading.Thread(target=target, args=args, name=name, daemon=True).start()  # type: ignore[arg-type]


def until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def waiting_on_locks(n: int) -> bool:
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0] >= n)


def main(mode: str, info_path: str) -> None:
    time.sleep(float(os.environ.get("HELPER_DELAY_S") or 0))  # a run's load may begin first
    threads = info["threads"]
    assert isinstance(threads, dict)
    if mode == "deadlock":
        row_held, lock_held = threading.Event(), threading.Event()
        start("row-first", row_first, row_held, lock_held)
        start("lock-first", lock_first, row_held, lock_held)
        until(lambda: waiting_on_locks(1) and LOCK.locked())
    elif mode == "convoy":
        holder = connect()
        update_row(holder, 1)
        start("emitter", save_results, 2)
        until(lambda: waiting_on_locks(1))
        for i in range(4):
            start(f"poster-{i}", save_results, 10 + i)
        until(lambda: len(threads) == 6)
    elif mode == "rows":
        start("holder", hold_row)
        until(lambda: "holder" in threads)
        for i in range(3):
            start(f"waiter-{i}", wait_for_row)
        until(lambda: waiting_on_locks(3))
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(info_path + ".tmp", info_path)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
