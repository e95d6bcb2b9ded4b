"""A loaded run and its summary to one self-contained HTML page (jinja2, autoescape on)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import numpy as np

from contend import __version__
from contend.analysis import RunData, VariantRun, iter_reps, stack_summary, top_blockers
from contend.analysis.findings import variant_items
from contend.diagnosis.threads import dump_basis, short_path
from contend.report import figures
from contend.report.tables import (
    OTHER_ROWS,
    common_text,
    differing,
    first_findings,
    flags_text,
    fmt,
    headlines,
    rows,
    verdict_rows,
)
from contend.report.waitpicture import finding_picture

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("contend.report", "templates"),
    # Query texts, application names and stacks come from the database and the server: escape all.
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["ticks"] = lambda text: markupsafe.Markup(
    re.sub(r"`([^`]+)`", r"<code>\1</code>", str(markupsafe.escape(text))))
"""Escape a sentence, then show its `code` spans as code."""
STACK_FRAMES = 14
FINGERPRINT_CHARS = 240


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def _when(meta: dict[str, Any]) -> str:
    """``2026-01-01 00:00:00 UTC, 130 s`` from the run meta (ISO 8601 strings or epoch seconds)."""
    started, ended = _epoch(meta.get("started")), _epoch(meta.get("ended"))
    if started is None:
        return "start unknown"
    text = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if ended is not None:
        text += f", {ended - started:.0f} s"
    return text


PHASE_LABELS = {
    "stack_up": "stack up", "samplers_up": "samplers up", "warm_up": "warm-up", "load": "load",
    "drain": "drain", "cool_down": "cool-down", "samplers_down": "samplers down",
    "final_counts": "final counts", "stack_down": "stack down",
}


def time_breakdown(run: RunData) -> str:
    """Say where the run's time went: each phase summed over the variants, then the report.

    ``"Where the 148 s went (2 variant runs): stack up 48.2 s, ..., stack down 4.1 s; report 6.0 s;
    other 3.2 s"``, empty when the variants recorded no phases (a run from before they were timed).
    """
    totals: dict[str, float] = {}
    reps = [rep for _, rep in iter_reps(run)]
    for rep in reps:
        for name, seconds in (rep.meta.get("phase_s") or {}).items():
            totals[name] = totals.get(name, 0.0) + float(seconds)
    if not totals:
        return ""
    order = [*PHASE_LABELS, *sorted(set(totals) - set(PHASE_LABELS))]
    parts = [f"{PHASE_LABELS.get(name, name)} {totals[name]:.1f} s" for name in order if name in totals]
    report_s = run.meta.get("report_s")
    started, ended = _epoch(run.meta.get("started")), _epoch(run.meta.get("ended"))
    text = f"Where the time went ({len(reps)} variant run{'s' if len(reps) != 1 else ''}"
    if started is not None and ended is not None:
        text += f", {ended - started:.0f} s to the last variant's end"
    text += "): " + ", ".join(parts)
    if report_s is not None:
        text += f"; report {float(report_s):.1f} s"
    if started is not None and ended is not None:
        # The run meta's times have whole seconds: other is rounded the same way.
        text += f"; other {max(0.0, ended - started - sum(totals.values())):.0f} s"
    return text + "."


def _who(att: dict[str, Any]) -> str:
    role = att.get("role") or "client"
    parts = [f"{role} process {att.get('client_pid', '?')} thread {att.get('thread_id', '?')}"]
    if att.get("backend_pid") is not None:
        parts.append(f"backend {att['backend_pid']}")
    if att.get("state"):
        parts.append(f"{att['state']} for {fmt(att.get('root_for_s'))} s")
    if att.get("blocks") is not None:
        parts.append(f"blocking {att['blocks']}")
    return ", ".join(parts)


def _stack(frames: list[dict[str, Any]] | None) -> str:
    if not frames:
        return ""
    inner = frames[:STACK_FRAMES]
    lines = [f"{f.get('name')}  ({f.get('filename')}:{f.get('line')})" for f in reversed(inner)]
    if len(frames) > STACK_FRAMES:
        lines.insert(0, f"... {len(frames) - STACK_FRAMES} outer frames")
    return "\n".join(lines)


def _cost(rep: VariantRun) -> str:
    ticks = rep.ticks
    if ticks.empty:
        return ""
    t = ticks["t"].to_numpy(dtype=float)
    span = float(t[-1] - t[0]) if len(t) > 1 else 0.0
    rate = f"{(len(t) - 1) / span:.1f} Hz" if span > 0 else "one tick"
    cost = ticks["cost_ms"].dropna().astype(float)
    late = ticks["late_ms"].dropna().astype(float)
    calls = ticks["blocking_calls"].dropna().astype(float).sum()
    text = f"{len(t):,} Postgres ticks at {rate}"
    if not cost.empty:
        text += (
            f"; query time per tick p50 {fmt(cost.median())} ms, p95 {fmt(cost.quantile(0.95))} ms, "
            f"max {fmt(cost.max())} ms ({cost.sum() / 1000 / max(span, 1e-9):.1%} of one core)"
        )
    if not late.empty:
        text += f"; lateness p95 {fmt(late.quantile(0.95))} ms"
    text += f"; {int(calls):,} pg_blocking_pids() calls; py-spy: {dump_basis(rep.pyspy)}"
    return text + _graph_cost(rep.waitgraph) + "."


def _graph_cost(records: list[dict[str, Any]]) -> str:
    """The wait-for graph's share: its dumps with locals (count, py-spy CPU), the graphs recorded."""
    dumps = sum(int(r.get("locals_dumps") or 0) for r in records)
    if not records:
        return ""
    text = f"; {len(records):,} wait-for graphs recorded"
    if dumps:
        cpu = sum(float(r.get("locals_cpu_s") or 0.0) for r in records)
        text += (f", {dumps:,} py-spy dumps with locals for them ({fmt(cpu)} s CPU, "
                 f"{fmt(cpu / dumps * 1000)} ms each)")
    sockets_s = sum(float(r.get("sockets_s") or 0.0) for r in records)
    if sockets_s:
        text += f", {fmt(sockets_s)} s reading which threads wait on which socket for them"
    return text


def _link(path: Path, out_dir: Path) -> str:
    return os.path.relpath(path, out_dir)


THREAD_ROWS = 8
THREAD_COLUMNS = ("role", "function", "where", "backend", "transaction", "waits for")


def _thread_row(thread: dict[str, Any]) -> list[str]:
    age = thread.get("xact_age_s")
    return [str(thread.get("role") or "-"), str(thread.get("function") or "?"),
            f"{short_path(thread.get('file'))}:{thread.get('line') or '?'}",
            str(thread.get("backend_pid") or "-"), "-" if age is None else f"{float(age):.1f} s",
            str(thread.get("waits_for") or "-")]


def finding_items(rep: VariantRun, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The variant's findings for the page: each sentence with its threads' table, the first finding
    of the wait-for graph with its picture, then the sentences about the variant as a whole (the
    comparison with the baseline, a load without request records), alone."""
    texts = entry.get("findings_text") or []
    if entry.get("status") == "failed":
        return [{"text": text, "threads": [], "svg": None} for text in texts]
    items, drawn = [], False
    for item in variant_items(rep, entry.get("findings") or []):
        finding = item["finding"] or {}
        svg = None if drawn else finding_picture(finding)
        drawn = drawn or svg is not None
        threads = [_thread_row(t) for t in finding.get("threads") or ()]
        if len(threads) > THREAD_ROWS:
            more = len(threads) - THREAD_ROWS
            threads = [*threads[:THREAD_ROWS], ["", f"… {more} more", "", "", "", ""]]
        items.append({"text": item["text"], "threads": threads, "svg": svg})
    return items + [{"text": text, "threads": [], "svg": None} for text in texts[len(items):]]


def variant_context(
    name: str, reps: list[VariantRun], entry: dict[str, Any], baseline: str, out_dir: Path, varying: set[str]
) -> dict[str, Any]:
    rep = reps[0]
    blockers = []
    for b in top_blockers(rep) if entry["status"] != "failed" else []:  # a failed variant has no figures
        att = None
        if b.attribution:
            att = {"who": _who(b.attribution), "stack": _stack(b.attribution.get("stack"))}
        blockers.append(
            {
                "fingerprint": b.fingerprint
                if len(b.fingerprint) <= FINGERPRINT_CHARS
                else b.fingerprint[:FINGERPRINT_CHARS] + " …",
                "example": b.query[:300] if b.query != b.fingerprint else "",
                "code": b.code,
                "states": b.states,
                "attribution": att,
                "blocked_s": fmt(b.blocked_s),
                "root_s": fmt(b.root_s),
                "max_blocks": b.max_blocks,
                "max_age": fmt(b.max_xact_age_s),
            }
        )
    has_data = not (rep.requests.empty and rep.ticks.empty and rep.nats.empty)
    return {
        "name": name,
        "is_baseline": name == baseline,
        "status": entry["status"],
        "reason": entry["reason"],
        "flags": flags_text(entry, varying),
        "all_flags": flags_text(entry),
        "repetitions": entry["repetitions"],
        "timeline_png": figures.timeline(rep) if has_data else None,
        "blockers": blockers,
        "attributed": any(b["attribution"] for b in blockers),
        "stacks": stack_summary(rep.pyspy),
        "stack_basis": dump_basis(rep.pyspy),
        "speedscope": [_link(p, out_dir) for p in rep.speedscope],
        "cost": _cost(rep),
        "findings": finding_items(rep, entry),
        "mapping": entry.get("mapping"),
        "notes": entry.get("notes", []),
        "by_name": [{k: v if k in ("name", "method") else fmt(v, k) for k, v in row.items()}
                    for row in entry.get("requests_by_name") or []],
    }


def render_html(
    run: RunData,
    summary: dict[str, Any],
    out_dir: Path,
    title: str | None = None,
    sources: list[str] | None = None,
) -> str:
    """Return the report page for ``run``; links (speedscope files) are relative to ``out_dir``."""
    baseline = summary["baseline"]
    variants = [
        variant_context(name, reps, summary["variants"][name], baseline, out_dir, differing(summary))
        for name, reps in run.variants.items()
    ]
    latencies = {
        name: np.concatenate(
            [r.requests.loc[r.requests["kind"] == "result", "latency"].to_numpy(dtype=float) for r in reps]
        )
        for name, reps in run.variants.items()
    }
    meta = run.meta
    environment = [
        (k, meta[k]) for k in ("contend_version", "python", "postgres", "nats", "cpus") if meta.get(k)
    ]
    return _ENV.get_template("report.html.j2").render(
        title=title or run.name,
        description=run.description,
        status=summary["status"],
        when=_when(meta),
        time_breakdown=time_breakdown(run),
        first_findings=first_findings(summary),
        baseline=baseline,
        sweep=run.sweep,
        variants=variants,
        thread_columns=THREAD_COLUMNS,
        headlines=headlines(summary),
        verdict=rows(summary, verdict_rows(summary)),
        other=rows(summary, OTHER_ROWS),
        repeated=any(e["repetitions"] > 1 for e in summary["variants"].values()),
        latency_png=figures.latency_distributions(latencies),
        sweep_png=figures.sweep(summary, run.sweep) if run.sweep else None,
        environment=environment,
        common=common_text(summary) if differing(summary) else "",
        notes=run.notes,
        sources=sources or [],
        version=__version__,
    )
