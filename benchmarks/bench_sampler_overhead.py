"""Throughput of the reference server under load with every sampler on (Postgres at 10 Hz) vs off.

    python benchmarks/bench_sampler_overhead.py [--segment-s 10] [--pairs 2] [--warm-up-s 10]
                    [--preset pr-1261-logs-off] [--concurrency 4] [--batch 10] [--pg-only]

One stack (embedded Postgres, NATS, the reference server) takes a closed-loop batched-POST load:
a warm-up segment that is not counted (the first seconds of a fresh server are much faster), then
segments ordered off, on, on, off (ABBA, repeated ``--pairs`` times), so a slow drift of the
server (table growth, caches) weighs on both sides alike. "on" runs the samplers as ``contend
run`` does: ``SamplerSet`` with Postgres at 10 Hz, py-spy dumps of every web and worker process
every 2 s and NATS at 1 Hz (``--pg-only``: the Postgres sampler alone). The figure is
results/s with the samplers on divided by results/s with them off, over the whole run. Goal:
>= 0.97.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from contend.load import BatchedPost, LoadTarget, run_load
from contend.sample.runner import SamplerConfig, SamplerSet
from contend.stack import Stack
from contend.stack.refserver import RefServerOptions

TOKEN_ENV = "CONTEND_BENCH_TOKEN"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segment-s", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--warm-up-s", type=float, default=10.0)
    parser.add_argument("--preset", default="pr-1261-logs-off")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--pg-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        options = RefServerOptions(preset=args.preset, jobs=1, images_per_job=2000)
        with Stack(run_dir / "stack", refserver=options) as stack:
            info = stack.info()
            ref = info["refserver"]
            os.environ[TOKEN_ENV] = ref["token"]
            target = LoadTarget(base_url=ref["url"], token_env=TOKEN_ENV, job_ids=ref["job_ids"],
                                pipeline_slug=ref["pipeline_slug"], image_ids=ref.get("image_ids") or {})
            config = SamplerConfig(
                dsn=stack.dsn, pg_interval_s=0.1,
                pyspy_pids={} if args.pg_only else {"web": ref["pids"]["web"],
                                                    "worker": ref["pids"]["workers"]},
                nats_monitor_url=None if args.pg_only else info["nats"]["monitor_url"],
            )
            workload = BatchedPost(batch=args.batch, concurrency=args.concurrency, duration_s=args.segment_s)
            totals = {"off": [0, 0.0], "on": [0, 0.0]}
            ticks = 0
            warm_up = BatchedPost(batch=args.batch, concurrency=args.concurrency, duration_s=args.warm_up_s)
            run_load([warm_up], target, run_dir / "warm-up")
            for n, mode in enumerate(["off", "on", "on", "off"] * args.pairs):
                segment = run_dir / f"segment-{n}-{mode}"
                if mode == "on":
                    with SamplerSet(config, segment):
                        summary = run_load([workload], target, segment / "load")
                    ticks += len((segment / "samples" / "pg_ticks.jsonl").read_text().splitlines())
                else:
                    summary = run_load([workload], target, segment / "load")
                rate = summary.results_posted / summary.elapsed_s if summary.elapsed_s else 0.0
                print(f"segment {n} sampler {mode:<3}: {summary.results_posted} results in "
                      f"{summary.elapsed_s:.1f} s = {rate:.1f}/s, {summary.requests_failed} failed requests")
                totals[mode][0] += summary.results_posted
                totals[mode][1] += summary.elapsed_s
    off = totals["off"][0] / totals["off"][1]
    on = totals["on"][0] / totals["on"][1]
    print(f"preset {args.preset}, batch {args.batch} x concurrency {args.concurrency}, "
          f"{'Postgres sampler only' if args.pg_only else 'all samplers'}, {ticks} Postgres ticks recorded")
    print(f"results/s off {off:.1f}, on {on:.1f}: ratio on/off = {on / off:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
