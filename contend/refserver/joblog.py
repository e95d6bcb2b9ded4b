"""The job logger as Antenna has it (ami/jobs/models.py: ``JobLogHandler`` and ``Job.logger``).

``job_logger(job)`` returns the process-wide ``logging.getLogger(f"ami.jobs.{pk}")``, which carries
exactly one ``JobLogHandler`` per process, re-pointed at the caller's job instance on every call.
``logging.Handler.handle()`` takes the handler's ``RLock`` around ``emit()``, so every thread of a
web process that logs for one job queues on that one lock, while its own request transaction
(ATOMIC_REQUESTS) is open and may already hold the job row from an earlier log UPDATE. A thread
holding the lock can therefore wait in Postgres for a row held by a thread that waits for the lock:
a deadlock across two layers that only ``statement_timeout`` ends (see docs/refserver.md).

What ``emit()`` writes, by flag:

- JOB_LOG_PERSIST_ENABLED=false: the process log only (PR #1261's switch).
- JOB_LOG_STORE=json: ``refresh_from_db(fields=["logs"])`` (a plain SELECT), the line inserted at the
  front of ``logs.stdout`` unless already there (a linear scan), errors also at the front of
  ``logs.stderr``, stdout cut to 1000 lines, ``save(update_fields=["logs"])`` (an UPDATE of the
  whole array; ``updated_at`` untouched).
- JOB_LOG_STORE=table: one INSERT into jobs_joblog (PR #1259).

Any exception inside ``emit`` is swallowed and written to the process log, as Antenna does; in an
atomic block Django has then marked the transaction for rollback, so the request's later log lines
fail too and its transaction is rolled back when the view returns.

Other code (a cross-layer wait detector) may rely on these names: the handler class is
``contend.refserver.joblog.JobLogHandler``, its lock the stdlib ``Handler.lock``, and the loggers
``ami.jobs.<pk>``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from pydantic import BaseModel

if TYPE_CHECKING:
    from contend.refserver.models import Job

MAX_LOG_LENGTH = 1000
LOGGER_PREFIX = "ami.jobs."
log = logging.getLogger("contend.refserver.joblog")  # the process log (container stdout in Antenna)


class JobLogs(BaseModel):
    """The ``logs`` column as Antenna's pydantic schema field parses it: newest line first."""

    stdout: list[str] = []
    stderr: list[str] = []


class JobLogHandler(logging.Handler):
    """Write each record of one job's logger to that job, in the store the flags name."""

    max_log_length = MAX_LOG_LENGTH

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__()

    def emit(self, record: logging.LogRecord) -> None:
        log.log(record.levelno, self.format(record))
        if settings.FLAGS["JOB_LOG_PERSIST_ENABLED"] != "true":
            return
        try:
            if settings.FLAGS["JOB_LOG_STORE"] == "table":
                from contend.refserver.models import JobLog

                JobLog.objects.create(job_id=self.job.pk, level=record.levelname, message=self.format(record))
            else:
                self._rewrite_json(record)
        except Exception as exc:
            log.error("Failed to save logs for job #%s: %s", self.job.pk, exc)

    def _rewrite_json(self, record: logging.LogRecord) -> None:
        job = self.job
        # Re-read into the instance the handler points at, so a later save of it keeps the line.
        job.refresh_from_db(fields=["logs"])
        logs = JobLogs.model_validate(job.logs or {})
        line = f"[{datetime.now():%Y-%m-%d %H:%M:%S}] {record.levelname} {self.format(record)}"
        if line not in logs.stdout:
            logs.stdout.insert(0, line)
        if record.levelno >= logging.ERROR and record.message not in logs.stderr:
            logs.stderr.insert(0, record.message)
        if len(logs.stdout) > self.max_log_length:
            logs.stdout = logs.stdout[:self.max_log_length]
        job.logs = logs.model_dump()
        job.save(update_fields=["logs"])


def job_logger(job: Job) -> logging.Logger:
    """Return the process-wide logger of ``job``, its one JobLogHandler pointed at this instance."""
    logger = logging.getLogger(f"{LOGGER_PREFIX}{job.pk}")
    handler = next((h for h in logger.handlers if isinstance(h, JobLogHandler)), None)
    if handler is None:
        log.info("Adding JobLogHandler to logger for job %s", job.pk)
        logger.addHandler(JobLogHandler(job))
    else:
        handler.job = job
    logger.propagate = False
    return logger
