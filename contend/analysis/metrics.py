"""The metrics of a run (docs/records.md, docs/metrics.md): frames in, ``summary.json`` out."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from contend.analysis.findings import comparison, variant_findings, variant_sentences
from contend.analysis.names import name_metrics, name_rows
from contend.analysis.reading import RESULTS_STREAM, RunData, VariantRun, cumulative_redeliveries
from contend.analysis.waits import coverage, wait_metrics
from contend.diagnosis import findings as graph_findings
from contend.diagnosis import mapping as backend_mapping
from contend.metrics import METRICS, PHASE_SPLIT
from contend.stats import bootstrap_interval, is_timeout, quantile

REQUEST_METRICS = (
    "posts_ok",
    "posts_total",
    "dup_tasks",
    "duplicate_results",
    "timeouts",
    "requests_total",
    "requests_failed",
    "jobs_started",
    "starved_jobs",
    "first_result_s_p50",
    "first_result_s_max",
)
def _q(values: pd.Series, q: float) -> float | None:
    return quantile(values.dropna().astype(float).tolist(), q)


def _max(values: pd.Series) -> float | None:
    values = values.dropna()
    return None if values.empty else float(values.max())


def _within(frame: pd.DataFrame, window: tuple[float, float] | None, column: str = "t") -> pd.DataFrame:
    if window is None or frame.empty:
        return frame
    return frame[(frame[column] >= window[0]) & (frame[column] <= window[1])]


def _tick_metrics(run: VariantRun, window: tuple[float, float] | None) -> dict[str, float | int | None]:
    """Postgres and queue metrics over one window (all ticks when it is None)."""
    ticks = _within(run.ticks, window)
    if window is not None and ticks.empty and not run.ticks.empty:
        # A window without a tick: a very short run is measured by every tick; a phase shorter than
        # the sampling interval (a load of a few fast POSTs) by the first tick after its start, the
        # nearest observation of it (at most a tick late), rather than by none.
        ticks = run.ticks if window == run.whole_window else run.ticks[run.ticks["t"] >= window[0]].head(1)
    queue = _within(run.nats[run.nats["stream"] == RESULTS_STREAM], window)
    m: dict[str, float | int | None] = {
        "edges_max": _max(ticks["edges"]),
        "edges_p95": _q(ticks["edges"], 0.95),
        "blocked_max": _max(ticks["blocked"]),
        "blocked_p95": _q(ticks["blocked"], 0.95),
        "depth_max": _max(ticks["depth"]),
        "idle_in_tx_max": _max(ticks["idle_in_tx"]),
        "idle_in_tx_max_age_s": _max(ticks["idle_in_tx_max_age"]),
        "queue_max": _max(queue["num_pending"]) if not run.nats.empty else None,
        **wait_metrics(run.waits, window),
    }
    for key in ("edges_max", "blocked_max", "depth_max", "idle_in_tx_max", "queue_max"):
        if m[key] is not None:
            m[key] = int(m[key])  # type: ignore[arg-type]
    return m


def phase_metrics(run: VariantRun) -> dict[str, float | int | None]:
    """The Postgres and queue metrics of the load and of the drain apart (``<metric>_load``, ``_drain``)."""
    out: dict[str, float | int | None] = {}
    for suffix, window in (("load", run.window), ("drain", run.drain_window)):
        values = _tick_metrics(run, window) if window is not None else {}
        out |= {f"{metric}_{suffix}": values.get(metric) for metric in PHASE_SPLIT}
    return out


def throughput(run: VariantRun) -> dict[str, float | int | None]:
    """Results accepted by the POSTs per second of load; results written by the workers per second of
    load and drain; the drain's length; when the last job reached its final status."""
    window, drain_window = run.window, run.drain_window
    posts_ok = run.requests[(run.requests["kind"] == "result") & run.requests["error"].isna()]
    accepted = float(posts_ok["results"].fillna(0).sum())
    drain = run.phase("drain") or {}
    processed = drain.get("processed")
    m: dict[str, float | int | None] = {
        "results_accepted_per_s": accepted / (window[1] - window[0])
        if window and window[1] > window[0] else None,
        "results_processed_per_s": None,
        "drain_s": drain_window[1] - drain_window[0] if drain_window else None,
        "drain_timed_out": int(bool(drain.get("timed_out"))) if drain_window else None,
        "job_done_s": None,
    }
    if window and drain_window and isinstance(processed, int) and drain_window[1] > window[0]:
        m["results_processed_per_s"] = processed / (drain_window[1] - window[0])
    done = jobs_done(run)
    if done and all(v is not None for v in done.values()):
        m["job_done_s"] = max(v for v in done.values() if v is not None)
    return m


def jobs_done(run: VariantRun) -> dict[str, float | None]:
    """Per job: first request to the job's final status (None: not final when the drain ended)."""
    window = run.window
    finished = run.meta.get("jobs_done") or {}
    if window is None:
        return {}
    return {job: (float(t) - window[0] if t is not None else None) for job, t in finished.items()}


def server_events(run: VariantRun) -> dict[str, float | int | None]:
    """What Postgres logged during the load and drain, the HTTP 5xx, and the sampler's coverage of the
    logged lock waits (None without a server log: an external server)."""
    keys = ("pg_lock_waits_logged", "pg_deadlocks", "pg_statement_timeouts", "pg_too_many_clients",
            "lock_wait_coverage")
    requests = run.requests
    errors = requests[pd.to_numeric(requests["status"], errors="coerce").fillna(0) >= 500]
    m: dict[str, float | int | None] = {"http_5xx": len(errors) if not requests.empty else None}
    log = run.server_log
    window = run.whole_window
    if log is None:
        return m | dict.fromkeys(keys) | {"http_5xx_at_pg_error": None}
    events = [e for e in log.events if window is None or window[0] <= e.t <= window[1]]
    counts = {kind: sum(1 for e in events if e.kind == kind)
              for kind in ("lock_wait", "deadlock", "statement_timeout", "too_many_clients")}
    seen, logged = coverage(log.waits, run.waits, window)
    error_times = sorted(e.t for e in events if e.kind != "lock_wait")
    at_error = sum(1 for t0, t1 in zip(errors["t0"], errors["t1"], strict=True)
                   if any(t0 <= t <= t1 for t in error_times))
    return m | {
        "http_5xx_at_pg_error": at_error,
        "pg_lock_waits_logged": counts["lock_wait"],
        "pg_deadlocks": counts["deadlock"],
        "pg_statement_timeouts": counts["statement_timeout"],
        "pg_too_many_clients": counts["too_many_clients"],
        "lock_wait_coverage": seen / logged if logged else None,
    }


def variant_metrics(run: VariantRun) -> dict[str, float | int | None]:
    """The metrics of one repetition (definitions in docs/records.md); None where there is no data.

    Postgres and queue metrics cover the load and its drain (``whole_window``): warm-up and cool-down
    would dilute the p95, and the result workers' contention happens after the POSTs return.
    """
    req = run.requests
    failed = req["error"].notna()
    posts = req[req["kind"] == "result"]
    posts_ok = posts[posts["error"].isna()]
    m: dict[str, float | int | None] = {
        **_tick_metrics(run, run.whole_window),
        "posts_ok": len(posts_ok),
        "posts_total": len(posts),
        "post_ok_ratio": len(posts_ok) / len(posts) if len(posts) else None,
        "latency_p50_s": _q(posts["latency"], 0.50),
        "latency_p95_s": _q(posts["latency"], 0.95),
        "latency_p99_s": _q(posts["latency"], 0.99),
        "latency_max_s": _max(posts["latency"]),
        **throughput(run),
        "redeliveries": redeliveries(run.nats)
        if not run.nats.empty or (run.folder / "samples" / "nats.jsonl").exists()
        else None,
        "dup_tasks": int(req["dup_tasks"].fillna(0).sum()),
        "duplicate_results": int(req["dup_results"].fillna(0).sum()),
        "timeouts": int(req["error"].map(is_timeout).sum()),
        "requests_total": len(req),
        "requests_failed": int(failed.sum()),
        "sampler_cost_ms_p95": _q(run.ticks["cost_ms"], 0.95),
        "sampler_late_ms_p95": _q(run.ticks["late_ms"], 0.95),
        **fairness(run),
        "lost_updates": lost_updates(run.final_state, duplicated_jobs(run))
        if run.final_state is not None
        else None,
        **server_events(run),
        **phase_metrics(run),
        **graph_metrics(run),
        **image_metrics(req),
        **name_metrics(run),
    }
    if req.empty:
        # No load records at all (the variant died before its load): counts are unknown, not zero.
        m.update(dict.fromkeys(REQUEST_METRICS))
    return m


def image_metrics(req: pd.DataFrame) -> dict[str, float | int | None]:
    """Task image downloads of pull workers with ``load_images`` (``kind == "image"``); None without any."""
    images = req[req["kind"] == "image"]
    if images.empty:
        return {"image_loads": None, "image_load_failed": None, "image_load_p50_s": None,
                "image_load_p95_s": None, "image_mb": None}
    ok = images[images["error"].isna()]
    seconds = images["t1"] - images["t0"]
    return {"image_loads": len(ok), "image_load_failed": len(images) - len(ok),
            "image_load_p50_s": _q(seconds, 0.50), "image_load_p95_s": _q(seconds, 0.95),
            "image_mb": float(pd.to_numeric(ok["recv"], errors="coerce").fillna(0).sum()) / 1e6}


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
    """Redeliveries of job tasks so far, summed over job consumers (``cumulative_redeliveries``)."""
    cumulative = cumulative_redeliveries(nats)
    if cumulative.empty:
        return 0
    return int(cumulative.groupby(["stream", "consumer"])["redelivered"].max().sum())


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
    if statuses <= {"ok", "stopped"}:
        return "stopped"  # an abort threshold stopped a repetition (contend.live)
    return "interrupted" if "interrupted" in statuses else "partial"


BOOTSTRAP_MIN_REPETITIONS = 3


def _delta(
    value: Any, base: Any, spread: list[float] | None, base_spread: list[float] | None,
    values: list[float] | None = None, base_values: list[float] | None = None,
) -> dict[str, Any]:
    abs_ = value - base
    rel = abs_ / base if base else None
    real: bool | None = None
    out: dict[str, Any] = {"abs": _clean(abs_), "rel": _clean(rel)}
    if (values and base_values and len(values) >= BOOTSTRAP_MIN_REPETITIONS
            and len(base_values) >= BOOTSTRAP_MIN_REPETITIONS):
        # 95 % bootstrap interval of the difference of medians: distinguishable when it excludes 0.
        low, high = bootstrap_interval(values, base_values)
        out["ci"] = [_clean(low), _clean(high)]
        real = low > 0 or high < 0
    elif spread is not None and base_spread is not None:
        # Two repetitions are too few to resample: real only when the two ranges do not overlap.
        real = spread[0] > base_spread[1] or spread[1] < base_spread[0]
    return out | {"real": real}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, 6)
    return value


def graph_metrics(run: VariantRun) -> dict[str, int | None]:
    """The cross-layer wait-for graph's metrics over the run; None when no py-spy stack was taken
    or the run has no graph records at all.

    A graph is recorded only when something waits, so no record with stacks taken means zero.
    """
    if not run.waitgraph_recorded or (not run.pyspy and not run.waitgraph):
        return dict.fromkeys(GRAPH_METRICS)
    deadlocks = graph_findings.aggregate(run.waitgraph)
    gauges = [r.get("gauges") or {} for r in run.waitgraph]
    return {
        "cross_layer_deadlocks": sum(int(f["episodes"]) for f in deadlocks
                                     if f["kind"] == "cross_layer_deadlock"),
        "python_lock_waiters_max": max((int(g.get("python_lock_waiters") or 0) for g in gauges), default=0),
        "idle_in_tx_blocked_in_app_max": max((int(g.get("idle_in_tx_blocked_in_app") or 0) for g in gauges),
                                             default=0),
    }


GRAPH_METRICS = ("cross_layer_deadlocks", "python_lock_waiters_max", "idle_in_tx_blocked_in_app_max")


def summarize(run: RunData) -> dict[str, Any]:
    """Build ``summary.json`` (keys in docs/records.md) from a loaded run."""
    variants: dict[str, Any] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    for name, reps in run.variants.items():
        # A variant that failed has no figures: none in a comparison, a finding or a threshold.
        per_rep = [dict.fromkeys(METRICS) if r.status == "failed" else variant_metrics(r) for r in reps]
        # METRICS, then the per-name ones of your own load's requests (absent without them).
        keys = [*METRICS, *sorted({k for m in per_rep for k in m if k not in METRICS})]
        samples[name] = {metric: [float(m[metric]) for m in per_rep if m.get(metric) is not None]  # type: ignore[arg-type]
                         for metric in keys}
        metrics: dict[str, Any] = {}
        spread: dict[str, list[float]] = {}
        for metric in keys:
            value, rng = _combine([m.get(metric) for m in per_rep])
            metrics[metric] = _clean(value)
            if len(reps) > 1 and rng is not None:
                spread[metric] = [_clean(x) for x in rng]
        first = reps[0].meta
        reasons = [str(r.meta["reason"]) for r in reps if r.meta.get("reason")]
        if any(r.status == "interrupted" for r in reps):
            reasons.append("contend ended while this variant ran (killed?)")
        entry: dict[str, Any] = {
            "status": _status(reps),
            "reason": "; ".join(dict.fromkeys(reasons)) or None,
            "flags": first.get("flags") or {},
            "params": first.get("params") or {},
            "repetitions": len(reps),
            "metrics": metrics,
        }
        done = [jobs_done(r) for r in reps]
        if any(done):
            entry["job_done_s"] = done[0] if len(done) == 1 else done
        phase_s = [r.meta.get("phase_s") for r in reps if r.meta.get("phase_s")]
        if phase_s:
            entry["phase_s"] = phase_s[0] if len(reps) == 1 else phase_s
        if spread:
            entry["spread"] = spread
        stopped = [r.meta["stopped"] for r in reps if r.meta.get("stopped")]
        if stopped:
            entry["stopped"] = stopped[0]
        firsts = [r.meta.get("first_finding_s") or {} for r in reps]
        if any(firsts):
            entry["first_finding_s"] = {kind: min(f[kind] for f in firsts if kind in f)
                                        for kind in dict.fromkeys(k for f in firsts for k in f)}
        notes = [f"{r.folder.name}: {n}" for r in reps for n in r.notes]
        if notes:
            entry["notes"] = notes
        measured = [r for r in reps if r.status != "failed"]
        entry["findings"] = variant_findings(measured[0]) if measured else []
        mapped = backend_mapping.over_run(measured[0].waitgraph) if measured else None
        if mapped is not None:
            entry["mapping"] = mapped
        if measured and (rows := name_rows(measured[0])):
            entry["requests_by_name"] = [{k: _clean(v) for k, v in row.items()} for row in rows]
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
                samples[name][metric],
                samples[run.baseline][metric],
            )
            for metric, value in entry["metrics"].items()
            if value is not None and base["metrics"].get(metric) is not None
        }
    for name, entry in variants.items():
        first_rep, found = run.variants[name][0], entry["findings"]
        if entry["status"] == "failed":
            entry["findings_text"] = [f"This variant failed ({entry['reason'] or 'no reason recorded'}): "
                                      "it has no figures and no findings."]
            continue
        text = variant_sentences(first_rep, found)
        if base is not None and base["status"] == "failed" and name != run.baseline:
            text.append(f"The baseline {run.baseline} failed, so nothing is compared with it.")
        elif base is not None and name != run.baseline:
            text.append(comparison(run.baseline, run.variants[run.baseline][0], base["findings"],
                                   name, first_rep, found))
        if first_rep.load_commands and first_rep.requests.empty:
            text.append("The load was a command that wrote no request records: request metrics "
                        "(latency, failures, throughput) are absent; the Postgres figures cover its run.")
        entry["findings_text"] = text
    summary: dict[str, Any] = {
        "scenario": run.name,
        "status": run.status,
        "baseline": run.baseline,
        "variants": variants,
    }
    if run.sweep:
        summary["sweep"] = run.sweep
    return summary
