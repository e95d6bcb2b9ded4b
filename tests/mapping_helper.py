"""An application that names nothing: ``python mapping_helper.py DRIVER INFO`` (DRIVER psycopg or psycopg2).

No connection sets application_name. Thread "row-first" updates row 1 of ``wg_rows``, then takes
LOCK; thread "lock-first" takes LOCK, then updates row 1: a cycle through a Python lock and a row
lock, which contend must find from the sockets and transactions it sees. The DSN comes from
``SAMPLE_DSN``. When both threads wait, INFO (a path) gets a JSON object: pid, and per thread name
its native thread id and backend pid.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

DSN = os.environ["SAMPLE_DSN"]
DRIVER = sys.argv[1]
LOCK = threading.Lock()
info: dict[str, Any] = {"pid": os.getpid(), "threads": {}}


def connect() -> Any:
    if DRIVER == "psycopg2":
        import psycopg2

        conn = psycopg2.connect(DSN)
        backend = conn.get_backend_pid()
    else:
        import psycopg

        conn = psycopg.connect(DSN)
        backend = conn.info.backend_pid
    info["threads"][threading.current_thread().name] = {"tid": threading.get_native_id(),
                                                        "backend_pid": backend}
    return conn


def update_row(conn: Any, row: int) -> None:
    conn.cursor().execute("UPDATE wg_rows SET n = n + 1 WHERE id = %s", (row,))


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


def lock_waiters() -> int:
    conn = connect_plain()
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


def connect_plain() -> Any:
    import psycopg

    return psycopg.connect(DSN, autocommit=True)


def main(info_path: str) -> None:
    row_held, lock_held = threading.Event(), threading.Event()
    for name, target in (("row-first", row_first), ("lock-first", lock_first)):
        threading.Thread(target=target, args=(row_held, lock_held), name=name, daemon=True).start()
    deadline = time.monotonic() + 30
    while not (LOCK.locked() and lock_waiters() >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(info_path + ".tmp", info_path)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[2])
