"""The metrics of a run (docs/records.md, docs/metrics.md): frames in, ``summary.json`` out."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from contend.analysis.reading import RESULTS_STREAM, RunData, VariantRun
from contend.metrics import METRICS

REQUEST_METRICS = (
    "posts_ok",
    "posts_total",
    "dup_tasks",
    "dup_results",
    "timeouts",
    "requests_total",
    "requests_failed",
    "jobs_started",
    "starved_jobs",
    "first_result_s_p50",
    "first_result_s_max",
)
def _q(values: pd.Series, q: float) -> float | None:
    values = values.dropna()
    return None if values.empty else float(values.astype(float).quantile(q))


def _max(values: pd.Series) -> float | None:
    values = values.dropna()
    return None if values.empty else float(values.max())


def _is_timeout(error: Any) -> bool:
    return isinstance(error, str) and "timeout" in error.lower()


def variant_metrics(run: VariantRun) -> dict[str, float | int | None]:
    """The metrics of one repetition (definitions in docs/records.md); None where there is no data."""
    req = run.requests
    window = run.window
    ticks = run.ticks
    if window is not None and not ticks.empty:
        # Postgres metrics cover the load window only: warm-up and cool-down would dilute the p95.
        inside = ticks[(ticks["t"] >= window[0]) & (ticks["t"] <= window[1])]
        ticks = inside if not inside.empty else ticks
    failed = req["error"].notna()
    posts = req[req["kind"] == "result"]
    posts_ok = posts[posts["error"].isna()]
    duration = (window[1] - window[0]) if window else 0.0
    m: dict[str, float | int | None] = {
        "edges_max": _max(ticks["edges"]),
        "edges_p95": _q(ticks["edges"], 0.95),
        "blocked_max": _max(ticks["blocked"]),
        "blocked_p95": _q(ticks["blocked"], 0.95),
        "depth_max": _max(ticks["depth"]),
        "idle_in_tx_max": _max(ticks["idle_in_tx"]),
        "idle_in_tx_max_age_s": _max(ticks["idle_in_tx_max_age"]),
        "posts_ok": len(posts_ok),
        "posts_total": len(posts),
        "post_ok_ratio": len(posts_ok) / len(posts) if len(posts) else None,
        "latency_p50_s": _q(posts["latency"], 0.50),
        "latency_p95_s": _q(posts["latency"], 0.95),
        "latency_p99_s": _q(posts["latency"], 0.99),
        "latency_max_s": _max(posts["latency"]),
        "results_per_s": float(posts_ok["results"].fillna(0).sum()) / duration if duration > 0 else None,
        "redeliveries": redeliveries(run.nats)
        if not run.nats.empty or (run.folder / "samples" / "nats.jsonl").exists()
        else None,
        "dup_tasks": int(req["dup_tasks"].fillna(0).sum()),
        "dup_results": int(req["dup_results"].fillna(0).sum()),
        "timeouts": int(req["error"].map(_is_timeout).sum()),
        "requests_total": len(req),
        "requests_failed": int(failed.sum()),
        "sampler_cost_ms_p95": _q(run.ticks["cost_ms"], 0.95),
        "sampler_late_ms_p95": _q(run.ticks["late_ms"], 0.95),
        **fairness(run),
        "lost_updates": lost_updates(run.final_state, duplicated_jobs(run))
        if run.final_state is not None
        else None,
    }
    for key in ("edges_max", "blocked_max", "depth_max", "idle_in_tx_max"):
        if m[key] is not None:
            m[key] = int(m[key])  # type: ignore[arg-type]
    if req.empty:
        # No load records at all (the variant died before its load): counts are unknown, not zero.
        m.update(dict.fromkeys(REQUEST_METRICS))
    return m


def first_results(run: VariantRun) -> dict[int, float | None]:
    """Per target job: end of its first successful result POST minus the load's start (None: starved)."""
    window = run.window
    if window is None:
        return dict.fromkeys(run.target_jobs)
    posts = run.requests[(run.requests["kind"] == "result") & run.requests["error"].isna()]
    posts = posts.dropna(subset=["job"])
    first = posts.groupby(posts["job"].astype(int))["t1"].min().to_dict()
    return {job: float(first[job]) - window[0] if job in first else None for job in run.target_jobs}


def fairness(run: VariantRun) -> dict[str, float | int | None]:
    """Poll fairness: jobs started and starved, time to each job's first result (p50, max).

    The p50 is over the jobs that started; for the max a starved job counts as the load's full length.
    """
    window = run.window
    firsts = first_results(run)
    if window is None or not firsts:
        return dict.fromkeys(("jobs_started", "starved_jobs", "first_result_s_p50", "first_result_s_max"))
    started = [t for t in firsts.values() if t is not None]
    length = window[1] - window[0]
    return {
        "jobs_started": len(started),
        "starved_jobs": len(firsts) - len(started),
        "first_result_s_p50": statistics.median(started) if started else None,
        "first_result_s_max": max(t if t is not None else length for t in firsts.values()),
    }


# Counters a result adds to its job's progress (tasks.py, add_counts=True); docs/metrics.md says why the
# process stage's processed/remaining/failed are not among them.
ADDED_COUNTS = ("captures", "detections", "classifications")


def lost_updates(final_state: dict[str, Any], duplicated: set[int] | frozenset[int] = frozenset()) -> int:
    """Sum over jobs and added counters of max(0, true - recorded) (``final_state.json``).

    A job in ``duplicated`` received some result more than once: every copy inserts new detections
    and classifications but only the first is counted, so only its ``captures`` (distinct images)
    can be compared.
    """
    lost = 0
    for job, entry in (final_state.get("jobs") or {}).items():
        true, recorded = entry.get("true") or {}, entry.get("recorded") or {}
        for counter in ("captures",) if int(job) in duplicated else ADDED_COUNTS:
            if true.get(counter) is not None:
                lost += max(0, int(true[counter]) - int(recorded.get(counter) or 0))
    return lost


def duplicated_jobs(run: VariantRun) -> set[int]:
    """Jobs whose tasks NATS redelivered or whose results a load process posted twice."""
    nats = run.nats.dropna(subset=["num_redelivered"])
    redelivered = nats[nats["stream"].astype(str).str.startswith("job_") & (nats["num_redelivered"] > 0)]
    jobs = {int(str(stream).removeprefix("job_")) for stream in redelivered["stream"].unique()}
    posts = run.requests[(run.requests["kind"] == "result") & (run.requests["dup_results"].fillna(0) > 0)]
    return jobs | {int(j) for j in posts["job"].dropna().unique()}


def redeliveries(nats: pd.DataFrame) -> int:
    """Sum over job consumers of the largest ``num_redelivered`` each reported (the counter only grows)."""
    jobs = nats[nats["stream"] != RESULTS_STREAM].dropna(subset=["num_redelivered"])
    if jobs.empty:
        return 0
    return int(jobs.groupby(["stream", "consumer"])["num_redelivered"].max().sum())


def _combine(values: list[float | int | None]) -> tuple[float | int | None, list[float] | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.median(present), [float(min(present)), float(max(present))]


def _status(runs: list[VariantRun]) -> str:
    statuses = {r.status for r in runs}
    if statuses == {"ok"}:
        return "ok"
    if statuses == {"failed"}:
        return "failed"
    return "partial"


def _delta(
    value: Any, base: Any, spread: list[float] | None, base_spread: list[float] | None
) -> dict[str, Any]:
    abs_ = value - base
    rel = abs_ / base if base else None
    real: bool | None = None
    if spread is not None and base_spread is not None:
        # Real only when the two ranges of repeated runs do not overlap at all.
        real = spread[0] > base_spread[1] or spread[1] < base_spread[0]
    return {"abs": _clean(abs_), "rel": _clean(rel), "real": real}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, 6)
    return value


def summarize(run: RunData) -> dict[str, Any]:
    """Build ``summary.json`` (keys in docs/records.md) from a loaded run."""
    variants: dict[str, Any] = {}
    for name, reps in run.variants.items():
        per_rep = [variant_metrics(r) for r in reps]
        metrics: dict[str, Any] = {}
        spread: dict[str, list[float]] = {}
        for metric in METRICS:
            value, rng = _combine([m[metric] for m in per_rep])
            metrics[metric] = _clean(value)
            if len(reps) > 1 and rng is not None:
                spread[metric] = [_clean(x) for x in rng]
        first = reps[0].meta
        reasons = [str(r.meta["reason"]) for r in reps if r.meta.get("reason")]
        entry: dict[str, Any] = {
            "status": _status(reps),
            "reason": "; ".join(dict.fromkeys(reasons)) or None,
            "flags": first.get("flags") or {},
            "params": first.get("params") or {},
            "repetitions": len(reps),
            "metrics": metrics,
        }
        if spread:
            entry["spread"] = spread
        notes = [f"{r.folder.name}: {n}" for r in reps for n in r.notes]
        if notes:
            entry["notes"] = notes
        variants[name] = entry
    base = variants.get(run.baseline)
    for name, entry in variants.items():
        if base is None or name == run.baseline:
            entry["deltas"] = {}
            continue
        entry["deltas"] = {
            metric: _delta(
                value,
                base["metrics"][metric],
                entry.get("spread", {}).get(metric),
                base.get("spread", {}).get(metric),
            )
            for metric, value in entry["metrics"].items()
            if value is not None and base["metrics"].get(metric) is not None
        }
    summary: dict[str, Any] = {
        "scenario": run.name,
        "status": run.status,
        "baseline": run.baseline,
        "variants": variants,
    }
    if run.sweep:
        summary["sweep"] = run.sweep
    return summary
