"""Reading a run folder: its raw records (docs/records.md) as pandas frames.

This is the only reader of a run folder. Everything here tolerates what a killed run leaves behind:
a torn last line (contend.jsonl), a missing file, a variant without ``meta.json``. What was wrong is kept in
``notes`` so the report can say it.
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from contend.analysis.waits import Wait, waits_from_ticks
from contend.diagnosis import sqlcomment
from contend.errors import ConfigError
from contend.jsonl import read_jsonl
from contend.pglog import ServerLog, read_server_log
from contend.scenario import load_scenario

REQUEST_COLUMNS = (
    "t0",
    "t1",
    "kind",
    "status",
    "recv",
    "error",
    "results",
    "tasks",
    "dup_tasks",
    "dup_results",
    "worker",
    "job",
    "name",
    "method",
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
ROOT_COLUMNS = ("t", "dt", "pid", "blocks", "state", "app", "xact_age", "fingerprint", "query", "code")
NATS_COLUMNS = (
    "t",
    "stream",
    "consumer",
    "delivered",
    "ack_floor",
    "num_pending",
    "num_ack_pending",
    "num_redelivered",
    "delivered_stream",
)
RESULTS_STREAM = "ml_results"


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
    waitgraph: list[dict[str, Any]] = field(default_factory=list)
    """``samples/waitgraph.jsonl``: the cross-layer wait-for graph of each moment stacks were taken."""
    waitgraph_recorded: bool = False
    """The samplers kept a ``waitgraph.jsonl`` (runs of an older contend have none: Python waits unknown)."""
    waits: list[Wait] = field(default_factory=list)
    """The distinct lock waits the Postgres sampler saw, timed from pg_locks.waitstart."""
    server_log: ServerLog | None = None
    """The embedded Postgres server's own log, parsed (None for an external server)."""
    interrupted: bool = False
    """The run's writer is gone while this variant still said "running" (e.g. contend was killed)."""

    @property
    def name(self) -> str:
        name = self.meta.get("name")
        return str(name) if name else self.folder.name.split("~r")[0]

    @property
    def status(self) -> str:
        status = str(self.meta.get("status") or "partial")
        return "interrupted" if status == "running" and self.interrupted else status

    @property
    def load_commands(self) -> int:
        """Command workloads of the load (``load/command-<k>.log``): a program of your own."""
        return len(list((self.folder / "load").glob("command-*.log")))

    @property
    def window(self) -> tuple[float, float] | None:
        """The load window: first request start to last request end (None without requests; the
        load phase when the load was a command that wrote no records)."""
        if self.requests.empty:
            load = self.phase("load") if self.load_commands else None
            return (float(load["start"]), float(load["end"])) if load is not None else None
        return float(self.requests["t0"].min()), float(self.requests["t1"].max())

    def phase(self, name: str) -> dict[str, Any] | None:
        """A finished phase of meta.json (``warm_up``, ``load``, ``drain``, ``cool_down``), if recorded."""
        phase = (self.meta.get("phases") or {}).get(name)
        return phase if isinstance(phase, dict) and phase.get("end") is not None else None

    @property
    def drain_window(self) -> tuple[float, float] | None:
        """Last response (the drain's start without requests) to the end of the drain, if recorded."""
        drain = self.phase("drain")
        if drain is None:
            return None
        window = self.window
        start = window[1] if window is not None else float(drain["start"])
        return start, max(start, float(drain["end"]))

    @property
    def whole_window(self) -> tuple[float, float] | None:
        """The load and its drain: first request to the end of the drain (the load window without one)."""
        window, drain = self.window, self.drain_window
        if window is None or drain is None:
            return window
        return window[0], drain[1]

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
        """``complete``; ``running`` while its writer runs; ``interrupted`` when the writer is gone and
        the folder still says running (e.g. contend was killed); else ``partial``."""
        status = self.meta.get("status")
        if status == "complete":
            return "complete"
        if status == "running":
            return "interrupted" if writer_gone(self.meta) else "running"
        return "partial"

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


def writer_gone(meta: dict[str, Any]) -> bool:
    """Tell whether the contend that wrote a run folder (meta ``pid`` and ``host``) is no longer running.

    A folder from another host, or without a pid, cannot be checked and counts as gone.
    """
    pid = meta.get("pid")
    if not isinstance(pid, int) or meta.get("host") != platform.node():
        return True
    try:
        process = psutil.Process(pid)
        started = datetime.fromisoformat(str(meta.get("started"))).timestamp()
        # A pid reused by a process started after this run is not the writer.
        return process.create_time() > started + 1.0 or process.status() == psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return True


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
                    "code": sqlcomment.words(root.get("comment")) or None,
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
        waits=waits_from_ticks(tick_rows),
        server_log=read_server_log(folder / "stack" / "postgres" / "postgres.log"),
        waitgraph=read_jsonl(samples / "waitgraph.jsonl", notes),
        waitgraph_recorded=(samples / "waitgraph.jsonl").exists(),
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
    gone = meta.get("status") == "running" and writer_gone(meta)
    for folder in folders:
        run = load_variant(folder)
        run.interrupted = gone
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


def cumulative_redeliveries(nats: pd.DataFrame) -> pd.DataFrame:
    """Per job consumer and sample: ``redelivered``, the deliveries so far beyond the first of each task.

    NATS's ``num_redelivered`` counts only redelivered messages still waiting for their ack, so it
    falls again; ``delivered`` (consumer sequence: every delivery) minus ``delivered_stream`` (the last
    stream sequence delivered: each task once, a job stream holding only its tasks) only grows.
    Records without ``delivered_stream`` (older runs) fall back to the running max of ``num_redelivered``.
    """
    jobs = nats[nats["stream"] != RESULTS_STREAM].dropna(subset=["num_redelivered"])
    if jobs.empty:
        return pd.DataFrame({"t": [], "stream": [], "consumer": [], "redelivered": []})
    jobs = jobs.sort_values("t").reindex(columns=[*jobs.columns.union(["delivered", "delivered_stream"])])
    exact = pd.to_numeric(jobs["delivered"], errors="coerce") - pd.to_numeric(
        jobs["delivered_stream"], errors="coerce")
    value = exact.where(exact.notna(), pd.to_numeric(jobs["num_redelivered"], errors="coerce")).clip(lower=0)
    frame = jobs[["t", "stream", "consumer"]].assign(redelivered=value)
    frame["redelivered"] = frame.groupby(["stream", "consumer"])["redelivered"].cummax()
    return frame
