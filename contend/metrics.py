"""The metric names of ``summary.json``, each with its one-line meaning, in the verdict table's order.

The one list: the analysis computes these, the gate accepts them in thresholds, docs/records.md
defines them. It imports nothing, so `contend validate` and `contend gate` need not load pandas.
"""

from __future__ import annotations

MEANINGS: dict[str, str] = {
    "edges_max": "blocker-chain edges (blocked, blocking) pairs, max over the load window",
    "edges_p95": "blocker-chain edges, p95 over the load window",
    "blocked_max": "backends waiting on a lock, max over the load window",
    "blocked_p95": "backends waiting on a lock, p95 over the load window",
    "depth_max": "longest wait-for chain, max over the load window",
    "idle_in_tx_max": "idle-in-transaction backends, max over the load window",
    "idle_in_tx_max_age_s": "oldest idle-in-transaction transaction (s)",
    "posts_ok": "result POSTs that succeeded",
    "posts_total": "result POSTs sent",
    "post_ok_ratio": "posts_ok / posts_total",
    "latency_p50_s": "result POST latency p50 (s), timeouts included",
    "latency_p95_s": "result POST latency p95 (s), timeouts included",
    "latency_p99_s": "result POST latency p99 (s), timeouts included",
    "latency_max_s": "result POST latency max (s)",
    "results_per_s": "results accepted per second of load",
    "redeliveries": "NATS redeliveries of job tasks",
    "dup_tasks": "tasks a load process had received before",
    "dup_results": "results posted again for an image",
    "timeouts": "requests that timed out",
    "requests_total": "requests of every kind",
    "requests_failed": "requests with an error",
    "sampler_cost_ms_p95": "the Postgres sampler's own query time, p95 (ms)",
    "sampler_late_ms_p95": "the Postgres sampler's lateness against its schedule, p95 (ms)",
    "jobs_started": "target jobs with at least one successful result POST",
    "starved_jobs": "target jobs without any successful result POST",
    "first_result_s_p50": "load start to a job's first successful result POST, p50 over started jobs (s)",
    "first_result_s_max": "the same, max over target jobs; a starved job counts the load's length (s)",
    "lost_updates": "result counts missing from the jobs' progress against the rows the workers wrote",
}

METRICS: tuple[str, ...] = tuple(MEANINGS)

# +1: a larger value is better; -1: a larger value is worse; 0: neither (for colouring deltas).
BETTER: dict[str, int] = {m: -1 for m in METRICS} | {
    "posts_ok": 1,
    "posts_total": 0,
    "post_ok_ratio": 1,
    "results_per_s": 1,
    "requests_total": 0,
    "jobs_started": 1,
}
