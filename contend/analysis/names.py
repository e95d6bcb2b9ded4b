"""Per-name request figures: the requests of your own load (a locustfile's or a command's records
carry a ``name``), counted and timed per name.

``name_metrics`` gives the flat metrics a threshold can name (``latency_p95_s{name="/api/orders"}``,
docs/ci-gating.md); ``name_rows`` the report's table: the names with the most requests, the rest
folded into one row.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from contend.analysis.reading import VariantRun
from contend.metrics import NAMED, named_metric
from contend.stats import quantile

TOP_NAMES = 8
"""Names the report lists one by one (by request count); the others share one row."""


def _named(run: VariantRun) -> pd.DataFrame:
    req = run.requests
    if req.empty or "name" not in req.columns:
        return req.iloc[0:0]
    return req[req["name"].notna()]


def _figures(group: pd.DataFrame) -> dict[str, float | int | None]:
    latencies = sorted(group["latency"].astype(float).tolist())
    return {
        "requests_total": len(group),
        "requests_failed": int(group["error"].notna().sum()),
        "latency_p50_s": quantile(latencies, 0.50),
        "latency_p95_s": quantile(latencies, 0.95),
        "latency_p99_s": quantile(latencies, 0.99),
        "latency_max_s": latencies[-1] if latencies else None,
    }


def name_metrics(run: VariantRun) -> dict[str, float | int | None]:
    """Return ``<metric>{name="<name>"}`` for every request name of the run and every metric of NAMED."""
    out: dict[str, float | int | None] = {}
    for name, group in _named(run).groupby("name", sort=True):
        for metric, value in _figures(group).items():
            out[named_metric(metric, str(name))] = value
    assert all(k.split("{")[0] in NAMED for k in out)
    return out


def name_rows(run: VariantRun, top: int = TOP_NAMES) -> list[dict[str, Any]]:
    """Return the report's rows: the ``top`` names by request count, then one row for the rest."""
    named = _named(run)
    if named.empty:
        return []
    counts = named.groupby("name").size().sort_values(ascending=False, kind="stable")
    shown = [str(n) for n in counts.index[:top]]
    rows = []
    for name in shown:
        group = named[named["name"] == name]
        methods = sorted({str(m) for m in group["method"].dropna()}) if "method" in group else []
        rows.append({"name": name, "method": ",".join(methods), **_figures(group)})
    rest = named[~named["name"].isin(shown)]
    if not rest.empty:
        folded = len(counts) - len(shown)
        rows.append({"name": f"({folded} other names)", "method": "", **_figures(rest)})
    return rows
