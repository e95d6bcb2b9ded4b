"""How the Postgres sampler's cost grows with the number of backends, at 10 Hz (and other rates).

    python benchmarks/bench_sampler_curve.py [--backends 10 100 400 1000] [--waiting 0.1]
                    [--rates 10] [--blocks 2] [--window-s 3] [--clients 4] [--json FILE] [--png FILE]

One embedded Postgres (max_connections raised to fit) holds, for each count N of client backends,
N x ``--waiting`` lock waiters in queues of known shape (queues of up to 10 UPDATEs of one row, each behind an
idle-in-transaction holder of that row: the depth is the longest queue, the edges are counted in
the table), one holder per queue, and idle sessions for the rest. Beside them a fixed pgbench
workload (``pgbench -N``, simple updates, ``--clients`` clients, scale 1) runs in windows ordered
off, each rate, each rate in reverse order, off (``--blocks`` times per N), with the Postgres sampler
ticking in this process at a fixed rate (no CPU budget: the raw cost) and writing its records as
``contend run`` does (pg_backends.jsonl by change).

Per N and rate: the tick's wall time (median and p95 of ``cost_ms``), the ticks per second reached,
the sampler's CPU per tick (its thread) and its backend's (through /proc), each also as a share of
one core, the bytes written per minute (pg_ticks + pg_backends), and pgbench's TPS with the sampler
on over TPS with it off in the same block (mean over blocks). Written as a table on stdout, as JSON
(``--json``) and as a figure (``--png``, matplotlib). Every figure carries the core count and the
load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

import contend.stack.postgres as pgstack
from contend.jsonl import JsonlWriter
from contend.sample.backends import ChangeLog
from contend.sample.cost import process_cpu
from contend.sample.pg import PgSampler, connect
from contend.stack.postgres import EmbeddedPostgres, bindir_candidates

QUEUE = 10


def pgbench_binary() -> str:
    for bindir in bindir_candidates():
        if (bindir / "pgbench").exists():
            return str(bindir / "pgbench")
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench not found (it ships with pgserver and with postgresql)")
    return found


class Held:
    """N client backends: ``waiters`` (default N/2) in queues of up to QUEUE behind one holder each,
    the rest idle."""

    def __init__(self, dsn: str, n: int, waiters: int | None = None) -> None:
        self.waiters = n // 2 if waiters is None else waiters
        self.queues = max(1, -(-self.waiters // QUEUE))
        self.conns: list[psycopg.Connection[Any]] = []
        self.holders: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS curve_hot")
            conn.execute("CREATE TABLE curve_hot (id int PRIMARY KEY, n int NOT NULL)")
            conn.execute("INSERT INTO curve_hot SELECT g, 0 FROM generate_series(1, %s) g", (self.queues,))
        for q in range(self.queues):
            holder = psycopg.connect(dsn)
            holder.execute("UPDATE curve_hot SET n = n + 1 WHERE id = %s", (q + 1,))
            self.holders.append(holder)
        for i in range(self.waiters):
            conn = psycopg.connect(dsn, autocommit=True)
            self.conns.append(conn)
            row = i % self.queues + 1
            thread = threading.Thread(target=self._wait, args=(conn, row), daemon=True)
            thread.start()
            self.threads.append(thread)
        for _ in range(n - self.waiters - self.queues):
            self.conns.append(psycopg.connect(dsn, autocommit=True))

    @staticmethod
    def _wait(conn: psycopg.Connection[Any], row: int) -> None:
        with contextlib.suppress(psycopg.Error):  # cancelled when the holders roll back
            conn.execute("UPDATE curve_hot SET n = n + 1 WHERE id = %s", (row,))

    def release(self) -> None:
        for holder in self.holders:
            holder.rollback()
            holder.close()
        for thread in self.threads:
            thread.join(timeout=60)
        for conn in self.conns:
            conn.close()


class Ticking:
    """The Postgres sampler ticking at ``hz`` in a thread, records written as the runner writes them."""

    def __init__(self, dsn: str, hz: float, out: Path) -> None:
        self.sampler = PgSampler(connect(dsn))
        self.backend = int(self.sampler.conn.info.backend_pid)
        self.hz = hz
        self.out = out
        self.stop = threading.Event()
        self.costs: list[float] = []
        self.graphs: Counter[str] = Counter()
        self.cpu_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ticks = JsonlWriter(self.out / "pg_ticks.jsonl")
        backends = JsonlWriter(self.out / "pg_backends.jsonl")
        changes = ChangeLog()
        cpu0 = time.thread_time()
        next_at = time.monotonic()
        while not self.stop.is_set():
            tick, rows = self.sampler.tick(interval_s=1.0 / self.hz)
            ticks.write([tick])
            backends.write(changes.lines(tick["t"], tick["server_now"], rows))
            self.costs.append(tick["cost_ms"])
            self.graphs[tick["wait_graph"]] += 1
            next_at = max(next_at + 1.0 / self.hz, time.monotonic())
            self.stop.wait(next_at - time.monotonic())
        self.cpu_s = time.thread_time() - cpu0
        ticks.close()
        backends.close()

    def __enter__(self) -> Ticking:
        self.backend_cpu0 = process_cpu(self.backend)
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.wall_s = time.monotonic() - self.started
        self.backend_cpu = process_cpu(self.backend) - self.backend_cpu0
        self.bytes = sum(f.stat().st_size for f in self.out.glob("*.jsonl"))
        self.sampler.conn.close()


def pgbench_tps(argv: list[str], seconds: float) -> float:
    argv = [*argv, "-T", str(max(1, round(seconds)))]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    if match is None:
        raise SystemExit(f"no tps in pgbench output: {done.stdout[-500:]}{done.stderr[-500:]}")
    return float(match[1])


def measure(pg: EmbeddedPostgres, n: int, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    bench = [pgbench_binary(), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-n", "-N",
             "-c", str(args.clients), "-j", str(min(args.clients, os.cpu_count() or 1)), pg.database]
    held = Held(pg.dsn, n, round(n * args.waiting))
    try:
        probe = PgSampler(connect(pg.dsn))
        deadline = time.monotonic() + 120
        while (tick := probe.tick()[0])["blocked"] < held.waiters and time.monotonic() < deadline:
            time.sleep(0.2)
        probe.conn.close()
        shape = {"backends": tick["backends"], "blocked": tick["blocked"], "edges": tick["edges"],
                 "depth": tick["depth"], "blocking_calls": tick["blocking_calls"],
                 "idle_hidden": tick["idle_hidden"]}
        rates = args.rates
        graphs: Counter[str] = Counter()
        order = ["off", *rates, *reversed(rates), "off"]
        tps: dict[str, list[list[float]]] = {str(k): [] for k in ("off", *rates)}
        stats: dict[float, dict[str, list[float]]] = {
            r: {"costs": [], "cpu": [], "backend": [], "ticks": [], "wall": [], "bytes": [], "graph": []}
            for r in rates}
        for _ in range(args.blocks):
            block: dict[str, list[float]] = {}
            for mode in order:
                if mode == "off":
                    value = pgbench_tps(bench, args.window_s)
                else:
                    assert isinstance(mode, float)
                    out = Path(tempfile.mkdtemp(dir=tmp))
                    with Ticking(pg.dsn, mode, out) as ticking:
                        value = pgbench_tps(bench, args.window_s)
                    stats[mode]["costs"] += ticking.costs
                    stats[mode]["cpu"].append(ticking.cpu_s)
                    stats[mode]["backend"].append(ticking.backend_cpu)
                    stats[mode]["ticks"].append(len(ticking.costs))
                    stats[mode]["wall"].append(ticking.wall_s)
                    stats[mode]["bytes"].append(ticking.bytes)
                    graphs.update(ticking.graphs)
                    shutil.rmtree(out)
                block.setdefault(str(mode), []).append(value)
            for key, values in block.items():
                tps[key].append(values)
        rows = []
        for rate in rates:
            ratios = [statistics.fmean(on) / statistics.fmean(off)
                      for on, off in zip(tps[str(rate)], tps["off"], strict=True)]
            ticks = max(1, sum(stats[rate]["ticks"]))
            costs = sorted(stats[rate]["costs"])
            wall = sum(stats[rate]["wall"])
            rows.append({
                "backends": n, "hz": rate, **shape,
                "tick_ms_p50": round(statistics.median(costs), 2),
                "tick_ms_p95": round(costs[int(0.95 * (len(costs) - 1))], 2),
                "cpu_ms_per_tick": round(1000 * sum(stats[rate]["cpu"]) / ticks, 2),
                "backend_cpu_ms_per_tick": round(1000 * sum(stats[rate]["backend"]) / ticks, 2),
                "ticks_per_s": round(sum(stats[rate]["ticks"]) / wall, 1),
                "cpu_share": round(sum(stats[rate]["cpu"]) / wall, 4),
                "backend_share": round(sum(stats[rate]["backend"]) / wall, 4),
                "mb_per_min": round(60 * sum(stats[rate]["bytes"]) / wall / 1e6, 2),
                "tps_ratio": round(statistics.fmean(ratios), 3),
                "tps_ratio_per_block": [round(r, 3) for r in ratios],
                "tps_off": round(statistics.fmean(v for b in tps["off"] for v in b), 1),
                "waiting": args.waiting, "wait_graph": graphs.most_common(1)[0][0],
                "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
            })
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        held.release()


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4))
    rates = sorted({r["hz"] for r in rows})
    for rate, color in zip(rates, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        mine = [r for r in rows if r["hz"] == rate]
        xs = [r["backends"] for r in mine]
        left.plot(xs, [r["tick_ms_p50"] for r in mine], "o-", color=color, label=f"{rate:g} Hz, median")
        left.plot(xs, [r["tick_ms_p95"] for r in mine], "o:", color=color, alpha=0.5,
                  label=f"{rate:g} Hz, p95")
        middle.plot(xs, [100 * r["cpu_share"] for r in mine], "o-", color=color,
                    label=f"{rate:g} Hz, sampler")
        middle.plot(xs, [100 * r["backend_share"] for r in mine], "s:", color=color,
                    label=f"{rate:g} Hz, its backend")
        right.plot(xs, [r["tps_ratio"] for r in mine], "o-", color=color, label=f"{rate:g} Hz")
    left.axhline(10.0, color="grey", lw=0.8, ls=":")
    left.set(ylabel="tick time (ms)", title="Postgres sampler tick (wall)")
    middle.axhline(3.0, color="grey", lw=0.8, ls=":")
    middle.set(ylabel="% of one core", title="CPU: the sampler's thread, its backend")
    right.axhline(0.97, color="grey", lw=0.8, ls=":")
    right.set(ylabel="pgbench TPS on / off", title="Throughput with the sampler on")
    for ax in (left, middle, right):
        ax.set_xscale("log")
        ax.set_xticks([r["backends"] for r in rows if r["hz"] == rates[0]])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()
        ax.set_xlabel(f"client backends ({rows[0]['waiting']:.0%} of them lock waiters)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    load = rows[-1]
    fig.suptitle(f"{load['cpus']} CPUs, load average {load['load_average']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, nargs="+", default=[10, 100, 400, 1000])
    parser.add_argument("--waiting", type=float, default=0.1, help="share of the backends that wait")
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    pgstack.SERVER_SETTINGS["max_connections"] = str(max(args.backends) + args.clients + 20)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "pg") as pg:
        init = [pgbench_binary(), "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port),
                "-U", "postgres", pg.database]
        subprocess.run(init, capture_output=True, check=True)
        for n in args.backends:
            rows += measure(pg, n, args, Path(tmp))
    print(f"{'backends':>8} {'Hz':>4} {'blocked':>7} {'edges':>6} {'tick p50':>9} {'tick p95':>9} "
          f"{'ticks/s':>8} {'CPU/tick':>9} {'backend':>9} {'CPU':>6} {'backend':>7} {'MB/min':>6} "
          f"{'TPS on/off':>10}")
    for r in rows:
        print(f"{r['backends']:>8} {r['hz']:>4g} {r['blocked']:>7} {r['edges']:>6} "
              f"{r['tick_ms_p50']:>7.2f}ms {r['tick_ms_p95']:>7.2f}ms {r['ticks_per_s']:>8.1f} "
              f"{r['cpu_ms_per_tick']:>7.2f}ms "
              f"{r['backend_cpu_ms_per_tick']:>7.2f}ms {r['cpu_share']:>6.1%} {r['backend_share']:>7.1%} "
              f"{r['mb_per_min']:>6.2f} {r['tps_ratio']:>10.3f}")
    result = {"benchmark": "sampler_curve", "clients": args.clients, "window_s": args.window_s,
              "blocks": args.blocks, "rows": rows, "cpus": os.cpu_count(),
              "load_average": round(os.getloadavg()[0], 2)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.png:
        figure(rows, args.png)


if __name__ == "__main__":
    main()
