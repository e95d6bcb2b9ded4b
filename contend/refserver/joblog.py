"""Job log lines, written the way the chosen flags say (Antenna's JobLogHandler.emit).

- JOB_LOG_PERSIST_ENABLED=false: the process log only (PR #1261's switch).
- JOB_LOG_STORE=json: ``SELECT id, logs`` then ``UPDATE jobs_job SET logs`` with the whole array
  (newest first, deduplicated, stdout capped at 1000), no lock on the read, ``updated_at`` untouched.
- JOB_LOG_STORE=table: one INSERT into jobs_joblog (PR #1259).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings

from contend.refserver.models import Job, JobLog

MAX_LOG_LENGTH = 1000
log = logging.getLogger("contend.refserver.jobs")


def job_log(job: Job, level: int, message: str) -> None:
    """Write one job log line; a failure to persist it is logged, never raised (as Antenna)."""
    log.log(level, "job %s: %s", job.pk, message)
    if settings.FLAGS["JOB_LOG_PERSIST_ENABLED"] != "true":
        return
    name = logging.getLevelName(level)
    try:
        if settings.FLAGS["JOB_LOG_STORE"] == "table":
            JobLog.objects.create(job_id=job.pk, level=name, message=message)
            return
        # Re-read into the caller's instance, so a later full save of it keeps this line.
        job.refresh_from_db(fields=["logs"])
        logs = job.logs or {"stdout": [], "stderr": []}
        line = f"[{datetime.now():%Y-%m-%d %H:%M:%S}] {name} {message}"
        stdout = logs.setdefault("stdout", [])
        if line not in stdout:
            stdout.insert(0, line)
        stderr = logs.setdefault("stderr", [])
        if level >= logging.ERROR and message not in stderr:
            stderr.insert(0, message)
        logs["stdout"] = stdout[:MAX_LOG_LENGTH]
        job.logs = logs
        job.save(update_fields=["logs"])
    except Exception as exc:
        log.warning("Failed to save logs for job #%s: %s", job.pk, exc)


def info(job: Job, message: str) -> None:
    job_log(job, logging.INFO, message)


def warning(job: Job, message: str) -> None:
    job_log(job, logging.WARNING, message)


def error(job: Job, message: str) -> None:
    job_log(job, logging.ERROR, message)
