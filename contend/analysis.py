"""Raw run-folder records to pandas frames, and frames to the metrics of ``summary.json``.

The record formats and the metric definitions are in ``docs/records.md``; this module is the only
reader of a run folder. Everything here tolerates what a killed run leaves behind: a truncated last
line, a missing file, a variant without ``meta.json``. What was wrong is kept in ``notes`` so the
report can say it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contend.errors import ConfigError
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
REQUEST_COLUMNS = (
    "t0",
    "t1",
    "kind",
    "status",
    "error",
    "results",
    "tasks",
    "dup_tasks",
    "dup_results",
    "worker",
    "job",
)
TICK_COLUMNS = (
    "t",
    "backends",
    "edges",
    "blocked",
    "depth",
    "idle_in_tx",
    "idle_in_tx_max_age",
    "cost_ms",
    "late_ms",
    "blocking_calls",
)
ROOT_COLUMNS = ("t", "dt", "pid", "blocks", "state", "app", "xact_age", "fingerprint", "query")
NATS_COLUMNS = (
    "t",
    "stream",
    "consumer",
    "delivered",
    "ack_floor",
    "num_pending",
    "num_ack_pending",
    "num_redelivered",
)
RESULTS_STREAM = "ml_results"


def read_jsonl(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Return the JSON objects of a JSON-lines file; a missing file gives [], a bad line is skipped.

    A run killed mid-write leaves a truncated last line; that is expected and noted, not an error.
    """
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    bad = 0
    loads = json.loads
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
    if bad and notes is not None:
        notes.append(f"{path.name}: skipped {bad} unreadable line(s) (a run stopped mid-write leaves one)")
    return rows


def _frame(rows: list[dict[str, Any]], columns: Iterable[str]) -> pd.DataFrame:
    cols = list(columns)
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})
    frame = pd.DataFrame.from_records(rows)
    for c in cols:
        if c not in frame.columns:
            frame[c] = None
    return frame[cols]


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        notes.append(f"{path.parent.name}/{path.name} missing")
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        notes.append(f"{path.parent.name}/{path.name} unreadable")
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class VariantRun:
    """The records of one variant folder (one repetition), as frames."""

    folder: Path
    meta: dict[str, Any]
    requests: pd.DataFrame
    ticks: pd.DataFrame
    roots: pd.DataFrame
    nats: pd.DataFrame
    pyspy: list[dict[str, Any]]
    attribution: list[dict[str, Any]]
    speedscope: list[Path]
    notes: list[str] = field(default_factory=list)
    server_jobs: tuple[int, ...] = ()
    """The reference server's job ids (stack/stack.json); empty for an external target."""
    final_state: dict[str, Any] | None = None
    """``final_state.json``: recorded vs true counts per job after the load (embedded targets)."""

    @property
    def name(self) -> str:
        name = self.meta.get("name")
        return str(name) if name else self.folder.name.split("~r")[0]

    @property
    def status(self) -> str:
        return str(self.meta.get("status") or "partial")

    @property
    def window(self) -> tuple[float, float] | None:
        """The load window: first request start to last request end (None without requests)."""
        if self.requests.empty:
            return None
        return float(self.requests["t0"].min()), float(self.requests["t1"].max())

    @property
    def target_jobs(self) -> tuple[int, ...]:
        """The jobs the load could serve: the server's, else (external target) those the records name."""
        if self.server_jobs:
            return self.server_jobs
        jobs = self.requests["job"].dropna()
        return tuple(sorted({int(j) for j in jobs}))

    @property
    def origin(self) -> float:
        """Time zero of this variant's timelines: its first record."""
        starts = [
            float(f[c].min())
            for f, c in ((self.requests, "t0"), (self.ticks, "t"), (self.nats, "t"))
            if not f.empty
        ]
        return min(starts) if starts else 0.0


@dataclass
class RunData:
    """A run folder read: run metadata and, per variant name in run order, its repetitions."""

    run_dir: Path
    meta: dict[str, Any]
    description: str
    variants: dict[str, list[VariantRun]]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.meta.get("scenario") or self.run_dir.name)

    @property
    def status(self) -> str:
        return "complete" if self.meta.get("status") == "complete" else "partial"

    @property
    def baseline(self) -> str:
        base = self.meta.get("baseline")
        if base in self.variants:
            return str(base)
        return next(iter(self.variants), "")

    @property
    def sweep(self) -> str | None:
        sweep = self.meta.get("sweep")
        values = {
            json.dumps(r[0].meta.get("params", {}).get(sweep)) for r in self.variants.values() if sweep and r
        }
        # A parameter that does not vary (or no variant recorded it) gives no scaling curve.
        return str(sweep) if len(values - {"null"}) > 1 else None


def _roots_frame(tick_rows: list[dict[str, Any]], ticks: pd.DataFrame) -> pd.DataFrame:
    """One row per (tick, root blocker), with ``dt`` = the time that tick stands for."""
    if ticks.empty:
        return _frame([], ROOT_COLUMNS)
    t = ticks["t"].to_numpy(dtype=float)
    gaps = np.diff(t)
    # A tick stands for the time until the next one; a gap (sampler stalled, run paused) counts as
    # at most two typical intervals so a stall does not inflate blocked-seconds.
    typical = float(np.median(gaps)) if gaps.size else 0.1
    dts = np.append(np.minimum(gaps, 2 * typical), typical)
    rows = []
    for rec, dt in zip(tick_rows, dts, strict=True):
        for root in rec.get("roots") or ():
            rows.append(
                {
                    "t": rec.get("t"),
                    "dt": float(dt),
                    "pid": root.get("pid"),
                    "blocks": root.get("blocks", 0),
                    "state": root.get("state"),
                    "app": root.get("app"),
                    "xact_age": root.get("xact_age"),
                    "fingerprint": root.get("fingerprint") or root.get("query") or "?",
                    "query": root.get("query"),
                }
            )
    return _frame(rows, ROOT_COLUMNS)


def load_variant(folder: Path) -> VariantRun:
    """Read one variant folder (any file may be missing or truncated)."""
    notes: list[str] = []
    meta = _read_json(folder / "meta.json", notes)
    request_rows: list[dict[str, Any]] = []
    for path in sorted((folder / "load").glob("requests-*.jsonl")):
        request_rows.extend(read_jsonl(path, notes))
    requests = _frame(request_rows, REQUEST_COLUMNS)
    requests = requests.dropna(subset=["t0", "t1"]).astype({"t0": float, "t1": float})
    requests["latency"] = requests["t1"] - requests["t0"]
    samples = folder / "samples"
    tick_rows = [r for r in read_jsonl(samples / "pg_ticks.jsonl", notes) if "t" in r]
    tick_rows.sort(key=lambda r: float(r["t"]))
    ticks = _frame(tick_rows, TICK_COLUMNS)
    nats = _frame(read_jsonl(samples / "nats.jsonl", notes), NATS_COLUMNS)
    for missing in ("pg_ticks.jsonl", "nats.jsonl"):
        if not (samples / missing).exists():
            notes.append(f"samples/{missing} missing")
    if not request_rows:
        notes.append("no load records")
    stack_path = folder / "stack" / "stack.json"
    stack_info = _read_json(stack_path, notes) if stack_path.exists() else {}
    final_state = _final_state(folder / "final_state.json", notes)
    return VariantRun(
        folder=folder,
        meta=meta,
        requests=requests,
        ticks=ticks,
        roots=_roots_frame(tick_rows, ticks),
        nats=nats,
        pyspy=read_jsonl(samples / "pyspy.jsonl", notes),
        attribution=read_jsonl(samples / "attribution.jsonl", notes),
        speedscope=sorted(samples.glob("*speedscope*.json")),
        notes=notes,
        server_jobs=tuple(int(j) for j in (stack_info.get("refserver") or {}).get("job_ids") or ()),
        final_state=final_state,
    )


def _final_state(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The final counts probe's record, when it ran and read the counts (else a note says why not)."""
    if not path.exists():
        return None
    state = _read_json(path, notes)
    if state.get("error"):
        notes.append(f"final job counts not read: {state['error']}")
        return None
    if state.get("settled") is False:
        notes.append(
            f"final job counts read before the result workers were idle (waited {state.get('waited_s')} s): "
            "lost_updates may count results still being processed"
        )
    return state if isinstance(state.get("jobs"), dict) else None


def _scenario_description(path: Path) -> str:
    """The scenario's description, when the scenario as run still loads with this contend."""
    if not path.exists():
        return ""
    from contend.scenario import load_scenario

    try:
        return load_scenario(path).description
    except ConfigError:
        return ""


def load_run(run_dir: Path) -> RunData:
    """Read a run folder into frames; a partial run (missing files, truncated lines) still loads."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run folder", hint="pass a folder made by `contend run`")
    notes: list[str] = []
    meta = _read_json(run_dir / "meta.json", notes)
    description = str(meta.get("description") or "") or _scenario_description(run_dir / "scenario.yaml")
    folders = sorted(p for p in (run_dir / "variants").glob("*") if p.is_dir())
    if not folders:
        raise ConfigError(
            f"{run_dir} has no variants/ folder with records",
            hint="pass a folder made by `contend run` (it holds variants/<name>/)",
        )
    grouped: dict[str, list[VariantRun]] = defaultdict(list)
    for folder in folders:
        run = load_variant(folder)
        grouped[run.name].append(run)
    for runs in grouped.values():
        runs.sort(key=lambda r: int(r.meta.get("repetition") or 1))
    order = [str(v) for v in meta.get("variants") or [] if v in grouped]
    order += [v for v in grouped if v not in order]
    return RunData(
        run_dir=run_dir,
        meta=meta,
        description=description,
        variants={v: grouped[v] for v in order},
        notes=notes,
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


# --- detail for the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Blocker:
    """One normalised root-blocker statement of a variant, with what it cost and who held it."""

    fingerprint: str
    query: str
    blocked_s: float
    root_s: float
    max_blocks: int
    max_xact_age_s: float | None
    states: tuple[str, ...]
    attribution: dict[str, Any] | None


def top_blockers(run: VariantRun, limit: int = 8) -> list[Blocker]:
    """Root-blocker statements by blocked-seconds (sum over ticks of backends blocked x tick time)."""
    roots = run.roots
    if roots.empty:
        return []
    roots = roots.assign(blocked_s=roots["blocks"].fillna(0).astype(float) * roots["dt"])
    grouped = roots.groupby("fingerprint", sort=False)
    table = grouped.agg(
        blocked_s=("blocked_s", "sum"),
        root_s=("dt", "sum"),
        max_blocks=("blocks", "max"),
        max_age=("xact_age", "max"),
        query=("query", "first"),
    )
    table = table.sort_values("blocked_s", ascending=False).head(limit)
    by_fp: dict[str, dict[str, Any]] = {}
    for rec in run.attribution:
        fp = rec.get("fingerprint") or rec.get("query")
        if fp and (fp not in by_fp or (rec.get("root_for_s") or 0) > (by_fp[fp].get("root_for_s") or 0)):
            by_fp[str(fp)] = rec
    out = []
    for fp, row in table.iterrows():
        states = tuple(sorted(str(s) for s in grouped.get_group(fp)["state"].dropna().unique()))
        age = row["max_age"]
        out.append(
            Blocker(
                fingerprint=str(fp),
                query=str(row["query"] or fp),
                blocked_s=float(row["blocked_s"]),
                root_s=float(row["root_s"]),
                max_blocks=int(row["max_blocks"] or 0),
                max_xact_age_s=None if pd.isna(age) else float(age),
                states=states,
                attribution=by_fp.get(str(fp)),
            )
        )
    return out


OWN_CODE = ("contend/refserver/",)
LIBRARY_MARKERS = ("site-packages", "dist-packages", "/lib/python", "<")


def app_root(dumps: list[dict[str, Any]]) -> str | None:
    """The folder holding every non-library frame of the dumps (an external server's own code), if any."""
    folders = {
        os.path.dirname(str(frame.get("filename") or ""))
        for dump in dumps
        for thread in dump.get("threads") or ()
        for frame in thread.get("frames") or ()
        if frame.get("filename") and not any(m in str(frame["filename"]) for m in LIBRARY_MARKERS)
    }
    if not folders:
        return None
    root = os.path.commonpath(sorted(folders))
    return root + "/" if root not in ("", "/") else None


def stack_summary(dumps: list[dict[str, Any]], own: tuple[str, ...] = OWN_CODE, limit: int = 8) -> list[str]:
    """Sentences saying where server threads wait, most common first (the sampler's aggregation).

    The own code is the reference server's; for an external server (none of its frames match) it is
    the folder that holds all of its non-library frames.
    """
    from contend.sample.pyspy import summarize_stacks

    lines = summarize_stacks(dumps, own)
    if not lines and dumps:
        root = app_root(dumps)
        lines = summarize_stacks(dumps, (root,)) if root else []
    return lines[:limit]


def inflight(requests: pd.DataFrame, at: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Requests in flight at each time of ``at`` (started at or before, not yet ended)."""
    if requests.empty:
        return np.zeros(len(at), dtype=int)
    starts = np.sort(requests["t0"].to_numpy(dtype=float))
    ends = np.sort(requests["t1"].to_numpy(dtype=float))
    result: np.ndarray[Any, Any] = np.searchsorted(starts, at, side="right") - np.searchsorted(
        ends, at, side="right"
    )
    return result


def nats_series(nats: pd.DataFrame) -> pd.DataFrame:
    """Per NATS sample time: ``queue`` (ml_results pending), ``redelivered`` (summed over job consumers)."""
    if nats.empty:
        return pd.DataFrame({"t": [], "queue": [], "redelivered": []})
    n = nats.assign(t=nats["t"].astype(float).round(0))
    queue = n[n["stream"] == RESULTS_STREAM].groupby("t")["num_pending"].max()
    jobs = n[n["stream"] != RESULTS_STREAM]
    red = jobs.pivot_table(index="t", columns=["stream", "consumer"], values="num_redelivered", aggfunc="max")
    red = red.sort_index().ffill().fillna(0).sum(axis=1) if not red.empty else pd.Series(dtype=float)
    frame = pd.DataFrame({"queue": queue, "redelivered": red}).sort_index()
    return frame.rename_axis("t").reset_index()


def iter_reps(run: RunData) -> Iterator[tuple[str, VariantRun]]:
    for name, reps in run.variants.items():
        for rep in reps:
            yield name, rep
