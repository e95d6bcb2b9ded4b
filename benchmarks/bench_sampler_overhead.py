"""What every sampler costs the server under test: CPU seconds, and throughput with them on vs off.

    python benchmarks/bench_sampler_overhead.py [--blocks 12] [--window-s 5] [--warm-up-s 10]
                    [--preset pr-1261-logs-off] [--concurrency 4] [--batch 10] [--pg-only]
                    [--pg-interval-s 0.1] [--json FILE]

One stack (embedded Postgres, NATS, the reference server) takes one continuous closed-loop
batched-POST load (``--preset pr-1261`` with ``--batch 50 --concurrency 10`` gives the log-persist
load). The samplers run as ``contend run`` starts them (``SamplerSet``, default settings: every
sampler on; ``--pg-only``: the Postgres sampler alone), started once after a warm-up that is not
counted. Between windows they are paused (SIGSTOP) and resumed (SIGCONT): their start-up is not
inside any window, so windows can be short and many. Windows go off, on, on, off (ABBA) in
``--blocks`` blocks, so a slow drift of the server weighs on both sides alike.

Two figures, each over the same windows:
- CPU: the observer's CPU seconds (the sampler process, the py-spy dumps it reaped, its Postgres
  backend) divided by the server's (reference server processes, Postgres without the sampler's
  backend, NATS), over the "on" windows. Goal: <= 3 %. The py-spy budget and baseline run on the
  wall clock, so pausing inflates them (a paused sampler's bucket refills): the figure that counts
  is the steady one, over ``--steady-s`` seconds of samplers left on after the blocks (after 10 s
  to settle).
- Throughput: results/s of the 2xx POSTs inside the "on" windows of a block (each POST's results
  counted pro rata to the share of its time inside the window) divided by those of its "off"
  windows; the mean over blocks with its 95 % interval (t distribution).
  Goal: the interval contains a value >= 0.97.
Each figure is printed with the machine's core count and load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from contend.load import BatchedPost, LoadTarget, read_records, run_load
from contend.sample.cost import process_cpu, tree_cpu
from contend.sample.pg import APPLICATION_NAME
from contend.sample.runner import SamplerConfig, SamplerSet
from contend.stack import Stack
from contend.stack.refserver import RefServerOptions

TOKEN_ENV = "CONTEND_BENCH_TOKEN"

# Two-sided 95 % quantiles of Student's t by degrees of freedom (1.96 beyond the table).
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
        12: 2.18, 15: 2.13, 20: 2.09, 25: 2.06, 30: 2.04, 40: 2.02, 60: 2.00, 120: 1.98}


def t95(df: int) -> float:
    """Return the 97.5 % quantile of Student's t with ``df`` degrees of freedom (next table entry down)."""
    return _T95[max(k for k in _T95 if k <= df)] if df < 120 else 1.96


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Return the mean and the half-width of its 95 % interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.inf
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}


class Observer:
    """The CPU seconds of the sampler process (with its reaped and live children) and of its backend."""

    def __init__(self, samplers: SamplerSet, dsn: str) -> None:
        assert samplers.process is not None and samplers.process.proc is not None
        self.pid = samplers.process.proc.pid
        self.dsn = dsn
        self.backend: int | None = None

    def find_backend(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                               (APPLICATION_NAME,)).fetchone()
        self.backend = int(row[0]) if row else None

    def parts(self) -> dict[str, float]:
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        own = psutil.Process(self.pid).cpu_times()
        return {
            "sampler": own.user + own.system,
            "py-spy": own.children_user + own.children_system + sum(process_cpu(c.pid) for c in children),
            "backend": process_cpu(self.backend) if self.backend else 0.0,
        }

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12, help="off-on-on-off blocks")
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--warm-up-s", type=float, default=10.0)
    parser.add_argument("--preset", default="pr-1261-logs-off")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--pg-only", action="store_true")
    parser.add_argument("--pg-interval-s", type=float, default=0.1)
    parser.add_argument("--steady-s", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    modes = ["off", "on", "on", "off"] * args.blocks
    windows: list[dict[str, Any]] = []
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
                dsn=stack.dsn, pg_interval_s=args.pg_interval_s, pyspy_pids={} if args.pg_only else pyspy,
                nats_monitor_url=None if args.pg_only else info["nats"]["monitor_url"],
            )
            server = [pid for pids in ref["pids"].values() for pid in pids]
            server += [p.process.pid for p in (stack.postgres, stack.nats) if p and p.process]
            duration = args.warm_up_s + len(modes) * (args.window_s + 0.5) + args.steady_s + 70.0
            workload = BatchedPost(batch=args.batch, concurrency=args.concurrency, duration_s=duration)
            stop = threading.Event()
            load = threading.Thread(target=run_load, args=([workload], target, run_dir / "load"),
                                    kwargs={"stop": stop})
            load.start()
            try:
                while not list((run_dir / "load").glob("requests-*.jsonl")):
                    time.sleep(0.2)
                with SamplerSet(config, run_dir / "samplers") as samplers:
                    observer = Observer(samplers, stack.dsn)
                    observer.find_backend()
                    start_up = sum(observer.parts().values())
                    observer.pause()
                    time.sleep(args.warm_up_s)
                    for mode in modes:
                        if mode == "on":
                            observer.resume()
                        obs0 = observer.parts()
                        srv0 = tree_cpu(server, exclude=[observer.backend] if observer.backend else [])
                        start = time.time()
                        time.sleep(args.window_s)
                        end = time.time()
                        obs1 = observer.parts()
                        srv1 = tree_cpu(server, exclude=[observer.backend] if observer.backend else [])
                        if mode == "on":
                            observer.pause()
                        windows.append({"mode": mode, "start": start, "end": end, "server_cpu": srv1 - srv0,
                                        **{k: obs1[k] - obs0[k] for k in obs0}})
                    observer.resume()
                    time.sleep(10.0)
                    obs0, srv0 = observer.parts(), tree_cpu(server, exclude=[observer.backend or 0])
                    time.sleep(args.steady_s)
                    obs1, srv1 = observer.parts(), tree_cpu(server, exclude=[observer.backend or 0])
                    steady = {"server_cpu": srv1 - srv0, **{k: obs1[k] - obs0[k] for k in obs0}}
                ticks = len((run_dir / "samplers" / "samples" / "pg_ticks.jsonl").read_text().splitlines())
                dumps = len((run_dir / "samplers" / "samples" / "pyspy.jsonl").read_text().splitlines())
            finally:
                stop.set()
                load.join()
        records = [r for r in read_records(run_dir / "load")
                   if r["kind"] == "result" and 200 <= r["status"] < 300]
    for w in windows:
        w["results"] = sum(r["results"] * overlap(r, w) for r in records)
    figures = summarize(windows, args, ticks=ticks, dumps=dumps, start_up=start_up, steady=steady)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def overlap(record: dict[str, Any], window: dict[str, Any]) -> float:
    """The share of a POST's time that falls inside ``window``: its results are counted pro rata,
    so a window's count does not jump by a whole batch as a POST ends just before or after its edge."""
    t0, t1 = record["t0"], record["t1"]
    if t1 <= t0:
        return 1.0 if window["start"] <= t1 < window["end"] else 0.0
    return max(0.0, min(t1, window["end"]) - max(t0, window["start"])) / (t1 - t0)


def summarize(windows: list[dict[str, Any]], args: argparse.Namespace, *, ticks: int, dumps: int,
              start_up: float, steady: dict[str, float]) -> dict[str, Any]:
    ratios = []
    for b in range(0, len(windows), 4):
        rate = {}
        for mode in ("off", "on"):
            block = [w for w in windows[b:b + 4] if w["mode"] == mode]
            rate[mode] = sum(w["results"] for w in block) / sum(w["end"] - w["start"] for w in block)
        if rate["off"] > 0:
            ratios.append(rate["on"] / rate["off"])
    on = [w for w in windows if w["mode"] == "on"]
    off = [w for w in windows if w["mode"] == "off"]
    parts = {k: sum(w[k] for w in on) for k in ("sampler", "py-spy", "backend")}
    observer, server_on = sum(parts.values()), sum(w["server_cpu"] for w in on)
    server_off = sum(w["server_cpu"] for w in off)
    results_on, results_off = sum(w["results"] for w in on), sum(w["results"] for w in off)
    mean, half = mean_ci(ratios) if ratios else (math.nan, math.nan)  # no POST ended: a wedged server
    seconds_on = sum(w["end"] - w["start"] for w in on)
    steady_observer = sum(steady[k] for k in parts)
    figures = {
        "benchmark": "sampler_overhead",
        "load": f"preset {args.preset}, batch {args.batch} x concurrency {args.concurrency}",
        "samplers": "Postgres only" if args.pg_only else "all (defaults)",
        "pg_interval_s": args.pg_interval_s,
        "blocks": len(ratios), "window_s": args.window_s,
        "observer_cpu_share": steady_observer / steady["server_cpu"] if steady["server_cpu"] else None,
        "observer_cpu_s_per_s_steady": {k: steady[k] / args.steady_s for k in parts},
        "server_cpu_s_per_s_steady": steady["server_cpu"] / args.steady_s,
        "observer_cpu_share_on_windows": observer / server_on if server_on else None,
        "observer_cpu_s_per_s": {k: v / seconds_on for k, v in parts.items()},
        "server_cpu_s_per_s_on": server_on / seconds_on,
        "server_cpu_per_result_on_over_off": (server_on / results_on) / (server_off / results_off)
        if results_on and results_off and server_off else None,
        "throughput_ratio": None if math.isnan(mean) else mean,
        "throughput_ratio_ci95": None if math.isnan(mean) else [mean - half, mean + half],
        "ratio_per_block": [round(r, 3) for r in ratios],
        "observer_start_up_cpu_s": round(start_up, 3),
        "pg_ticks": ticks, "pyspy_dumps": dumps,
        **machine(),
    }
    print(f"{figures['load']}, samplers {figures['samplers']}, {len(ratios)} ABBA blocks of "
          f"{args.window_s:g} s windows, {ticks} Postgres ticks and {dumps} py-spy dumps in the on windows")
    print("throughput ratio per block: " + ", ".join(f"{r:.3f}" for r in ratios))
    print("observer CPU per second on: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" for k, v in figures["observer_cpu_s_per_s"].items())
        + f"; server {figures['server_cpu_s_per_s_on']:.2f} s/s; observer start-up {start_up:.2f} s CPU")
    print(f"observer CPU / server CPU over the on windows = {figures['observer_cpu_share_on_windows']:.2%}")
    print(f"steady, {args.steady_s:g} s left on: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" for k, v in figures["observer_cpu_s_per_s_steady"].items())
        + f" per s; server {figures['server_cpu_s_per_s_steady']:.2f} s/s")
    print(f"observer CPU / server CPU, steady = {figures['observer_cpu_share']:.2%} (goal <= 3 %)")
    if ratios:
        print(f"throughput ratio on/off = {mean:.3f}, 95 % interval [{mean - half:.3f}, {mean + half:.3f}] "
              f"(goal: contains a value >= 0.97)")
    else:
        print("throughput ratio: no POST ended inside the off windows (the server completed none)")
    print(f"{figures['cpus']} CPUs, load average {figures['load_average']}")
    return figures


if __name__ == "__main__":
    main()
