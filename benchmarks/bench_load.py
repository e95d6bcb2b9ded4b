"""What the load driver costs, against what it drives, and how fast it can go on one core.

    python benchmarks/bench_load.py            (both parts, about 2-3 minutes)
    python benchmarks/bench_load.py --part rate

Part ``cpu``: batched POSTs of 50 error results (Antenna's script, concurrency 10) against the
reference server (real Postgres, NATS, Django web tier and result workers) with job logs off (with
them on, the server's POSTs wait out their timeout and the figure would measure waiting). Driver CPU = CPU of
the locust process(es), server CPU = CPU of the web tier, the result workers, Postgres and NATS,
counted until the server is idle again (the result workers finish after the POSTs return). Both
are marginal figures: the difference between a long and a short run, divided by the difference in
POSTs, so process start-up (Python, locust imports, Django) cancels out.

Part ``rate``: the driver's maximum POST rate on one core (the driver pinned to CPU 0, a trivial
asyncio endpoint pinned to CPU 1) next to a minimal stdlib thread-pool client of the same shape
as Antenna's script (urllib + ThreadPoolExecutor, one wave after another), same body, same
concurrency. One run each; the ratio is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from contend.load import BatchedPost, LoadTarget, run_load
from contend.sample.cost import tree_cpu
from contend.stack import RefServerOptions, Stack
from contend.stack.process import free_port

CONCURRENCY = 10
BATCH = 50


# --- part cpu --------------------------------------------------------------------------------------


def wait_idle(
    pids: list[int], quiet_cpu_s: float = 0.05, window_s: float = 2.0, timeout_s: float = 300
) -> float:
    """Wait until the server uses less than ``quiet_cpu_s`` per ``window_s``; return its CPU then."""
    deadline = time.monotonic() + timeout_s
    before = tree_cpu(pids)
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = tree_cpu(pids)
        if now - before < quiet_cpu_s:
            return now
        before = now
    return before


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def part_cpu(rounds_short: int, rounds_long: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Stack(Path(tmp) / "stack", refserver=RefServerOptions(preset="pr-1261-logs-off", jobs=1,
                                                                images_per_job=100)) as stack,
    ):
        ref = stack.info()["refserver"]
        os.environ["BENCH_REF_TOKEN"] = ref["token"]
        target = LoadTarget(ref["url"], token_env="BENCH_REF_TOKEN", job_ids=ref["job_ids"])
        server = [pid for pids in ref["pids"].values() for pid in pids]
        for part in (stack.postgres, stack.nats):
            if part.process is not None:
                server.append(part.process.pid)
        figures = {}
        for rounds in (rounds_short, rounds_long):
            server_before = wait_idle(server)
            driver_before = children_cpu()  # the load processes are our children, reaped by run_load
            started = time.monotonic()
            summary = run_load(
                [BatchedPost(batch=BATCH, concurrency=CONCURRENCY, rounds=rounds)],
                target,
                Path(tmp) / f"load-{rounds}",
            )
            elapsed = time.monotonic() - started
            driver = children_cpu() - driver_before
            server_cpu = wait_idle(server) - server_before
            print(
                f"  rounds {rounds}: {summary.requests_ok} POSTs ok, {summary.requests_failed} failed, "
                f"p95 {summary.kinds['result'].p95_s or 0:.3f} s, wall {elapsed:.1f} s, "
                f"driver CPU {driver:.2f} s, server CPU {server_cpu:.2f} s"
            )
            figures[f"posts_{rounds}"] = summary.requests_ok + summary.requests_failed
            figures[f"driver_{rounds}"] = driver
            figures[f"server_{rounds}"] = server_cpu
        posts = figures[f"posts_{rounds_long}"] - figures[f"posts_{rounds_short}"]
        driver_per_post = (figures[f"driver_{rounds_long}"] - figures[f"driver_{rounds_short}"]) / posts
        server_per_post = (figures[f"server_{rounds_long}"] - figures[f"server_{rounds_short}"]) / posts
        return {
            "driver_cpu_per_post_s": driver_per_post,
            "server_cpu_per_post_s": server_per_post,
            "ratio": driver_per_post / server_per_post,
        }


# --- part rate -------------------------------------------------------------------------------------


async def _serve(port: int) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n"
        b'{"status":"accepted"}'
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                close = False
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    elif name.lower() == b"connection" and value.strip().lower() == b"close":
                        close = True
                await reader.readexactly(length)
                writer.write(response)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def stdlib_client(url: str, token: str, batch: int, concurrency: int, duration_s: float) -> tuple[int, float]:
    """Antenna's script, minimally: waves on a fresh thread pool, a fresh body per POST (urllib, json).

    Returns (POSTs answered 200, CPU seconds of this process).
    """
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def post(prefix: str) -> int:
        results = [
            {
                "reply_subject": f"{prefix}.r{i}.{uuid.uuid4().hex[:8]}",
                "result": {"error": "load-test", "image_id": f"img-{prefix}-{i}"},
            }
            for i in range(batch)
        ]
        body = json.dumps({"results": results}).encode()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return int(response.status)

    cpu0 = time.process_time()
    deadline = time.monotonic() + duration_s
    done = 0
    wave = 0
    while time.monotonic() < deadline:
        wave += 1
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            prefixes = [f"r{wave}_{i}" for i in range(concurrency)]
            done += sum(status == 200 for status in pool.map(post, prefixes))
    return done, time.process_time() - cpu0


def part_rate(duration_s: float, concurrency: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        os.sched_setaffinity(server.pid, {1})
        os.sched_setaffinity(0, {0})  # the driver's processes inherit CPU 0 only
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        token = secrets.token_hex(20)
        os.environ["BENCH_RATE_TOKEN"] = token
        target = LoadTarget(url, token_env="BENCH_RATE_TOKEN")
        with tempfile.TemporaryDirectory() as tmp:
            # Start-up CPU (Python, locust imports), measured on a one-wave run, is taken out below.
            cpu0 = children_cpu()
            start_up = run_load(
                [BatchedPost(batch=BATCH, concurrency=concurrency, rounds=1, job=1)],
                target,
                Path(tmp) / "start-up",
            )
            cpu1 = children_cpu()
            summary = run_load(
                [BatchedPost(batch=BATCH, concurrency=concurrency, duration_s=duration_s, job=1)],
                target,
                Path(tmp) / "rate",
            )
            cpu2 = children_cpu()
        locust_cpu = (cpu2 - cpu1) - (cpu1 - cpu0)
        locust_posts = summary.requests_ok - start_up.requests_ok
        locust_rate = summary.requests_ok / summary.elapsed_s
        posts, stdlib_cpu = stdlib_client(
            url + "/api/v2/jobs/1/result/", token, BATCH, concurrency, duration_s
        )
        stdlib_rate = posts / duration_s
        print(
            f"  contend (locust, keep-alive): {summary.requests_ok} POSTs in {summary.elapsed_s:.1f} s = "
            f"{locust_rate:.0f}/s wall, {summary.requests_failed} failed; "
            f"{locust_posts / locust_cpu:.0f} POSTs per CPU second"
        )
        print(
            f"  stdlib thread pool (urllib, a connection per POST): {posts} POSTs in {duration_s:.1f} s = "
            f"{stdlib_rate:.0f}/s wall; {posts / stdlib_cpu:.0f} POSTs per CPU second"
        )
        return {
            "locust_posts_per_s": locust_rate,
            "stdlib_posts_per_s": stdlib_rate,
            "ratio": locust_rate / stdlib_rate,
            "locust_posts_per_cpu_s": locust_posts / locust_cpu,
            "stdlib_posts_per_cpu_s": posts / stdlib_cpu,
            "ratio_per_cpu_s": (locust_posts / locust_cpu) / (posts / stdlib_cpu),
        }
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cpu", "rate", "all"], default="all")
    parser.add_argument("--rounds", type=int, nargs=2, default=[1, 3], metavar=("SHORT", "LONG"))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per client in part rate")
    parser.add_argument("--concurrency", type=int, default=20, help="parallel POSTs in part rate")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures to this file (make bench)")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    results = {}
    if args.part in ("cpu", "all"):
        print(f"part cpu: {BATCH}-result POSTs, concurrency {CONCURRENCY}, against the reference server")
        results["cpu"] = part_cpu(*args.rounds)
        r = results["cpu"]
        print(
            f"  driver {r['driver_cpu_per_post_s'] * 1000:.2f} ms CPU per POST, server "
            f"{r['server_cpu_per_post_s'] * 1000:.1f} ms CPU per POST: ratio {r['ratio']:.3f} (goal <= 0.2)"
        )
    if args.part in ("rate", "all"):
        print(f"part rate: {BATCH}-result POSTs, concurrency {args.concurrency}, one core, trivial endpoint")
        results["rate"] = part_rate(args.duration, args.concurrency)
        r = results["rate"]
        print(
            f"  ratio contend / stdlib: {r['ratio']:.2f} by wall-clock rate, {r['ratio_per_cpu_s']:.2f} by "
            "POSTs per CPU second (the fair one when the core is shared)"
        )
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "load", **results, "cpus": os.cpu_count(),
                                         "load_average": round(os.getloadavg()[0], 2)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
