"""Raw run-folder records to pandas frames, and frames to the metrics of ``summary.json``.

    reading   a run folder's records as frames (RunData, VariantRun), tolerant of a killed run
    metrics   the metrics of each variant and the summary.json built from them
    details   what the report shows beyond the metrics: blockers, requests in flight, NATS series

The record formats and the metric definitions are in ``docs/records.md``. Where server threads wait
(``stack_summary``) is pure and lives with the py-spy records in ``contend.diagnosis.threads``.
Import from here: ``from contend.analysis import load_run, summarize``.
"""

from __future__ import annotations

from contend.analysis.details import Blocker, inflight, iter_reps, nats_series, top_blockers
from contend.analysis.metrics import (
    ADDED_COUNTS,
    REQUEST_METRICS,
    duplicated_jobs,
    fairness,
    first_results,
    lost_updates,
    redeliveries,
    summarize,
    variant_metrics,
)
from contend.analysis.reading import (
    NATS_COLUMNS,
    REQUEST_COLUMNS,
    RESULTS_STREAM,
    ROOT_COLUMNS,
    TICK_COLUMNS,
    RunData,
    VariantRun,
    load_run,
    load_variant,
)
from contend.diagnosis.threads import LIBRARY_MARKERS, OWN_CODE, app_root, stack_summary
from contend.jsonl import read_jsonl

__all__ = [
    "ADDED_COUNTS", "LIBRARY_MARKERS", "NATS_COLUMNS", "OWN_CODE", "REQUEST_COLUMNS", "REQUEST_METRICS",
    "RESULTS_STREAM", "ROOT_COLUMNS", "TICK_COLUMNS", "Blocker", "RunData", "VariantRun", "app_root",
    "duplicated_jobs", "fairness", "first_results", "inflight", "iter_reps", "load_run", "load_variant",
    "lost_updates", "nats_series", "read_jsonl", "redeliveries", "stack_summary", "summarize",
    "top_blockers", "variant_metrics",
]
