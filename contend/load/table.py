"""The summary table of a load run (rich), for ``contend load``."""

from __future__ import annotations

from rich.table import Table

from contend.load.records import LoadSummary


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_table(summary: LoadSummary) -> Table:
    """Return one row per request kind: ok, failed, p50/p95/p99/max seconds, and the errors seen."""
    table = Table(title=f"load: {summary.status}, {summary.elapsed_s:.1f} s, "
                        f"{summary.results_posted} results posted ({summary.results_per_s:.1f}/s)")
    for column in ("kind", "ok", "failed", "p50 s", "p95 s", "p99 s", "max s", "errors"):
        table.add_column(column, justify="left" if column in ("kind", "errors") else "right")
    for kind, t in summary.kinds.items():
        errors = ", ".join(f"{name} x{n}" for name, n in sorted(t.errors.items(), key=lambda e: -e[1])[:3])
        table.add_row(kind, str(t.ok), str(t.failed), _s(t.p50_s), _s(t.p95_s), _s(t.p99_s), _s(t.max_s),
                      errors)
    if summary.tasks_received:
        table.caption = (f"tasks received {summary.tasks_received}, seen before {summary.dup_tasks}; "
                         f"results posted again {summary.dup_results}")
    return table
