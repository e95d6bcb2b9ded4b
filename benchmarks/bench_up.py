"""Median wall time of `contend up` from launch until stack.json says the stack is ready.

    python benchmarks/bench_up.py [--runs 5] [-- extra up options, e.g. --no-refserver]

Each start is a fresh process on a fresh run folder (initdb included), stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_start(extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "contend", "up", "--reports", tmp, *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while not list(Path(tmp).glob("up-*/stack.json")):
                if proc.poll() is not None:
                    detail = proc.stderr.read().decode() if proc.stderr else ""
                    raise SystemExit(f"contend up exited early: {detail}")
                time.sleep(0.02)
            return time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file (make bench)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    times = [one_start(extra) for _ in range(args.runs)]
    print(f"contend up {' '.join(extra)}: " + ", ".join(f"{t:.2f}" for t in times) + " s")
    print(f"median of {args.runs}: {statistics.median(times):.2f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "up", "options": " ".join(extra), "runs": args.runs,
            "median_s": round(statistics.median(times), 2), "cpus": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 2)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
