"""`make test`: every test, in two pytest runs, then the slowest tests of both.

1. Everything but the ``slow`` tier in ``--workers`` parallel processes (pytest-xdist): these tests
   mostly wait (servers starting, loads and drains running, timeouts expiring), so a 2-core machine
   runs several at once. Each worker has its own temporary folders, state folder and shared stack
   (tests/conftest.py says what keeps a test parallel-safe).
2. The ``slow`` tier in one process, alone: its end-to-end scenarios measure contention (lock waits,
   redeliveries, poll order, 10 Hz sampling) that parallel tests would disturb.

pytest exits 5 when a run selects no test. One empty tier is fine (``--`` arguments that name only
fast tests); both empty is a failure, as for pytest itself. The slow tier runs even when the first
failed, so one CI log shows every failure; an interrupted first run stops here.

    python tests/tiers.py --workers 4 [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

NO_TESTS = 5
INTERRUPTED = 2
SLOWEST = 15


def tier(marker: str, workers: int, junit: Path, extra: list[str]) -> int:
    """Run pytest on the tests of ``marker`` (in ``workers`` processes; 0: this one); return its exit code."""
    parallel = ["-n", str(workers), "--dist", "loadgroup"] if workers else ["-p", "no:xdist"]
    argv = [sys.executable, "-m", "pytest", "-m", marker, *parallel, f"--junitxml={junit}",
            f"--durations={SLOWEST}", *extra]
    print(f"\n$ pytest -m {marker!r} {' '.join(argv[5:])}", flush=True)
    return subprocess.run(argv, check=False).returncode


def outcome(codes: list[int]) -> int:
    """Return the exit code of the tiers together: the first failure's, 5 only when none ran a test."""
    if all(code == NO_TESTS for code in codes):
        return NO_TESTS
    failed = [code for code in codes if code not in (0, NO_TESTS)]
    return failed[0] if failed else 0


def slowest(reports: list[Path], n: int = SLOWEST) -> list[tuple[float, str]]:
    """Return the ``n`` longest tests of the JUnit reports (set-up, call and tear-down), longest first."""
    times = []
    for report in reports:
        if not report.exists():
            continue
        for case in ET.parse(report).iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            times.append((float(case.get("time") or 0.0), name))
    return sorted(times, reverse=True)[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="parallel processes of the first tier")
    parser.add_argument("extra", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args()
    codes = []
    with tempfile.TemporaryDirectory(prefix="contend-tiers-") as folder:
        reports = [Path(folder) / "parallel.xml", Path(folder) / "slow.xml"]
        codes.append(tier("not slow", args.workers, reports[0], args.extra))
        if codes[0] != INTERRUPTED:
            codes.append(tier("slow", 0, reports[1], args.extra))
        print(f"\n{SLOWEST} slowest tests of both tiers (seconds, set-up to tear-down):")
        for seconds, name in slowest(reports):
            print(f"{seconds:8.2f}  {name}")
    code = outcome(codes)
    if code == NO_TESTS:
        print("no test selected in either tier", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
