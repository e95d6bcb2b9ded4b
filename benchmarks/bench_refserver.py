"""The reference server's start-up time and the pathology figures of issue 3, per preset.

    python benchmarks/bench_refserver.py                      (both presets, ~2 min)
    python benchmarks/bench_refserver.py --preset pre-1261 --window 30

For each preset: start Postgres + NATS + the reference server (1 web process, 8 workers, 1 job),
fire 10 concurrent POSTs of 50 error results (Antenna's load script, one round, 120 s client
timeout), and poll pg_stat_activity every 20 ms for ``window`` seconds. Printed per preset:
start-up time of the whole stack, the most backends waiting on the job row at one moment (each
with a non-empty pg_blocking_pids), the longest single lock wait seen, the most backends idle in
transaction at one moment and the oldest such transaction, the seconds web sessions spent idle in
their transactions per POST (sampled every 20 ms), and POSTs ok with their p50/p95 latency.
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

import httpx
import psycopg

from contend.stack import RefServerOptions, Stack

TICK = """
    SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' AND query ILIKE '%%jobs_job%%'
                              AND cardinality(pg_blocking_pids(pid)) > 0),
           coalesce(max(extract(epoch FROM clock_timestamp() - query_start))
                    FILTER (WHERE wait_event_type = 'Lock'), 0),
           count(*) FILTER (WHERE state = 'idle in transaction'),
           count(*) FILTER (WHERE state = 'idle in transaction'
                              AND application_name LIKE 'contend-ref:web %%'),
           coalesce(max(extract(epoch FROM clock_timestamp() - xact_start))
                    FILTER (WHERE state = 'idle in transaction'), 0)
      FROM pg_stat_activity WHERE application_name LIKE 'contend-ref:%%'"""
TICK_S = 0.02


def run(preset: str, window: float) -> dict[str, Any]:
    started = time.monotonic()
    options = RefServerOptions(preset=preset, web_concurrency=1, worker_concurrency=8, jobs=1,
                               images_per_job=10)
    with tempfile.TemporaryDirectory() as folder, Stack(Path(folder), refserver=options) as stack:
        startup = time.monotonic() - started
        info = stack.info()["refserver"]
        job = info["job_ids"][0]
        outcomes: list[tuple[int | str, float]] = []

        def post(n: int) -> None:
            body = {"results": [{"reply_subject": f"r1_{n}.r{i}.deadbeef",
                                 "result": {"error": "load-test", "image_id": f"img-r1_{n}-{i}"}}
                                for i in range(50)]}
            t0 = time.monotonic()
            try:
                response = httpx.post(f"{info['url']}/api/v2/jobs/{job}/result/", json=body, timeout=120,
                                      headers={"Authorization": f"Token {info['token']}"})
                outcomes.append((response.status_code, time.monotonic() - t0))
            except httpx.HTTPError as exc:
                outcomes.append((type(exc).__name__, time.monotonic() - t0))

        threads = [threading.Thread(target=post, args=(n,), daemon=True) for n in range(10)]
        for thread in threads:
            thread.start()
        waiters, longest, idle, web_idle_s, oldest = 0, 0.0, 0, 0.0, 0.0
        end = time.monotonic() + window
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            last = time.monotonic()
            while time.monotonic() < end:
                row = conn.execute(TICK).fetchone()
                assert row is not None
                now = time.monotonic()
                waiters, longest, idle = max(waiters, row[0]), max(longest, float(row[1])), max(idle, row[2])
                web_idle_s += row[3] * (now - last)  # web sessions idle in a transaction, this tick
                oldest, last = max(oldest, float(row[4])), now
                time.sleep(TICK_S)
        ok = sorted(t for status, t in outcomes if status == 200)
    return {
        "preset": preset, "startup_s": round(startup, 1), "max_waiters_on_job_row": waiters,
        "longest_lock_wait_s": round(longest, 3), "max_idle_in_tx": idle,
        "oldest_idle_in_tx_s": round(oldest, 2), "web_idle_in_tx_s_per_post": round(web_idle_s / 10, 3),
        "posts_ok_within_window": f"{len(ok)}/10",
        "post_p50_s": round(statistics.median(ok), 2) if ok else None,
        "post_p95_s": round(ok[min(len(ok) - 1, int(0.95 * len(ok)))], 2) if ok else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append",
                        help="preset(s) to run (default: pre-1261 and pr-1261-logs-off)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of observation per preset")
    parser.add_argument("--json", type=Path, help="also write the figures to this file (make bench)")
    args = parser.parse_args()
    results = []
    for preset in args.preset or ["pre-1261", "pr-1261-logs-off"]:
        results.append(run(preset, args.window))
        print(results[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "refserver", "window_s": args.window, "presets": results,
            "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
