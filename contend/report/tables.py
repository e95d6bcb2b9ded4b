"""summary.json to table rows and sentences, shared by the HTML and the markdown renderers (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contend.diagnosis.findings import KIND_WORDS, KINDS
from contend.metrics import BETTER, MEANINGS, PHASE_SPLIT, named_metric

# The verdict table, in the shape of the seed's before/after table (PR #1261's runbook). Postgres and
# queue figures cover the load and its drain; the load and drain apart are under "Other metrics".
VERDICT_ROWS: tuple[tuple[str, str], ...] = (
    ("edges_max", "edges (blocker chain) max"),
    ("edges_p95", "edges p95"),
    ("blocked_max", "blocked backends max"),
    ("blocked_p95", "blocked backends p95"),
    ("depth_max", "wait-chain depth max"),
    ("idle_in_tx_max", "idle-in-tx holders max"),
    ("idle_in_tx_max_age_s", "idle-in-tx oldest (s)"),
    ("lock_waits", "lock waits (distinct)"),
    ("blocked_seconds", "blocked seconds (from waitstart)"),
    ("lock_wait_max_s", "lock wait max (s)"),
    ("posts", "result POSTs ok / total"),
    ("latency_p50_s", "POST latency p50 (s)"),
    ("latency_p95_s", "POST latency p95 (s)"),
    ("latency_p99_s", "POST latency p99 (s)"),
    ("latency_max_s", "POST latency max (s)"),
    ("results_accepted_per_s", "results accepted / s"),
    ("results_processed_per_s", "results processed / s"),
    ("drain_s", "drain after the last POST (s)"),
    ("duplicate_results", "duplicate results"),
    ("redeliveries", "NATS redeliveries"),
    ("timeouts", "timeouts"),
)
# What Postgres itself logged and the server errors: shown when some variant has any.
SERVER_ROWS: tuple[tuple[str, str], ...] = (
    ("pg_deadlocks", "Postgres: deadlock detected"),
    ("pg_statement_timeouts", "Postgres: statement timeouts"),
    ("pg_too_many_clients", "Postgres: too many clients"),
    ("http_5xx", "server errors (HTTP 5xx)"),
    ("http_5xx_at_pg_error", "5xx while Postgres logged an error"),
)
# The cross-layer wait-for graph's counts: shown when some variant has any.
GRAPH_ROWS: tuple[tuple[str, str], ...] = (
    ("cross_layer_deadlocks", "cross-layer deadlocks (Python + Postgres)"),
    ("python_lock_waiters_max", "threads on one Python lock, max"),
    ("idle_in_tx_blocked_in_app_max", "idle in tx, blocked in the app, max"),
)
# Shown after the seed's rows only when they say something: fairness when the target has several jobs.
FAIRNESS_ROWS: tuple[tuple[str, str], ...] = (
    ("starved_jobs", "starved jobs (no result)"),
    ("first_result_s_p50", "first result p50 (s)"),
    ("first_result_s_max", "first result max (s)"),
)
# The pull workers' image downloads: shown when some variant loaded images.
IMAGE_ROWS: tuple[tuple[str, str], ...] = (
    ("image_loads", "task images loaded"),
    ("image_load_failed", "task images failed"),
    ("image_load_p50_s", "image download p50 (s)"),
    ("image_load_p95_s", "image download p95 (s)"),
    ("image_mb", "images loaded (MB)"),
)
LOST_ROW = ("lost_updates", "lost count updates")
OTHER_ROWS: tuple[tuple[str, str], ...] = (
    LOST_ROW,
    ("post_ok_ratio", "POST ok ratio"),
    ("jobs_started", "jobs with a result"),
    ("requests_total", "requests (all kinds)"),
    ("requests_failed", "requests failed"),
    ("dup_tasks", "duplicate tasks received"),
    ("drain_timed_out", "drain timed out"),
    ("job_done_s", "last job final (s)"),
    ("queue_max", "result queue max"),
    ("lock_wait_p50_s", "lock wait p50 (s)"),
    ("lock_wait_p95_s", "lock wait p95 (s)"),
    ("pg_lock_waits_logged", "lock waits Postgres logged (> deadlock_timeout)"),
    ("lock_wait_coverage", "of those, seen by the sampler"),
    ("sampler_cost_ms_p95", "sampler query p95 (ms)"),
    ("sampler_late_ms_p95", "sampler lateness p95 (ms)"),
    *((f"{m}_{phase}", f"{m} ({phase} only)") for m in PHASE_SPLIT for phase in ("load", "drain")),
)
assert all(metric in MEANINGS for metric, _ in OTHER_ROWS + SERVER_ROWS + GRAPH_ROWS + IMAGE_ROWS)


def fmt(value: Any, metric: str = "") -> str:
    """Format a metric value for a human: counts as integers, seconds and rates to 3 figures."""
    if value is None:
        return "–"
    if metric == "post_ok_ratio":
        return f"{value:.0%}"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 10):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Cell:
    value: str
    spread: str = ""
    delta: str = ""
    tone: str = ""  # "better", "worse", "noise" or ""
    real: bool | None = None


@dataclass(frozen=True)
class Row:
    metric: str
    label: str
    cells: tuple[Cell, ...]


def _tone(metric: str, abs_: float, real: bool | None) -> str:
    if real is False:
        return "noise"
    direction = BETTER.get(metric.split("{")[0], 0) * (1 if abs_ > 0 else -1 if abs_ < 0 else 0)
    return "better" if direction > 0 else "worse" if direction < 0 else ""


def _delta_text(metric: str, delta: dict[str, Any]) -> str:
    abs_ = delta["abs"]
    if not abs_:
        return "±0"
    text = ("+" if abs_ > 0 else "−") + fmt(abs(abs_), metric if metric != "post_ok_ratio" else "")
    if metric == "post_ok_ratio":
        text = ("+" if abs_ > 0 else "−") + f"{abs(abs_) * 100:.0f} pts"
    rel = delta.get("rel")
    if rel is not None and metric != "post_ok_ratio":
        # From a near-zero baseline a percentage explodes (+39672 %): past doubling, say the factor.
        text += f", ×{1 + rel:.3g}" if rel >= 1 else f", {rel:+.0%}".replace("-", "−")
    if (ci := delta.get("ci")) and None not in ci:
        # The 95 % bootstrap interval of the difference (repetitions >= 3).
        text += f" [95% {ci[0]:+.3g} to {ci[1]:+.3g}]".replace("-", "−")
    return text


def _cell(entry: dict[str, Any], metric: str) -> Cell:
    metrics = entry["metrics"]
    if metric == "posts":
        ok, total = metrics.get("posts_ok"), metrics.get("posts_total")
        delta = entry["deltas"].get("posts_ok")
        return Cell(
            value=f"{fmt(ok)} / {fmt(total)}",
            delta=_delta_text("posts_ok", delta) if delta else "",
            tone=_tone(
                "post_ok_ratio", entry["deltas"].get("post_ok_ratio", {}).get("abs") or 0, delta.get("real")
            )
            if delta
            else "",
            real=delta.get("real") if delta else None,
        )
    value = metrics.get(metric)
    spread = entry.get("spread", {}).get(metric)
    delta = entry["deltas"].get(metric)
    # A drain cut by drain_timeout_s is a lower bound: the workers were still busy.
    cut = " (timed out)" if metric == "drain_s" and metrics.get("drain_timed_out") else ""
    return Cell(
        value=fmt(value, metric) + cut,
        spread=f"{fmt(spread[0], metric)}–{fmt(spread[1], metric)}"
        if spread and spread[0] != spread[1]
        else "",
        delta=_delta_text(metric, delta) if delta else "",
        tone=_tone(metric, delta["abs"] or 0, delta.get("real")) if delta else "",
        real=delta.get("real") if delta else None,
    )


def verdict_rows(summary: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The verdict table's rows: the seed's first, then what this run has to say beyond them.

    Fairness when a variant's target had several jobs; lost count updates when some were lost or
    the variants differ in PROGRESS_LOCK (then the zeros are the finding).
    """
    metrics = [e["metrics"] for e in summary["variants"].values()]
    jobs = max(((m.get("jobs_started") or 0) + (m.get("starved_jobs") or 0) for m in metrics), default=0)
    lost = any(m.get("lost_updates") for m in metrics) or "PROGRESS_LOCK" in differing(summary)
    server = any(m.get(metric) for m in metrics for metric, _ in SERVER_ROWS)
    graph = any(m.get(metric) for m in metrics for metric, _ in GRAPH_ROWS)
    images = any(m.get("image_loads") is not None for m in metrics)
    posted = any(m.get("posts_total") for m in metrics)
    seed = VERDICT_ROWS if posted else tuple(r for r in VERDICT_ROWS if r[0] not in POST_ROWS)
    return (seed + name_rows(summary) + (FAIRNESS_ROWS if jobs > 1 else ()) + ((LOST_ROW,) if lost else ())
            + (IMAGE_ROWS if images else ()) + (GRAPH_ROWS if graph else ())
            + (SERVER_ROWS if server else ()))


POST_ROWS = frozenset(("posts", "latency_p50_s", "latency_p95_s", "latency_p99_s", "latency_max_s",
                       "results_accepted_per_s", "results_processed_per_s", "duplicate_results"))
"""Rows of Antenna's result POSTs: left out when no variant posted any (your own load)."""


def request_names(summary: dict[str, Any]) -> list[str]:
    """The request names of your own load the report lists, most requests first (folded rows apart)."""
    counts: dict[str, int] = {}
    for entry in summary["variants"].values():
        for row in entry.get("requests_by_name") or []:
            if not row["name"].startswith("("):
                counts[row["name"]] = counts.get(row["name"], 0) + int(row["requests_total"] or 0)
    return sorted(counts, key=lambda n: -counts[n])[:NAMES_IN_VERDICT]


NAMES_IN_VERDICT = 8


def name_rows(summary: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Verdict rows of the request names of your own load: p95 and failures of each."""
    return tuple(row for name in request_names(summary) for row in (
        (named_metric("latency_p95_s", name), f"{name}: p95 (s)"),
        (named_metric("requests_failed", name), f"{name}: failed"),
    ))


def rows(summary: dict[str, Any], which: tuple[tuple[str, str], ...] = VERDICT_ROWS) -> list[Row]:
    """The table rows: one per metric, one cell per variant (in summary order)."""
    entries = list(summary["variants"].values())
    return [Row(metric, label, tuple(_cell(e, metric) for e in entries)) for metric, label in which]


HEADLINE = (
    ("edges_max", "edges max"),
    ("blocked_max", "blocked max"),
    ("idle_in_tx_max", "idle-in-tx max"),
    ("latency_p95_s", "POST p95 (s)"),
    ("results_accepted_per_s", "results/s"),
    ("drain_s", "drain (s)"),
)


def headlines(summary: dict[str, Any]) -> list[str]:
    """One sentence per non-baseline variant: its headline figures against the baseline's."""
    base_name = summary["baseline"]
    base = summary["variants"].get(base_name)
    out = []
    for name, entry in summary["variants"].items():
        if base is None or name == base_name:
            continue
        m, b = entry["metrics"], base["metrics"]
        status = "" if entry["status"] == "ok" else f" [{entry['status']}]"
        if all(v is None for v in m.values()):
            out.append(f"{name}{status}: no records")
            continue
        posted = m.get("posts_total") or b.get("posts_total")
        parts = [
            f"{label} {fmt(b.get(k), k)} → {fmt(m.get(k), k)}"
            for k, label in HEADLINE
            if (m.get(k) is not None or b.get(k) is not None) and (posted or k not in POST_ROWS)
        ]
        if posted:
            parts.insert(
                3,
                f"POSTs ok {fmt(b.get('posts_ok'))}/{fmt(b.get('posts_total'))} → "
                f"{fmt(m.get('posts_ok'))}/{fmt(m.get('posts_total'))}",
            )
        for request in request_names(summary)[:1]:  # your own load: its busiest request name
            key = named_metric("latency_p95_s", request)
            parts.append(f"{request} p95 (s) {fmt(b.get(key), key)} → {fmt(m.get(key), key)}")
        out.append(f"{name} vs {base_name}{status}: " + ", ".join(parts))
    return out


def first_findings(summary: dict[str, Any]) -> str:
    """``Time to the first finding, from the load's start: logs-on: cross-layer deadlock 5.0 s, ...``,
    from each variant's ``first_finding_s`` (what the live display showed); empty when none has one."""
    parts = []
    for name, entry in summary["variants"].items():
        first = entry.get("first_finding_s") or {}
        if first:
            order = sorted(first, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
            kinds = ", ".join(f"{KIND_WORDS.get(k, k)} {float(first[k]):.1f} s" for k in order)
            parts.append(f"{name}: {kinds}")
    return "Time to the first finding, from the load's start: " + "; ".join(parts) + "." if parts else ""


def differing(summary: dict[str, Any]) -> set[str]:
    """The flag and parameter names whose values differ between variants (what a comparison is about)."""
    entries = list(summary["variants"].values())
    keys = {k for e in entries for k in (*e.get("flags", {}), *e.get("params", {}))}
    return {k for k in keys if len({str(_setting(e, k)) for e in entries}) > 1}


def _setting(entry: dict[str, Any], key: str) -> Any:
    return entry.get("flags", {}).get(key, entry.get("params", {}).get(key))


def flags_text(entry: dict[str, Any], only: set[str] | None = None) -> str:
    """``FLAG=value, param=value``; with ``only``, just those names (all of them when none differ)."""
    items = [*entry.get("flags", {}).items(), *entry.get("params", {}).items()]
    if only:
        items = [(k, v) for k, v in items if k in only]
    return ", ".join(f"{k}={v}" for k, v in items) or "(defaults)"


def common_text(summary: dict[str, Any]) -> str:
    """The settings every variant shares, once."""
    entries = list(summary["variants"].values())
    if not entries:
        return ""
    varying = differing(summary)
    items = [*entries[0].get("flags", {}).items(), *entries[0].get("params", {}).items()]
    return ", ".join(f"{k}={v}" for k, v in items if k not in varying)
