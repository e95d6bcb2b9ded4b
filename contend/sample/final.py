"""After the load: the counts each job's progress records against the rows the result workers wrote.

A progress write that reads ``jobs_job.progress``, adds a result's counts and saves it back loses
the counts of any write that committed in between (``PROGRESS_LOCK=none``, ``none_full_save``). The
tables the workers insert into keep the truth, so one read after the load shows every lost count
update (docs/metrics.md, "Lost count updates"). Reference server only: the tables are its own.

The read waits until the result queue has drained and two reads a second apart agree, because a
result task between its inserts and its progress write would look like a lost update.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contend.errors import SamplerError
from contend.redact import redact_message
from contend.sample.nats import RESULTS_STREAM, fetch_jsz, records_from_jsz
from contend.sample.pg import connect

FINAL_STATE = "final_state.json"
STATEMENT_TIMEOUT = "10s"
RECORDED = {"process": ("processed", "remaining", "failed"),
            "results": ("captures", "detections", "classifications")}

# One statement, so one snapshot. The job -> image link is the fixtures' naming (contend/refserver/
# fixtures.py): job "contend job <n>" owns the images "trap-<n-1>/..." of its project. A saved result
# leaves a detection row per image (a null-bbox one when it found nothing), so ``captures`` counts
# distinct images with a detection, however often a result for the same image was saved.
COUNTS_SQL = r"""
WITH jobs AS (
  SELECT id, status, progress, project_id,
         'trap-' || (substring(name FROM '(\d+)$')::int - 1) || '/%%' AS image_path
    FROM jobs_job WHERE id = ANY(%(jobs)s)
), images AS (
  SELECT j.id AS job_id, s.id AS image_id
    FROM jobs j JOIN main_sourceimage s ON s.project_id = j.project_id AND s.path LIKE j.image_path
), saved AS (
  SELECT i.job_id, count(DISTINCT d.source_image_id) AS captures,
         count(DISTINCT d.id) FILTER (WHERE d.bbox IS NOT NULL) AS detections,
         count(c.id) AS classifications
    FROM images i JOIN main_detection d ON d.source_image_id = i.image_id
    LEFT JOIN main_classification c ON c.detection_id = d.id
   GROUP BY i.job_id
)
SELECT j.id AS job, j.status, j.progress,
       (SELECT count(*) FROM images i WHERE i.job_id = j.id) AS images,
       (SELECT total FROM ref_job_image_total t WHERE t.job_id = j.id) AS state_total,
       (SELECT count(*) FROM ref_pending_image p WHERE p.job_id = j.id AND p.stage = 'process')
         AS pending_process,
       (SELECT count(*) FROM ref_failed_image f WHERE f.job_id = j.id) AS failed,
       coalesce(s.captures, 0) AS captures, coalesce(s.detections, 0) AS detections,
       coalesce(s.classifications, 0) AS classifications
  FROM jobs j LEFT JOIN saved s ON s.job_id = j.id
 ORDER BY j.id
"""


def recorded_counts(progress: dict[str, Any]) -> dict[str, int | None]:
    """Return the stage params of a job's progress JSON that count images and results."""
    out: dict[str, int | None] = {}
    stages = {s.get("key"): s for s in progress.get("stages") or ()}
    for stage, keys in RECORDED.items():
        params = {p.get("key"): p.get("value") for p in (stages.get(stage) or {}).get("params") or ()}
        for key in keys:
            value = params.get(key)
            out[key] = int(value) if isinstance(value, int | float) else None
    return out


def _job_entry(row: dict[str, Any]) -> dict[str, Any]:
    progress = row["progress"] if isinstance(row["progress"], dict) else json.loads(row["progress"] or "{}")
    cleaned = row["state_total"] is None  # a completed job's pending-image tables are deleted
    return {
        "status": row["status"],
        "images": row["images"],
        "recorded": recorded_counts(progress),
        "true": {
            # Every image was processed when the job completed and its bookkeeping went away.
            "processed": row["images"] if cleaned else row["state_total"] - row["pending_process"],
            "failed": None if cleaned else row["failed"],
            "captures": row["captures"],
            "detections": row["detections"],
            "classifications": row["classifications"],
        },
    }


def read_counts(conn: psycopg.Connection[Any], job_ids: Sequence[int]) -> dict[str, Any]:
    """Return, per job id (as a string, the JSON key), its recorded and its true counts."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(COUNTS_SQL, {"jobs": list(job_ids)})
        return {str(row["job"]): _job_entry(row) for row in cur.fetchall()}


def results_pending(monitor_url: str | None) -> int | None:
    """Return the results queued and not yet taken by a worker (None when NATS cannot tell)."""
    if monitor_url is None:
        return None
    try:
        records = records_from_jsz(time.time(), fetch_jsz(monitor_url))
    except SamplerError:
        return None
    return sum(int(r["num_pending"] or 0) for r in records if r["stream"] == RESULTS_STREAM)


def probe_final_state(
    dsn: str,
    job_ids: Sequence[int],
    out: Path,
    *,
    nats_monitor_url: str | None = None,
    settle_timeout_s: float = 60.0,
    interval_s: float = 1.0,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Wait for the result workers to finish, read the counts, write them to ``out`` and return them.

    Settled means: no result left in the queue and two reads ``interval_s`` apart agree. After
    ``settle_timeout_s`` (or when ``stop`` is set) the last read is written with ``settled`` false.
    Raises SamplerError when Postgres cannot be read.
    """
    stop = stop or threading.Event()
    started = clock()
    try:
        with connect(dsn) as conn:
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
            previous = read_counts(conn, job_ids)
            settled = False
            while not settled and clock() - started < settle_timeout_s and not stop.wait(interval_s):
                jobs = read_counts(conn, job_ids)
                settled = jobs == previous and not results_pending(nats_monitor_url)
                previous = jobs
    except psycopg.Error as exc:
        raise SamplerError(f"cannot read the final job counts: {redact_message(exc)}",
                           hint="the reference server's tables must exist in the database") from None
    state = {"t": clock(), "settled": settled, "waited_s": round(clock() - started, 3), "jobs": previous}
    out.write_text(json.dumps(state, indent=2) + "\n")
    return state
