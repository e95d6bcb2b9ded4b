"""The metric names of ``summary.json``, each with its one-line meaning, in the verdict table's order.

The one list: the analysis computes these, the gate accepts them in thresholds, docs/records.md
defines them. It imports nothing, so `contend validate` and `contend gate` need not load pandas.
"""

from __future__ import annotations

import json

# Postgres and queue metrics cover the load and its drain ("whole": first request to the end of the
# drain); each metric of PHASE_SPLIT also exists for the load alone and the drain alone.
MEANINGS: dict[str, str] = {
    "edges_max": "blocker-chain edges (blocked, blocking) pairs, max over load and drain",
    "edges_p95": "blocker-chain edges, p95 over load and drain",
    "blocked_max": "backends waiting on a lock, max over load and drain",
    "blocked_p95": "backends waiting on a lock, p95 over load and drain",
    "depth_max": "longest wait-for chain, max over load and drain",
    "idle_in_tx_max": "idle-in-transaction backends, max over load and drain",
    "idle_in_tx_max_age_s": "oldest idle-in-transaction transaction (s)",
    "lock_waits": "distinct lock waits the sampler saw (pg_locks.waitstart), load and drain",
    "lock_wait_p50_s": "lock wait duration p50 (s), from waitstart to the last tick that saw it",
    "lock_wait_p95_s": "lock wait duration p95 (s)",
    "lock_wait_max_s": "lock wait duration max (s)",
    "blocked_seconds": "seconds backends spent waiting on locks (Σ over waits, from waitstart)",
    "queue_max": "results queued in ml_results, max over load and drain",
    "posts_ok": "result POSTs that succeeded",
    "posts_total": "result POSTs sent",
    "post_ok_ratio": "posts_ok / posts_total",
    "latency_p50_s": "result POST latency p50 (s), timeouts included",
    "latency_p95_s": "result POST latency p95 (s), timeouts included",
    "latency_p99_s": "result POST latency p99 (s), timeouts included",
    "latency_max_s": "result POST latency max (s)",
    "results_accepted_per_s": "results accepted by the POSTs per second of load",
    "results_processed_per_s": "images with results written, per second from first POST to end of drain",
    "drain_s": "last POST response to the result workers idle (s)",
    "drain_timed_out": "1 when the drain hit drain_timeout_s",
    "job_done_s": "first POST to the last job's final status (s)",
    "redeliveries": "NATS redeliveries of job tasks",
    "dup_tasks": "tasks a load process had received before",
    "duplicate_results": "results posted again for an image (redelivered tasks)",
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
    "pg_lock_waits_logged": "lock waits Postgres logged (longer than deadlock_timeout), load and drain",
    "lock_wait_coverage": "share of the logged lock waits the sampler saw",
    "pg_deadlocks": "'deadlock detected' errors Postgres logged",
    "pg_statement_timeouts": "'canceling statement due to statement timeout' errors Postgres logged",
    "pg_too_many_clients": "'too many clients already' connection refusals Postgres logged",
    "http_5xx": "requests answered with a server error (HTTP 5xx)",
    "http_5xx_at_pg_error": "of those, requests in flight when Postgres logged an error",
    "cross_layer_deadlocks": "episodes of a cycle through a Python lock wait and a Postgres lock wait",
    "python_lock_waiters_max": "threads waiting on one Python lock, max over the wait-for graphs",
    "idle_in_tx_blocked_in_app_max": "threads idle in transaction, blocked in the app (max, wait-for graphs)",
    "image_loads": "task images the pull workers loaded",
    "image_load_failed": "task images that failed to load",
    "image_load_p50_s": "task image download time p50 (s), failed ones included",
    "image_load_p95_s": "task image download time p95 (s), failed ones included",
    "image_mb": "megabytes of task images loaded",
}

PHASE_SPLIT: tuple[str, ...] = (
    "edges_max", "blocked_max", "depth_max", "idle_in_tx_max", "lock_waits", "blocked_seconds", "queue_max",
)
for _metric in PHASE_SPLIT:
    MEANINGS[f"{_metric}_load"] = f"{_metric}, load only (first request to last response)"
    MEANINGS[f"{_metric}_drain"] = f"{_metric}, drain only (last response to the workers idle)"

METRICS: tuple[str, ...] = tuple(MEANINGS)

NAMED: dict[str, str] = {
    "requests_total": "requests of that name",
    "requests_failed": "requests of that name with an error",
    "latency_p50_s": "latency p50 of the requests of that name (s), failed ones included",
    "latency_p95_s": "latency p95 of the requests of that name (s), failed ones included",
    "latency_p99_s": "latency p99 of the requests of that name (s), failed ones included",
    "latency_max_s": "latency max of the requests of that name (s)",
}
"""Metrics that also exist per request name of your own load: ``latency_p95_s{name="/api/orders"}``."""


def named_metric(metric: str, name: str) -> str:
    """Return the key of ``metric`` for the requests named ``name``: ``latency_p95_s{name="/x"}``."""
    return f"{metric}{{name={json.dumps(name)}}}"


# Metrics whose value can only grow while a variant runs (maxima, counts, the longest wait), and which
# ``contend.live`` follows as the records are written: a threshold ``<metric> < n`` on one of them is
# lost for good the moment it fails, so ``abort: true`` may stop the variant there (docs/ci-gating.md).
GROWING: tuple[str, ...] = (
    "edges_max", "edges_max_load", "edges_max_drain",
    "blocked_max", "blocked_max_load", "blocked_max_drain",
    "depth_max", "depth_max_load", "depth_max_drain",
    "idle_in_tx_max", "idle_in_tx_max_load", "idle_in_tx_max_drain",
    "idle_in_tx_max_age_s", "lock_wait_max_s",
    "queue_max", "queue_max_load", "queue_max_drain",
    "timeouts", "requests_failed", "latency_max_s",
    "cross_layer_deadlocks", "python_lock_waiters_max", "idle_in_tx_blocked_in_app_max",
)

# +1: a larger value is better; -1: a larger value is worse; 0: neither (for colouring deltas).
BETTER: dict[str, int] = {m: -1 for m in METRICS} | {
    "posts_ok": 1,
    "posts_total": 0,
    "post_ok_ratio": 1,
    "results_accepted_per_s": 1,
    "results_processed_per_s": 1,
    "lock_wait_coverage": 0,
    # Fewer distinct waits is no better when each lasts longer (a deadlock ended by a timeout is one
    # wait of 30 s): blocked_seconds and the durations say which side is worse.
    "lock_waits": 0,
    "lock_waits_load": 0,
    "lock_waits_drain": 0,
    "requests_total": 0,
    "jobs_started": 1,
    "image_loads": 0,
    "image_mb": 0,
}
