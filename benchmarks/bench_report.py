"""Report generation for a synthetic 10-minute run at 10 Hz with 100 backends (issue 6).

Goals: ``write_report`` <= 10 s, report.html <= 5 MB. Also times three ways of reading
``pg_backends.jsonl`` (600k lines), which is why the report does not read that file at all: the
top-statements table comes from the root blockers already aggregated in ``pg_ticks.jsonl``.

    python benchmarks/bench_report.py [--variants 2] [--minutes 10] [--backends 100] [--hz 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from contend.analysis import read_jsonl
from contend.report import write_report
from contend.report.synthetic import SynthVariant, make_run


def timed(label: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"{label:<48} {time.perf_counter() - start:7.2f} s")
    return result


def read_columns(path: Path, keys: tuple[str, ...]) -> dict[str, list]:  # type: ignore[type-arg]
    out: dict[str, list] = {k: [] for k in keys}  # type: ignore[type-arg]
    loads = json.loads
    with path.open("rb") as fh:
        for line in fh:
            row = loads(line)
            for k in keys:
                out[k].append(row.get(k))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=2, help="variants sharing the run's minutes")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the whole run")
    parser.add_argument("--backends", type=int, default=100)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file (make bench)")
    args = parser.parse_args()
    variants = tuple(
        SynthVariant(f"variant-{i}", {"JOB_LOG_PERSIST_ENABLED": str(i == 0).lower()}, {"concurrency": 10},
                     contention=0.9 if i == 0 else 0.1)
        for i in range(args.variants)
    )
    duration = args.minutes * 60 / args.variants
    with tempfile.TemporaryDirectory() as tmp:
        run = timed("generate synthetic run folder", make_run, Path(tmp), variants, duration_s=duration,
                    hz=args.hz, backends=args.backends)
        backends = sorted(run.glob("variants/*/samples/pg_backends.jsonl"))
        rows = sum(sum(1 for _ in p.open("rb")) for p in backends)
        ticks = sum(sum(1 for _ in p.open("rb")) for p in run.glob("variants/*/samples/pg_ticks.jsonl"))
        requests = sum(sum(1 for _ in p.open("rb")) for p in run.glob("variants/*/load/*.jsonl"))
        print(f"{args.variants} variants x {duration:.0f} s at {args.hz:g} Hz, {args.backends} backends: "
              f"{ticks:,} ticks, {rows:,} pg_backends rows, {requests:,} requests")
        print("-- reading pg_backends.jsonl (not needed by the report; for comparison) --")
        timed("json.loads loop, every key (read_jsonl)", lambda: [read_jsonl(p) for p in backends])
        timed("json.loads loop, 4 needed keys only", lambda: [
            read_columns(p, ("t", "pid", "fingerprint", "blocked_by")) for p in backends])
        timed("pandas.read_json(lines=True)", lambda: [pd.read_json(p, lines=True) for p in backends])
        print("-- the report --")
        timed("write_report, first call (pays the imports)", write_report, run)
        started = time.perf_counter()
        paths = timed("write_report (summary, html, md)", write_report, run)
        seconds = time.perf_counter() - started
        size = paths.html.stat().st_size
        print(f"report.html {size / 1e6:.2f} MB, report.md {paths.markdown.stat().st_size / 1e3:.1f} kB")
        if args.json:
            args.json.write_text(json.dumps({
                "benchmark": "report", "minutes": args.minutes, "hz": args.hz, "backends": args.backends,
                "write_report_s": round(seconds, 2), "html_mb": round(size / 1e6, 2),
                "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
