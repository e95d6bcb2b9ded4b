"""Cost of one socket_waits call on a process of 50 threads, 20 of them waiting for a row lock.

    python benchmarks/bench_sockets.py [--calls 200] [--threads 50] [--waiters 20]

An embedded Postgres listening on 127.0.0.1 and on a Unix socket directory; one connection holds a
row in its transaction. In this process, ``waiters`` threads wait for that row in ``SELECT ... FOR
UPDATE`` (psycopg 3's default wait, ``poll``) and the rest of ``threads`` wait on a
``threading.Event`` (a futex). The figure is the median and p95 of one ``socket_waits([pid])``
call plus ``backends_by_socket`` over the backends, wall time and this process' CPU time, once with
the waiters on TCP and twice on the Unix socket (their peers looked for among the processes named
postgres, then among the backends only, as a caller that passes ``servers`` does), and how many
of the waiters each call mapped (psycopg 3 leaves its ``poll`` every 100 ms, so a call now and then
finds a waiter between two).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contend.sample.sockets import backends_by_socket, socket_waits
from contend.stack import postgres

LOCK = "SELECT id FROM bench_rows WHERE id = 1 FOR UPDATE"
BACKENDS = ("SELECT pid, host(client_addr) AS client_addr, client_port, wait_event_type "
            "FROM pg_stat_activity WHERE backend_type = 'client backend'")


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


@contextlib.contextmanager
def server() -> Iterator[tuple[str, str]]:
    """An embedded Postgres; yields its TCP and its Unix-socket DSN."""
    sockets = Path(tempfile.mkdtemp(prefix="contend-bench-sock-"))
    sockets.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(sockets, postgres.UNPRIVILEGED_USER)
    postgres.SERVER_SETTINGS["unix_socket_directories"] = str(sockets)
    try:
        with tempfile.TemporaryDirectory() as tmp, postgres.EmbeddedPostgres(Path(tmp) / "pg") as pg:
            yield pg.dsn, f"postgresql://postgres@/{pg.database}?host={sockets}&port={pg.port}"
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def measure(dsn: str, admin: psycopg.Connection[Any], calls: int, waiters: int, others: int,
            given_servers: bool = False) -> dict[str, float]:
    """Time ``calls`` calls with ``waiters`` threads waiting for the row over ``dsn``; with
    ``given_servers``, Unix peers are looked for among the backends only."""
    holder = psycopg.connect(dsn)
    holder.execute(LOCK)
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(waiters)]
    released = threading.Event()
    threads = [threading.Thread(target=c.execute, args=(LOCK,), daemon=True) for c in conns]
    threads += [threading.Thread(target=released.wait, daemon=True) for _ in range(others)]
    for thread in threads:
        thread.start()
    pids = {c.info.backend_pid for c in conns}
    while len(pids & {b["pid"] for b in admin.execute(BACKENDS) if b["wait_event_type"] == "Lock"}) < waiters:
        time.sleep(0.05)
    backends = admin.execute(BACKENDS).fetchall()
    tasks = len(os.listdir("/proc/self/task"))
    servers = [b["pid"] for b in backends] if given_servers else None
    walls, cpus, seen = [], [], []
    for _ in range(calls):
        started, cpu = time.perf_counter(), time.process_time()
        waits, problems = socket_waits([os.getpid()], servers=servers)
        mapped = backends_by_socket(waits, backends)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
        assert not problems, problems
        # psycopg 3 leaves its poll every 100 ms (to see Ctrl-C): a waiter is now and then between two.
        seen.append(len(pids & set(mapped)))
    holder.rollback()
    holder.close()
    released.set()
    for thread in threads:
        thread.join(60)
    for conn in conns:
        conn.close()
    return {"threads": tasks, "wall_ms_p50": round(statistics.median(walls), 3),
            "wall_ms_p95": round(p95(walls), 3), "mapped_min": min(seen),
            "mapped_mean": round(statistics.mean(seen), 2), "cpu_ms_p50": round(statistics.median(cpus), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--waiters", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    results: dict[str, Any] = {"benchmark": "sockets", "threads": args.threads, "waiters": args.waiters,
                               "calls": args.calls}
    with server() as (tcp_dsn, unix_dsn), \
            psycopg.connect(tcp_dsn, autocommit=True, row_factory=dict_row) as admin:
        admin.execute("CREATE TABLE bench_rows (id int PRIMARY KEY)")
        admin.execute("INSERT INTO bench_rows VALUES (1)")
        # The waiters and the other threads, plus this one: ``threads`` in all.
        others = args.threads - args.waiters - 1
        for name, dsn, given in (("tcp", tcp_dsn, False), ("unix", unix_dsn, False),
                                 ("unix_servers_given", unix_dsn, True)):
            results[name] = figures = measure(dsn, admin, args.calls, args.waiters, others, given)
            print(f"{name:<18} {figures['threads']:g} threads, {args.waiters} waiting on Postgres:"
                  f" socket_waits + backends_by_socket median {figures['wall_ms_p50']:.2f} ms,"
                  f" p95 {figures['wall_ms_p95']:.2f} ms, CPU {figures['cpu_ms_p50']:.2f} ms per call;"
                  f" waiters mapped per call: mean {figures['mapped_mean']:g}, min {figures['mapped_min']}")
    results.update(cpus=os.cpu_count(), load_average=round(os.getloadavg()[0], 2))
    print(f"{args.calls} calls each, load average {results['load_average']:.1f} on {results['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
