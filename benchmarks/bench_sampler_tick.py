"""Cost of one Postgres sampler tick with 100 client backends of which 50 wait on a lock.

    python benchmarks/bench_sampler_tick.py [--ticks 300] [--waiters 50] [--backends 100]

An embedded Postgres (max_connections 300) gets one holder of a row idle in its transaction,
``waiters`` UPDATEs queued behind it and idle connections up to ``backends``. The figure is the
median and p95 of ``cost_ms`` (what every tick record reports: the pg_stat_activity read with its
pg_blocking_pids calls, the locked-relations read and building the records), and the same for the
whole ``tick()`` call as seen by the caller, and the sampler process' own CPU time per tick (which
other load on the machine does not inflate). Goal: median <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from contend.sample.pg import PgSampler, connect
from contend.stack.postgres import EmbeddedPostgres

UPDATE = "UPDATE bench_hot SET n = n + 1 WHERE id = 1"


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def show(label: str, values: list[float]) -> None:
    median = statistics.median(values)
    print(f"{label:<18} median {median:6.2f}  p95 {p95(values):6.2f}  max {max(values):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--waiters", type=int, default=50)
    parser.add_argument("--backends", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the figures to this file (make bench)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "pg") as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_hot (id int PRIMARY KEY, n int NOT NULL)")
            conn.execute("INSERT INTO bench_hot VALUES (1, 0)")
        holder = psycopg.connect(pg.dsn)
        holder.execute(UPDATE)
        conns: list[psycopg.Connection[Any]] = []
        threads = []
        for i in range(args.backends - 1):
            conn = psycopg.connect(pg.dsn, autocommit=True)
            conns.append(conn)
            if i < args.waiters:
                threads.append(threading.Thread(target=conn.execute, args=(UPDATE,), daemon=True))
                threads[-1].start()
        sampler = PgSampler(connect(pg.dsn))
        while (tick := sampler.tick()[0])["blocked"] < args.waiters:
            time.sleep(0.1)
        costs, walls, cpus = [], [], []
        for _ in range(args.ticks):
            started, cpu = time.perf_counter(), time.process_time()
            tick, _ = sampler.tick()
            walls.append((time.perf_counter() - started) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
            costs.append(tick["cost_ms"])
            time.sleep(0.01)
        assert tick["backends"] == args.backends and tick["blocked"] == args.waiters, tick
        print(f"{args.backends} client backends, {tick['blocked']} waiting on a lock, edges {tick['edges']}, "
              f"depth {tick['depth']}, {tick['blocking_calls']} pg_blocking_pids calls per tick, "
              f"{args.ticks} ticks, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        show("cost_ms (ms)", costs)
        show("tick() wall (ms)", walls)
        show("sampler CPU (ms)", cpus)
        if args.json:
            args.json.write_text(json.dumps({
                "benchmark": "sampler_tick", "backends": args.backends, "waiters": args.waiters,
                "ticks": args.ticks, "cost_ms_p50": round(statistics.median(costs), 3),
                "cost_ms_p95": round(p95(costs), 3), "cpu_ms_p50": round(statistics.median(cpus), 3),
                "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}, indent=2) + "\n")
        holder.rollback()
        holder.close()
        for thread in threads:
            thread.join(timeout=60)
        for conn in conns:
            conn.close()
        sampler.conn.close()


if __name__ == "__main__":
    main()
