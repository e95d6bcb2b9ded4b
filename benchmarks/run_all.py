"""Run every benchmark with small defaults; gather their figures in one JSON and one table.

    python benchmarks/run_all.py [--out benchmarks/results.json] [--doc docs/performance.md]
                                 [--only sampler_overhead sampler_curve ...]   (the others keep theirs)

Each benchmark runs as its own process with ``--json``; its figures, each with the machine's core
count and load average at the time, go under its name in ``--out``, and one table of the headline
figures replaces the part of ``--doc`` between the ``bench:begin`` and ``bench:end`` markers.
``make bench`` runs this; it takes about a quarter of an hour on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# name -> (script, small-default arguments)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "sampler_overhead": ("bench_sampler_overhead.py",
                         ["--blocks", "4", "--window-s", "4", "--steady-s", "20"]),
    # The curve's figure in docs/ comes from its documented default run, not from this small one.
    "sampler_curve": ("bench_sampler_curve.py", ["--blocks", "1", "--window-s", "2"]),
    "sampler_tick": ("bench_sampler_tick.py", ["--ticks", "100"]),
    "report": ("bench_report.py", ["--minutes", "2"]),
    "up": ("bench_up.py", ["--runs", "2"]),
    "refserver": ("bench_refserver.py", ["--preset", "pr-1261-logs-off", "--window", "10"]),
    "load": ("bench_load.py", ["--rounds", "1", "4", "--duration", "4"]),
}

Row = tuple[str, str, str]  # figure, value, goal


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def rows_of(name: str, r: dict[str, Any]) -> list[Row]:
    """Return the headline figures of one benchmark's JSON."""
    table: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
        "sampler_overhead": lambda r: [
            ("observer CPU / server CPU, every sampler on, defaults", _pct(r["observer_cpu_share"]),
             "<= 3 %"),
            ("throughput with samplers on / off (95 % interval)",
             f"{r['throughput_ratio']:.3f} [{r['throughput_ratio_ci95'][0]:.3f}, "
             f"{r['throughput_ratio_ci95'][1]:.3f}], {r['blocks']} blocks"
             if r["throughput_ratio"] is not None else "no POST completed", "contains >= 0.97"),
        ],
        "sampler_curve": lambda r: [
            (f"Postgres tick at {row['backends']} backends, {row['hz']:g} Hz (median / CPU per tick)",
             f"{row['tick_ms_p50']:.1f} ms / {row['cpu_ms_per_tick']:.1f} ms, "
             f"TPS ratio {row['tps_ratio']:.2f}", "") for row in r["rows"]
        ],
        "sampler_tick": lambda r: [
            (f"Postgres tick, {r['backends']} backends, {r['waiters']} waiting (median)",
             f"{r['cost_ms_p50']:.2f} ms", "<= 5 ms")],
        "report": lambda r: [
            (f"write_report, {r['minutes']:g} min at {r['hz']:g} Hz, {r['backends']} backends",
             f"{r['write_report_s']:.1f} s, {r['html_mb']:.1f} MB", "<= 10 s, <= 5 MB")],
        "up": lambda r: [("contend up until ready (median)", f"{r['median_s']:.1f} s", "")],
        "refserver": lambda r: [
            (f"reference server start-up, {p['preset']}", f"{p['startup_s']:.1f} s", "")
            for p in r["presets"]],
        "load": lambda r: [
            ("load driver CPU / server CPU per POST", f"{r['cpu']['ratio']:.3f}", "<= 0.2"),
            ("locust / stdlib client POSTs per CPU second", f"{r['rate']['ratio_per_cpu_s']:.2f}", ""),
        ],
    }
    return table[name](r)


def render_table(results: dict[str, Any]) -> str:
    lines = ["| benchmark | figure | value | goal | CPUs | load average |", "|---|---|---|---|---|---|"]
    for name, r in results["benchmarks"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | {results['cpus']} | |")
            continue
        for figure, value, goal in rows_of(name, r):
            lines.append(f"| {name} | {figure} | {value} | {goal} | {r.get('cpus', '')} | "
                         f"{r.get('load_average', '')} |")
    return "\n".join(lines)


def write_doc(doc: Path, table: str, when: str) -> None:
    text = doc.read_text() if doc.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    body = f"{BEGIN}\nLast `make bench`: {when}.\n\n{table}\n{END}"
    doc.write_text(head + body + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--doc", type=Path, default=HERE.parent / "docs" / "performance.md")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS))
    args = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "benchmarks": {}}
    if args.only and args.out.exists():  # the others keep their last figures
        results["benchmarks"] = json.loads(args.out.read_text()).get("benchmarks", {})
    with tempfile.TemporaryDirectory() as tmp:
        for name, (script, extra) in BENCHMARKS.items():
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / f"{name}.json"
            argv = [sys.executable, str(HERE / script), *extra, "--json", str(out)]
            print(f"== {name}: {' '.join(argv[1:])}", flush=True)
            started = time.monotonic()
            done = subprocess.run(argv, check=False)
            if done.returncode != 0 or not out.exists():
                results["benchmarks"][name] = {"error": f"exit code {done.returncode}"}
                continue
            results["benchmarks"][name] = {**json.loads(out.read_text()),
                                           "wall_s": round(time.monotonic() - started, 1)}
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["when"] = when
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(args.doc, render_table(results), when)
    print(render_table(results))


if __name__ == "__main__":
    main()
