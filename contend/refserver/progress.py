"""Progress updates of a result task, in the lock mode PROGRESS_LOCK names (Antenna's _update_job_progress).

- select_for_update (before PR #1261): ``SELECT ... FOR UPDATE``, log lines, full-row save, log line,
  COMMIT: the row is locked from the first statement to the commit.
- none (PR #1261): the same with a plain read and a save of progress/status/finished_at/updated_at.
- guarded (Antenna's current main): plain read, ``UPDATE ... SET status, finished_at WHERE id = ... AND
  status IN (<finalizable>)`` when the job completes, then a save of progress/updated_at only.
- none_full_save: plain read, full-row save (a lost-update hazard on ``logs`` too).
- optimistic: plain read, ``UPDATE ... WHERE progress = <what was read>``, retried until it applies;
  log lines outside any transaction.
- atomic: one ``UPDATE`` computing the new progress in SQL (issue #1256 option D); log lines after it.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from contend.refserver.models import FINAL_STATES, FINALIZABLE_STATES, Job

RESULT_COUNT_KEYS = ("detections", "classifications", "captures")


def is_complete(progress: dict[str, Any]) -> bool:
    stages = progress.get("stages") or []
    return bool(stages) and all(
        float(s.get("progress", 0)) >= 1.0 and s.get("status") in FINAL_STATES for s in stages
    )


def apply_stage_update(progress: dict[str, Any], stage: str, pct: float, complete_state: str,
                       params: dict[str, Any], add_counts: bool) -> tuple[dict[str, Any], bool]:
    """Return the updated progress and whether the max() guard lifted the passed percentage.

    Same rules as the SQL function ``contend_stage_update`` (migration 0002).
    """
    new = copy.deepcopy(progress)
    lifted = False
    for s in new["stages"]:
        if s["key"] != stage:
            continue
        existing = float(s.get("progress", 0))
        lifted = existing > pct
        value = max(existing, pct)
        if s.get("status") == "FAILURE":
            complete_state = "FAILURE"  # FAILURE is sticky
        s["progress"] = value
        failing = "FAILURE" if complete_state == "FAILURE" else "STARTED"
        s["status"] = complete_state if value >= 1 else failing
        by_key = {p["key"]: p for p in s.setdefault("params", [])}
        for key, val in params.items():
            if key in by_key:
                by_key[key]["value"] = (by_key[key].get("value") or 0) + val if add_counts else val
            else:
                s["params"].append({"name": key.replace("_", " ").title(), "key": key,
                                    "category": "default", "value": val})
    stages = new["stages"]
    new["summary"]["progress"] = sum(float(s.get("progress", 0)) for s in stages) / len(stages)
    if is_complete(new):
        new["summary"]["status"] = complete_state
    return new, lifted


def update_job_progress(job_id: int, stage: str, pct: float, complete_state: str, *,
                        add_counts: bool = False, **params: Any) -> bool:
    """Apply one stage update to the job row; return whether the job is now complete."""
    mode = settings.FLAGS["PROGRESS_LOCK"]
    if mode == "atomic":
        return _atomic(job_id, stage, pct, complete_state, add_counts, params)
    if mode == "optimistic":
        return _optimistic(job_id, stage, pct, complete_state, add_counts, params)
    with transaction.atomic():
        query = Job.objects.select_for_update() if mode == "select_for_update" else Job.objects
        job = query.get(pk=job_id)
        before = job_stage(job.progress, stage)
        new, _ = apply_stage_update(job.progress, stage, pct, complete_state, params, add_counts)
        if job_stage(new, stage) >= 1.0 and pct < 1.0:
            # Antenna warns only when the max() guard lifts a stage to 100 %.
            job.logger.warning(f"Stage '{stage}' lifted to 100% by the max() guard: this task passed "
                               f"{pct:.1%}, the row had {before:.1%}")
        complete = is_complete(new)
        job.logger.info(f"Updated job {job_id} progress in stage '{stage}' to {job_stage(new, stage):.0%}")
        if mode == "guarded":
            _guarded_finish(job, new, complete)
            job.progress = new
            job.save(update_fields=["progress", "updated_at"])
        else:
            job.progress = new
            if complete:
                job.status = new["summary"]["status"]
                job.finished_at = datetime.now()
            if mode == "none":
                job.save(update_fields=["progress", "status", "finished_at", "updated_at"])
            else:
                job.save()
        _log_throughput(job, stage)
    return complete


def _guarded_finish(job: Job, new: dict[str, Any], complete: bool) -> None:
    """Antenna's current main: the terminal status is one guarded UPDATE, never a stale full save."""
    if not complete:
        return
    now = datetime.now()
    state = new["summary"]["status"]
    if Job.objects.filter(pk=job.pk, status__in=FINALIZABLE_STATES).update(status=state, finished_at=now):
        job.status, job.finished_at = state, now
        return
    new["summary"]["status"] = job.progress["summary"]["status"]  # the column keeps the JSON's word
    job.logger.warning(f"Stage completed but job {job.pk} was already {job.status}; not applying {state}")


def _optimistic(job_id: int, stage: str, pct: float, complete_state: str, add_counts: bool,
                params: dict[str, Any]) -> bool:
    while True:
        job = Job.objects.get(pk=job_id)
        new, _ = apply_stage_update(job.progress, stage, pct, complete_state, params, add_counts)
        complete = is_complete(new)
        changes: dict[str, Any] = {"progress": new, "updated_at": datetime.now()}
        if complete:
            changes |= {"status": new["summary"]["status"], "finished_at": datetime.now()}
        with connection.cursor() as cur:
            # Compare on the jsonb text read: a concurrent progress write makes this apply to 0 rows.
            sets = ", ".join(f'"{name}" = %s' for name in changes)
            values = [json.dumps(v) if name == "progress" else v for name, v in changes.items()]
            cur.execute(f'UPDATE "jobs_job" SET {sets} WHERE "id" = %s AND "progress" = %s::jsonb',
                        [*values, job_id, json.dumps(job.progress)])
            if cur.rowcount == 1:
                break
        time.sleep(0.001)
    job.logger.info(f"Updated job {job_id} progress in stage '{stage}' to {job_stage(new, stage):.0%}")
    _log_throughput(job, stage)
    return complete


def _atomic(job_id: int, stage: str, pct: float, complete_state: str, add_counts: bool,
            params: dict[str, Any]) -> bool:
    args = [json.dumps(params), add_counts]
    new = "contend_stage_update(progress, %s, %s, %s, %s::jsonb, %s)"
    with connection.cursor() as cur:
        cur.execute(
            f'UPDATE "jobs_job" SET "progress" = {new}, '
            f'"status" = CASE WHEN contend_progress_complete({new}) THEN ({new})->\'summary\'->>\'status\' '
            f'ELSE "status" END, '
            f'"finished_at" = CASE WHEN contend_progress_complete({new}) THEN now() ELSE "finished_at" END, '
            f'"updated_at" = now() WHERE "id" = %s RETURNING "progress"',
            [stage, pct, complete_state, *args] * 4 + [job_id],
        )
        row = cur.fetchone()
    if row is None:
        raise Job.DoesNotExist(f"job {job_id} not found")
    progress = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    job = Job(pk=job_id)
    job.logger.info(f"Updated job {job_id} progress in stage '{stage}' to {job_stage(progress, stage):.0%}")
    return is_complete(progress)


def job_stage(progress: dict[str, Any], stage: str) -> float:
    return next((float(s["progress"]) for s in progress["stages"] if s["key"] == stage), 0.0)


def _log_throughput(job: Job, stage: str) -> None:
    process = next((s for s in job.progress["stages"] if s["key"] == "process"), None)
    values = {p["key"]: p.get("value") for p in (process or {}).get("params", [])}
    done = values.get("processed") or 0
    total = done + (values.get("remaining") or 0)
    elapsed = (datetime.now() - job.started_at).total_seconds() if job.started_at else 0.0
    rate = done / elapsed * 60 if elapsed > 0 else 0.0
    job.logger.info(f"Job {job.pk} throughput: elapsed={elapsed:.0f}s, processed={done}/{total}, "
                    f"rate={rate:.1f} imgs/min, stage={stage}")
