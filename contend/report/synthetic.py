"""A synthetic run folder, written exactly as docs/records.md says, for tests and the report benchmark.

The numbers are random but seeded; tests recompute their expectations from the files written here,
never from this generator's parameters.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contend.jsonl import JsonlWriter

HOT_UPDATE = 'UPDATE "jobs_job" SET "logs" = $1 WHERE "jobs_job"."id" = $2'
HOT_SELECT = 'SELECT ... FROM "jobs_job" WHERE "jobs_job"."id" = $1 FOR UPDATE'


@dataclass(frozen=True)
class SynthVariant:
    """One variant to generate: ``contention`` from 0 (none) to 1 (the seed's pile-up)."""

    name: str
    flags: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    contention: float = 0.0
    status: str = "ok"
    reason: str | None = None


DEFAULT_VARIANTS = (
    SynthVariant("logs-on", {"JOB_LOG_PERSIST_ENABLED": "true"}, {"concurrency": 10}, contention=0.9),
    SynthVariant("logs-off", {"JOB_LOG_PERSIST_ENABLED": "false"}, {"concurrency": 10}, contention=0.05),
)


SERVER_CLOCK = 1_700_000_000.0
"""Where the synthetic server's clock stands when the run's clock reads 0 (pg_locks.waitstart)."""


def _iso(t: float) -> str:
    """Times in meta.json are ISO 8601 UTC, as the orchestrator writes them."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _writer(path: Path) -> JsonlWriter:
    return JsonlWriter(path, flush_every_s=math.inf)  # written in one go: flushed when closed


def _line(out: JsonlWriter, row: dict[str, Any]) -> None:
    out.write([row])


def _write_variant(
    folder: Path,
    v: SynthVariant,
    rep: int,
    start: float,
    duration_s: float,
    hz: float,
    backends: int,
    with_backends: bool,
    query_text: str,
    rng: random.Random,
) -> None:
    (folder / "load").mkdir(parents=True)
    samples = folder / "samples"
    samples.mkdir()
    c = v.contention
    end = start + duration_s
    meta = {
        "name": v.name,
        "flags": v.flags,
        "params": v.params,
        "repetition": rep,
        "started": _iso(start),
        "ended": _iso(end),
        "status": v.status,
        "reason": v.reason,
    }
    (folder / "meta.json").write_text(json.dumps(meta))

    concurrency = int(v.params.get("concurrency", 4))
    with _writer(folder / "load" / "requests-w0.jsonl") as fh:
        for u in range(concurrency):
            t = start + rng.random()
            while t < end:
                latency = rng.uniform(0.2, 1.0) + c * rng.expovariate(1 / 8.0)
                error, status = (None, 200)
                if latency > 30:
                    latency, error, status = 30.0, "ReadTimeout", 0
                elif rng.random() < 0.01 * (1 + 5 * c):
                    error, status = "HTTP 503", 503
                _line(
                    fh,
                    {
                        "t0": t,
                        "t1": t + latency,
                        "kind": "result",
                        "status": status,
                        "sent": 51200,
                        "recv": 120,
                        "error": error,
                        "job": 1,
                        "results": 50,
                        "tasks": 0,
                        "dup_tasks": 0,
                        "dup_results": rng.randint(0, 2) if c > 0.5 else 0,
                        "worker": f"w0-u{u}",
                        "wave": None,
                    },
                )
                t += latency + 0.05
                _line(
                    fh,
                    {
                        "t0": t,
                        "t1": t + 0.02,
                        "kind": "tasks",
                        "status": 200,
                        "sent": 20,
                        "recv": 900,
                        "error": None,
                        "job": 1,
                        "results": 0,
                        "tasks": 8,
                        "dup_tasks": rng.randint(0, 3) if c > 0.5 else 0,
                        "dup_results": 0,
                        "worker": f"w0-u{u}",
                        "wave": None,
                    },
                )
                for k in range(8):  # the tasks' images, downloaded at once (no draw: rng's sequence stays)
                    _line(fh, {"t0": t + 0.02, "t1": t + 0.05 + 0.01 * k, "kind": "image", "status": 200,
                               "sent": 0, "recv": 420_000 + k, "error": None, "job": 1, "results": 0,
                               "tasks": 0, "dup_tasks": 0, "dup_results": 0, "worker": f"w0-u{u}",
                               "wave": None})
                t += 0.1

    n_ticks = int(duration_s * hz)
    ticks = _writer(samples / "pg_ticks.jsonl")
    rows = _writer(samples / "pg_backends.jsonl") if with_backends else None
    wait_began: dict[int, float] = {}  # backend -> when its current lock wait began
    with ticks:
        for i in range(n_ticks):
            t = start + i / hz
            wave = 0.5 + 0.5 * math.sin(i / (hz * 7.0))
            blocked = min(backends - 1, round(c * wave * backends * 0.35 + rng.random() * c * 3))
            edges = blocked * (1 + int(c * 3)) if blocked else 0
            idle = round(c * wave * 9) + (1 if rng.random() < 0.05 else 0)
            roots = []
            if blocked:
                roots.append(
                    {
                        "pid": 1000 + (i // 50) % 7,
                        "blocks": blocked,
                        "state": "idle in transaction",
                        "app": "contend-ref:web pid=41 tid=7 ntid=43",
                        "xact_age": (i % 50) / hz + 0.1,
                        "fingerprint": HOT_UPDATE,
                        "query": query_text,
                    }
                )
                if blocked > 3:
                    roots.append(
                        {
                            "pid": 2000 + i % 3,
                            "blocks": 1,
                            "state": "active",
                            "app": "contend-ref:worker-1 pid=52 tid=9 ntid=54",
                            "xact_age": 0.3,
                            "fingerprint": HOT_SELECT,
                            "query": HOT_SELECT.replace("$1", "1"),
                        }
                    )
            # Backends 3000 .. 3000+blocked-1 wait on a lock; a wait lasts while its backend stays blocked.
            wait_began = {pid: wait_began.get(pid, t) for pid in range(blocked)}
            waits = [{"pid": 3000 + pid, "waitstart": round(SERVER_CLOCK + began, 6),
                      "age": round(t - began, 3)} for pid, began in wait_began.items()]
            _line(
                ticks,
                {
                    "t": t,
                    "waits": waits,
                    "backends": backends,
                    "edges": edges,
                    "blocked": blocked,
                    "depth": blocked,
                    "roots": roots,
                    "idle_in_tx": idle,
                    "idle_in_tx_max_age": round(idle * 0.7 * rng.random(), 3),
                    "locked_relations": ["jobs_job"] if blocked else [],
                    "wait_events": {"Lock:tuple": blocked, "Client:ClientRead": idle},
                    "cost_ms": round(rng.uniform(0.8, 3.0), 3),
                    "late_ms": round(rng.expovariate(2.0), 3),
                    "blocking_calls": blocked,
                },
            )
            if rows is not None:
                for pid in range(backends):
                    waiting = pid < blocked
                    _line(
                        rows,
                        {
                            "t": t,
                            "pid": 3000 + pid,
                            "app": f"contend-ref:web pid=41 tid={pid} ntid={pid}",
                            "client_addr": "127.0.0.1",
                            "client_port": 40000 + pid,
                            "backend_type": "client backend",
                            "state": "active" if waiting else "idle",
                            "wait_event_type": "Lock" if waiting else "Client",
                            "wait_event": "tuple" if waiting else "ClientRead",
                            "xact_age": 0.5,
                            "query_age": 0.4,
                            "state_age": 0.4,
                            "has_xid": waiting,
                            "query": query_text,
                            "fingerprint": HOT_UPDATE,
                            "blocked_by": [1000] if waiting else [],
                        },
                    )
    if rows is not None:
        rows.close()

    with _writer(samples / "nats.jsonl") as fh:
        redelivered = [0, 0]
        for s in range(int(duration_s)):
            t = start + s + 0.5
            _line(
                fh,
                {
                    "t": t,
                    "stream": "ml_results",
                    "consumer": "ml-results-workers",
                    "delivered": s * 20,
                    "ack_floor": s * 19,
                    "num_pending": int(c * wave * 200) + rng.randint(0, 5),
                    "num_ack_pending": 8,
                    "num_redelivered": 0,
                },
            )
            for j in range(2):
                if rng.random() < c * 0.3:
                    redelivered[j] += 1
                _line(
                    fh,
                    {
                        "t": t,
                        "stream": f"job_{j + 1}",
                        "consumer": f"job-{j + 1}-consumer",
                        "delivered": s * 4,
                        "ack_floor": s * 3,
                        "num_pending": 100 - s % 100,
                        "num_ack_pending": 4,
                        "num_redelivered": redelivered[j],
                    },
                )

    web_stack = [
        {"name": "wait", "filename": "/usr/lib/python3/site-packages/psycopg/waiting.py", "line": 59},
        {"name": "execute", "filename": "/usr/lib/python3/site-packages/psycopg/cursor.py", "line": 97},
        {"name": "emit", "filename": "/srv/app/contend/refserver/jobs/logging.py", "line": 31},
        {"name": "result", "filename": "/srv/app/contend/refserver/jobs/views.py", "line": 120},
    ]
    worker_stack = [
        {"name": "wait", "filename": "/usr/lib/python3/site-packages/psycopg/waiting.py", "line": 59},
        {"name": "_update_job_progress", "filename": "/srv/app/contend/refserver/jobs/tasks.py", "line": 88},
    ]
    idle_stack = [
        {"name": "wait", "filename": "/usr/lib/python3.11/threading.py", "line": 320},
        {"name": "next_task", "filename": "/srv/app/contend/refserver/worker.py", "line": 40},
    ]
    with _writer(samples / "pyspy.jsonl") as fh:
        for s in range(0, int(duration_s), 2):
            for role, stack, pid in (("web", web_stack, 41), ("worker", worker_stack, 52)):
                threads = [
                    {
                        "thread_id": 7 + k,
                        "os_thread_id": 43 + k,
                        "name": f"t{k}",
                        "idle": True,
                        "active": False,
                        "frames": stack if rng.random() < 0.2 + 0.7 * c else idle_stack,
                    }
                    for k in range(8)
                ]
                _line(fh, {"t": start + s, "pid": pid, "role": role, "threads": threads})
    with _writer(samples / "waitgraph.jsonl") as fh:
        holder = {"pid": 41, "tid": 43, "name": "t0", "backend_pid": 1000, "function": "emit",
                  "file": "/srv/app/contend/refserver/jobs/logging.py", "line": 31, "path": "result -> emit",
                  "key": "41:43", "role": "web", "xact_age_s": 2.5, "waits_for": "a row of jobs_job"}
        # The logs-on cycle: `job_result` holds the job row and waits for the job log handler's lock;
        # the worker's `_cachalot` holds that lock and waits for the row.
        job_result = {"pid": 41, "tid": 43, "name": "t0", "backend_pid": 1000, "function": "job_result",
                      "file": "/srv/app/contend/refserver/views.py", "line": 299,
                      "path": "dispatch -> job_result", "key": "41:43", "role": "web", "xact_age_s": 5.2,
                      "waits_for": "JobLogHandler's lock"}
        cachalot = {"pid": 52, "tid": 53, "name": "MainThread", "backend_pid": 1001, "function": "_cachalot",
                    "file": "/srv/app/contend/refserver/apps.py", "line": 58, "path": "handle -> _cachalot",
                    "key": "52:53", "role": "worker", "xact_age_s": 4.8, "waits_for": "a row of jobs_job"}
        cycle_edges = [
            {"waiter": "41:43", "holder": "52:53", "layer": "python", "kind": "handler lock",
             "what": "the lock of logging handler JobLogHandler", "lock": "52:0x7f00.lock",
             "inferred": "object identity from locals", "thing": "JobLogHandler's lock"},
            {"waiter": "52:53", "holder": "41:43", "layer": "db", "kind": "row lock",
             "what": "a lock held by backend 1000", "lock": None, "inferred": "pg_blocking_pids",
             "thing": "a row of jobs_job"},
        ]
        first: dict[str, float] = {}
        for s in range(0, int(duration_s), 2):
            waiters = int(8 * c * rng.random())
            found = []
            if waiters >= 2:
                found.append({
                    "kind": "python_lock_convoy", "key": "41:0x7f00.lock", "t": start + s,
                    "threads": [holder] + [
                        holder | {"tid": 44 + k, "backend_pid": 1001 + k, "function": "result", "line": 120,
                                  "key": f"41:{44 + k}", "waits_for": "JobLogHandler's lock"}
                        for k in range(waiters)
                    ],
                    "text": f"{waiters} threads with open transactions wait for the lock of logging handler "
                            "JobLogHandler, held by thread 43 of pid 41 in `emit` (logging.py:31), "
                            "backend 1000, which waits on Postgres in `emit` (logging.py:31).",
                    "short": f"`emit` holds JobLogHandler's lock; {waiters} threads with open transactions "
                             "(oldest 2.5 s) wait for it.",
                    "edges": [{"waiter": f"41:{44 + k}", "holder": "41:43", "layer": "python",
                               "kind": "handler lock", "what": "the lock of logging handler JobLogHandler",
                               "lock": "41:0x7f00.lock", "inferred": "object identity from locals",
                               "thing": "JobLogHandler's lock"} for k in range(waiters)],
                    "waiters": waiters, "holder": holder,
                })
            if waiters >= 6:
                found.insert(0, {
                    "kind": "cross_layer_deadlock", "key": "41:43|52:53", "t": start + s,
                    "threads": [job_result, cachalot],
                    "text": "Cross-layer deadlock of 2 threads: thread 43 of pid 41 in `job_result` "
                            "(views.py:299), backend 1000 waits for the lock of logging handler "
                            "JobLogHandler, held by thread 53 of pid 52 in `_cachalot` (apps.py:58), backend "
                            "1001, which waits for a lock held by backend 1000, held by the first. Postgres "
                            "cannot see it (one wait is in Python); statement_timeout (30 s) cancels backend "
                            "1001 and ends it.",
                    "short": "`job_result` holds a row of jobs_job and waits for JobLogHandler's lock; "
                             "`_cachalot` holds that lock and waits for the row. Only statement_timeout "
                             "(30 s) ends it.",
                    "ends": {"name": "statement_timeout", "ms": 30000.0, "backend_pid": 1001},
                    "edges": cycle_edges,
                })
            _line(fh, {"t": start + s, "locals": s % 10 == 0, "threads": {}, "edges": [], "pg_t": start + s,
                       "gauges": {"python_lock_waiters": waiters,
                                  "idle_in_tx_blocked_in_app": min(waiters, 1)},
                       "findings": found}
                  | ({"locals_dumps": 2, "locals_failed": 0, "locals_cpu_s": 0.04, "locals_wall_s": 0.05}
                     if s % 10 == 0 else {}))
            for f in found:  # as the live figures record it: seconds from the load's start
                first.setdefault(str(f["kind"]), float(s))
    if first:
        (folder / "meta.json").write_text(json.dumps(meta | {"first_finding_s": first}))
    with _writer(samples / "attribution.jsonl") as fh:
        if c > 0:
            for k in range(3):
                _line(
                    fh,
                    {
                        "t": start + 10 + k,
                        "backend_pid": 1000 + k,
                        "client_pid": 41,
                        "thread_id": 7,
                        "role": "web",
                        "root_for_s": 1.5 + k,
                        "blocks": 5 + k,
                        "state": "idle in transaction",
                        "query": query_text,
                        "fingerprint": HOT_UPDATE,
                        "stack": web_stack,
                    },
                )


def make_run(
    root: Path,
    variants: tuple[SynthVariant, ...] = DEFAULT_VARIANTS,
    *,
    scenario: str = "synthetic",
    duration_s: float = 60.0,
    hz: float = 10.0,
    backends: int = 20,
    repetitions: int = 1,
    sweep: str | None = None,
    status: str = "complete",
    with_backends: bool = True,
    query_text: str = HOT_UPDATE.replace("$1", "'[...]'").replace("$2", "1"),
    seed: int = 1,
) -> Path:
    """Write a synthetic run folder under ``root`` and return it."""
    rng = random.Random(seed)
    run_dir = root / f"{scenario}-20260101T000000Z"
    (run_dir / "variants").mkdir(parents=True)
    start = 1_767_225_600.0
    names = []
    for v in variants:
        for rep in range(1, repetitions + 1):
            folder_name = v.name if repetitions == 1 else f"{v.name}~r{rep}"
            _write_variant(
                run_dir / "variants" / folder_name,
                v,
                rep,
                start,
                duration_s,
                hz,
                backends,
                with_backends,
                query_text,
                rng,
            )
            start += duration_s + 5
        names.append(v.name)
    meta = {
        "scenario": scenario,
        "contend_version": "0.1.0",
        "python": "3.11.2",
        "postgres": "16.4",
        "nats": "2.10.22",
        "cpus": 2,
        "started": _iso(1_767_225_600.0),
        "ended": _iso(start),
        "status": status,
        "baseline": names[0],
        "variants": names,
        "sweep": sweep,
        "description": "synthetic run for tests",
    }
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return run_dir
