"""``contend watch`` side by side with pg_activity, and the watch's ticks per second at a short interval.

    python benchmarks/bench_watch.py [--backends 400] [--window-s 20] [--fast-interval 0.1]
                                     [--rounds 2] [--json FILE]

One embedded Postgres holds N client backends, half of them lock waiters in queues of up to 10
behind idle-in-transaction holders (benchmarks/bench_sampler_curve.py's ``Held``). Each tool runs in
a pseudo-terminal of 50 x 200 characters, as a user would see it:

- ``contend watch --interval 1`` and ``pg_activity --refresh 1`` (pip install pg_activity; its
  defaults otherwise), one after the other, ``--rounds`` times each, alternated: the CPU seconds of
  the tool's own process and of its Postgres backend (found by application_name), read from /proc
  over a window of ``--window-s`` seconds that starts 3 s after the tool's backend appeared, divided
  by the refreshes the window holds (window / 1 s). The same method for both tools.
- ``contend watch --interval 0.1`` (``--fast-budgets``: its ``--cpu-budget``, 3 % by default): the
  ticks it reached per second over the window (counted by a wrapper of its sampler's tick, in its
  own process), and its CPU and its backend's as a share of one core.

Prints one JSON line per measurement and a table; every figure carries the core count and the load
average, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
from bench_sampler_curve import Held

import contend.stack.postgres as pgstack
from contend.sample.cost import process_cpu
from contend.stack.postgres import EmbeddedPostgres

ROWS, COLUMNS = 50, 200
WARMUP_S = 3.0
# contend watch in its own process, its sampler's ticks counted (monotonic times, printed at exit).
DRIVER = """
import json, os, sys, time
from contend.sample import watch
ticks = []
tick = watch.PgSampler.tick
def counted(self, *args, **kwargs):
    ticks.append(time.monotonic())
    return tick(self, *args, **kwargs)
watch.PgSampler.tick = counted
try:
    watch.watch(os.environ["CONTEND_DSN"], interval=float(sys.argv[1]), cpu_budget_pct=float(sys.argv[2]))
finally:
    print(json.dumps(ticks), file=sys.stderr)
"""


class Terminal:
    """A tool's process on a pseudo-terminal of ROWS x COLUMNS, its output read and dropped."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                     env={**env, "TERM": "xterm-256color", "LINES": str(ROWS),
                                          "COLUMNS": str(COLUMNS)}, start_new_session=True)
        os.close(slave)
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(self.master, 65536):
                # Answer cursor-position queries as a terminal does (blessed waits for them).
                for _ in range(data.count(b"\x1b[6n")):
                    os.write(self.master, b"\x1b[1;1R")

    def stop(self) -> str:
        """Interrupt the tool (Ctrl-C), wait for it; return its stderr."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:  # say where it hangs, then end it
            spy = Path(sys.executable).parent / "py-spy"
            subprocess.run([str(spy), "dump", "--pid", str(self.proc.pid)], check=False, timeout=30)
            self.proc.kill()
            _, err = self.proc.communicate()
        os.close(self.master)
        return err.decode(errors="replace")


def backend_of(dsn: str, app: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                               "ORDER BY backend_start DESC LIMIT 1", (app,)).fetchone()
            if row:
                return int(row[0])
            time.sleep(0.1)
    raise SystemExit(f"no backend named {app!r} appeared")


def measure(tool: str, pg: EmbeddedPostgres, interval: float, window_s: float,
            budget: float = 3.0) -> dict[str, Any]:
    env = {**os.environ, "CONTEND_DSN": pg.dsn, "PGPASSWORD": ""}
    if tool == "pg_activity":
        argv = [str(Path(sys.executable).parent / "pg_activity"), "-h", "127.0.0.1", "-p", str(pg.port),
                "-U", "postgres", "-d", pg.database, "--refresh", f"{interval:g}"]
        app = "pg_activity"
    else:
        argv = [sys.executable, "-c", DRIVER, str(interval), str(budget)]
        app = "contend-sampler"
    term = Terminal(argv, env)
    try:
        backend = backend_of(pg.dsn, app)
        time.sleep(WARMUP_S)
        proc = psutil.Process(term.proc.pid)
        cpu0, backend0, t0 = sum(proc.cpu_times()[:2]), process_cpu(backend), time.monotonic()
        time.sleep(window_s)
        cpu1, backend1, t1 = sum(proc.cpu_times()[:2]), process_cpu(backend), time.monotonic()
    finally:
        err = term.stop()
    wall = t1 - t0
    row: dict[str, Any] = {
        "tool": tool, "interval_s": interval, "window_s": round(wall, 2),
        "cpu_budget_pct": budget if tool == "contend" else None,
        "own_ms_per_refresh": round(1000 * (cpu1 - cpu0) / (wall / interval), 2),
        "backend_ms_per_refresh": round(1000 * (backend1 - backend0) / (wall / interval), 2),
        "own_share": round((cpu1 - cpu0) / wall, 4), "backend_share": round((backend1 - backend0) / wall, 4),
        "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
    }
    if tool == "contend":
        if not err.strip():
            raise SystemExit(f"contend watch printed no ticks (exit status {term.proc.returncode}): {err}")
        ticks = json.loads(err.strip().splitlines()[-1])
        row["ticks_per_s"] = round(sum(1 for t in ticks if t0 <= t <= t1) / wall, 2)
    row["total_ms_per_refresh"] = round(row["own_ms_per_refresh"] + row["backend_ms_per_refresh"], 2)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=400)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--fast-interval", type=float, default=0.1)
    parser.add_argument("--fast-budgets", type=float, nargs="+", default=[3.0],
                        help="CPU budgets (%% of a core) of the fast runs (contend watch --cpu-budget)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-pg-activity", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # Started in the background, this process ignores SIGINT and its tools would inherit that: they
    # are stopped by SIGINT (Ctrl-C), so it is handled here, and reset to its default in the tools.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pgstack.SERVER_SETTINGS["max_connections"] = str(args.backends + 30)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "pg") as pg:
        held = Held(pg.dsn, args.backends)
        try:
            shape = wait_shape(pg.dsn, held)
            print(json.dumps(shape), flush=True)
            for budget in args.fast_budgets:
                rows.append(measure("contend", pg, args.fast_interval, args.window_s, budget))
            for _ in range(args.rounds):
                rows.append(measure("contend", pg, 1.0, args.window_s))
                if not args.skip_pg_activity:
                    rows.append(measure("pg_activity", pg, 1.0, args.window_s))
        finally:
            held.release()
    summary: dict[str, Any] = {"benchmark": "watch", "backends": args.backends, **shape, "rows": rows,
                               "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}
    for tool in ("contend", "pg_activity"):
        mine = [r for r in rows if r["tool"] == tool and r["interval_s"] == 1.0]
        if mine:
            summary[f"{tool}_total_ms_per_refresh"] = round(statistics.fmean(
                r["total_ms_per_refresh"] for r in mine), 2)
    if "pg_activity_total_ms_per_refresh" in summary:
        summary["ratio"] = round(summary["pg_activity_total_ms_per_refresh"]
                                 / summary["contend_total_ms_per_refresh"], 2)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def wait_shape(dsn: str, held: Held) -> dict[str, Any]:
    """The contention's figures once every waiter waits (a sampler tick of this process)."""
    from contend.sample.pg import PgSampler, connect

    probe = PgSampler(connect(dsn))
    deadline = time.monotonic() + 120
    while (tick := probe.tick()[0])["blocked"] < held.waiters and time.monotonic() < deadline:
        time.sleep(0.2)
    probe.conn.close()
    return {k: tick[k] for k in ("backends", "blocked", "edges", "depth", "idle_in_tx")} | {
        "roots": len(tick["roots"])}


if __name__ == "__main__":
    main()
