"""What the report shows beyond the metrics: root-blocker statements, requests in flight, NATS series."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contend.analysis.reading import RESULTS_STREAM, RunData, VariantRun, cumulative_redeliveries
from contend.analysis.waits import wait_metrics


@dataclass(frozen=True)
class Blocker:
    """One normalised root-blocker statement of a variant, with what it cost and who held it."""

    fingerprint: str
    query: str
    blocked_s: float
    """Its share of the variant's ``blocked_seconds`` (the same figure as the metric, split by root)."""
    root_s: float
    max_blocks: int
    max_xact_age_s: float | None
    states: tuple[str, ...]
    attribution: dict[str, Any] | None
    code: str = ""
    """Its sqlcommenter comment in words (``controller=… route=…``), when the statements carried one."""


def blocked_seconds(run: VariantRun) -> float:
    """The variant's ``blocked_seconds`` metric: Σ over its lock waits, clipped to load and drain."""
    return float(wait_metrics(run.waits, run.whole_window)["blocked_seconds"] or 0.0)


def top_blockers(run: VariantRun, limit: int = 8) -> list[Blocker]:
    """Root-blocker statements by blocked-seconds, most first.

    One metric, one figure: the variant's ``blocked_seconds`` (exact, from pg_locks.waitstart) is split
    among the root statements by their share of backends blocked x tick time over the same window, so
    the statements' figures add up to the metric shown in the table and the findings.
    """
    roots = run.roots
    if roots.empty:
        return []
    window = run.whole_window
    inside = roots if window is None else roots[(roots["t"] >= window[0]) & (roots["t"] <= window[1])]
    roots = inside if not inside.empty else roots
    weight = roots["blocks"].fillna(0).astype(float) * roots["dt"]
    total_weight = float(weight.sum())
    scale = blocked_seconds(run) / total_weight if total_weight > 0 else 0.0
    roots = roots.assign(blocked_s=weight * scale)
    grouped = roots.groupby("fingerprint", sort=False)
    table = grouped.agg(
        blocked_s=("blocked_s", "sum"),
        root_s=("dt", "sum"),
        max_blocks=("blocks", "max"),
        max_age=("xact_age", "max"),
        query=("query", "first"),
        code=("code", "first"),
    )
    table = table.sort_values("blocked_s", ascending=False).head(limit)
    by_fp: dict[str, dict[str, Any]] = {}

    def rank(rec: dict[str, Any]) -> tuple[bool, float]:
        # A record with its holder's stack first (a short-held row's holders are dumped only now
        # and then, the per-process dump budget), then the one that stayed root longest.
        return rec.get("stack") is not None, float(rec.get("root_for_s") or 0)

    for rec in run.attribution:
        fp = rec.get("fingerprint") or rec.get("query")
        if fp and (fp not in by_fp or rank(rec) > rank(by_fp[fp])):
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
                code=str(row["code"]) if isinstance(row["code"], str) else "",
            )
        )
    return out


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
    """Per NATS sample time: ``queue`` (ml_results pending), ``redelivered`` (redeliveries so far,
    summed over job consumers: cumulative, see ``cumulative_redeliveries``)."""
    if nats.empty:
        return pd.DataFrame({"t": [], "queue": [], "redelivered": []})
    n = nats.assign(t=nats["t"].astype(float).round(0))
    queue = n[n["stream"] == RESULTS_STREAM].groupby("t")["num_pending"].max()
    jobs = cumulative_redeliveries(n)
    red = jobs.pivot_table(index="t", columns=["stream", "consumer"], values="redelivered", aggfunc="max")
    red = red.sort_index().ffill().fillna(0).sum(axis=1) if not red.empty else pd.Series(dtype=float)
    frame = pd.DataFrame({"queue": queue, "redelivered": red}).sort_index()
    return frame.rename_axis("t").reset_index()


def iter_reps(run: RunData) -> Iterator[tuple[str, VariantRun]]:
    for name, reps in run.variants.items():
        for rep in reps:
            yield name, rep
