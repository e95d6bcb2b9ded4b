"""Throughput of the reference server under load with every sampler on (Postgres at 10 Hz) vs off.

    python benchmarks/bench_sampler_overhead.py [--window-s 8] [--pairs 4] [--warm-up-s 10]
                    [--preset pr-1261-logs-off] [--concurrency 4] [--batch 10] [--pg-only]

One stack (embedded Postgres, NATS, the reference server) takes one continuous closed-loop
batched-POST load. After a warm-up that is not counted (a fresh server is faster in its first
seconds), the samplers are switched on and off in windows ordered off, on, on, off (ABBA,
``--pairs`` times), so a slow drift of the server weighs on both sides alike. "on" runs the
samplers as ``contend run`` does: ``SamplerSet`` with Postgres at 10 Hz, py-spy dumps of every web
and worker process every 2 s and NATS at 1 Hz (``--pg-only``: the Postgres sampler alone). A
window counts the result entries of the 2xx POSTs that ended inside it; the samplers' start and
stop fall between windows. The figure: results/s with the samplers on divided by results/s
with them off, over the whole run. Goal: >= 0.97.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from contend.load import BatchedPost, LoadTarget, read_records, run_load
from contend.sample.runner import SamplerConfig, SamplerSet
from contend.stack import Stack
from contend.stack.refserver import RefServerOptions

TOKEN_ENV = "CONTEND_BENCH_TOKEN"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=8.0)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--warm-up-s", type=float, default=10.0)
    parser.add_argument("--preset", default="pr-1261-logs-off")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--pg-only", action="store_true")
    args = parser.parse_args()
    modes = ["off", "on", "on", "off"] * args.pairs
    windows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        options = RefServerOptions(preset=args.preset, jobs=1, images_per_job=2000)
        with Stack(run_dir / "stack", refserver=options) as stack:
            info = stack.info()
            ref = info["refserver"]
            os.environ[TOKEN_ENV] = ref["token"]
            target = LoadTarget(base_url=ref["url"], token_env=TOKEN_ENV, job_ids=ref["job_ids"],
                                pipeline_slug=ref["pipeline_slug"], image_ids=ref.get("image_ids") or {})
            pyspy = {"web": ref["pids"]["web"], "worker": ref["pids"]["workers"]}
            config = SamplerConfig(
                dsn=stack.dsn, pg_interval_s=0.1, pyspy_pids={} if args.pg_only else pyspy,
                nats_monitor_url=None if args.pg_only else info["nats"]["monitor_url"],
            )
            # Long enough for every window plus the samplers' start and stop between them.
            duration = args.warm_up_s + len(modes) * (args.window_s + 3.0) + 30.0
            workload = BatchedPost(batch=args.batch, concurrency=args.concurrency, duration_s=duration)
            stop = threading.Event()
            load = threading.Thread(target=run_load, args=([workload], target, run_dir / "load"),
                                    kwargs={"stop": stop})
            load.start()
            try:
                while not list((run_dir / "load").glob("requests-*.jsonl")):
                    time.sleep(0.2)
                time.sleep(args.warm_up_s)
                ticks = 0
                for n, mode in enumerate(modes):
                    if mode == "on":
                        with SamplerSet(config, run_dir / f"window-{n}"):
                            start = time.time()
                            time.sleep(args.window_s)
                            end = time.time()
                        tick_file = run_dir / f"window-{n}" / "samples" / "pg_ticks.jsonl"
                        ticks += len(tick_file.read_text().splitlines())
                    else:
                        start = time.time()
                        time.sleep(args.window_s)
                        end = time.time()
                    windows.append((mode, start, end))
            finally:
                stop.set()
                load.join()
        records = [r for r in read_records(run_dir / "load")
                   if r["kind"] == "result" and 200 <= r["status"] < 300]
    totals = {"off": [0, 0.0], "on": [0, 0.0]}
    for n, (mode, start, end) in enumerate(windows):
        results = sum(r["results"] for r in records if start <= r["t1"] < end)
        print(f"window {n:2d} samplers {mode:<3}: {results / (end - start):6.1f} results/s")
        totals[mode][0] += results
        totals[mode][1] += end - start
    off, on = (totals[m][0] / totals[m][1] for m in ("off", "on"))
    blocks = []  # the ratio within each off-on-on-off block shows how noisy the machine was
    for b in range(0, len(windows), 4):
        rate = {"off": [0, 0.0], "on": [0, 0.0]}
        for mode, start, end in windows[b:b + 4]:
            rate[mode][0] += sum(r["results"] for r in records if start <= r["t1"] < end)
            rate[mode][1] += end - start
        if rate["off"][0]:
            blocks.append((rate["on"][0] / rate["on"][1]) / (rate["off"][0] / rate["off"][1]))
    print("ratio per ABBA block: " + ", ".join(f"{x:.3f}" for x in blocks))
    print(f"preset {args.preset}, batch {args.batch} x concurrency {args.concurrency}, "
          f"{'Postgres sampler only' if args.pg_only else 'all samplers'}, "
          f"{ticks} Postgres ticks in the on windows, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"results/s off {off:.1f}, on {on:.1f}: ratio on/off = {on / off:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
