"""The drain: from the last POST response until the result workers have nothing left to do.

The POSTs of a load only queue results; the result workers write them afterwards, and their
contention is half of what a run is about. The drain waits, samplers still running, until the
result queue is empty and every result worker is idle (bounded by a timeout, and reported as timed
out when it ends that way). How "idle" is observed depends on the target:

- the reference server: the ``ml_results`` queue holds nothing (pending or being delivered), no
  worker's Postgres connection is active or inside a transaction, and the rows the workers wrote
  (distinct images with a detection or a failed-image row) stopped changing, all of it for
  ``quiet_s`` in a row (workers ack a message on receipt, so the queue alone cannot tell a worker
  busy with its last result);
- a target whose queue NATS monitoring shows: that queue empty for ``quiet_s``;
- otherwise a fixed wait.

Workers that wedge (waiting on each other across a Python lock and a row lock, say) never go quiet;
the drain then ends as *stalled* once nothing has moved for ``stall_s`` (30 s) instead of waiting
out its timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from contend.errors import SamplerError
from contend.redact import redact_message
from contend.sample.nats import RESULTS_STREAM, fetch_jsz, records_from_jsz
from contend.sample.pg import connect

# One read: busy worker connections, the images whose result a worker has written (a detection row
# for a result, a null-bbox one when it found nothing; a failed-image row for an error result), and a
# digest of the jobs' progress (a plain read: it never waits on the job row's lock). The progress moves
# with every result a worker finishes, error results included; statements that time out and are
# retried do not move it.
WORKERS_SQL = """
SELECT (SELECT count(*) FROM pg_stat_activity
         WHERE application_name LIKE 'contend-ref:worker-%%' AND state <> 'idle') AS busy,
       (SELECT count(*) FROM (SELECT source_image_id::text FROM main_detection
                              UNION SELECT image_id FROM ref_failed_image) AS written) AS processed,
       (SELECT md5(coalesce(string_agg(progress::text, ',' ORDER BY id), ''))
          FROM jobs_job WHERE id = ANY(%(jobs)s)) AS progress
"""
# When each job reached its final status. The reference server writes finished_at as a naive
# local time (USE_TZ = False) in its TIME_ZONE, UTC unless TZ says otherwise.
JOBS_SQL = """
SELECT id, status, EXTRACT(EPOCH FROM finished_at)::float8 AS finished
  FROM jobs_job WHERE id = ANY(%(jobs)s) ORDER BY id
"""


@dataclass
class DrainResult:
    """How the drain went; ``end`` is when the workers went quiet (or the timeout/stop)."""

    start: float
    end: float
    timed_out: bool
    method: str
    """``queue+workers`` (reference server), ``queue`` (NATS monitoring only) or ``fixed``."""
    processed: int | None = None
    """Distinct images with a result written (detection or failed-image row), read at the end
    (reference server only)."""
    stalled: bool = False
    """Cut because nothing moved for ``stall_s`` while workers were still busy (wedged, not slow)."""

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def queue_depth(monitor_url: str) -> int | None:
    """Results queued or delivered and not yet acked on ``ml_results`` (None: NATS cannot tell)."""
    try:
        records = records_from_jsz(time.time(), fetch_jsz(monitor_url))
    except SamplerError:
        return None
    queue = [r for r in records if r["stream"] == RESULTS_STREAM]
    if not queue:
        return None
    return sum(int(r["num_pending"] or 0) + int(r["num_ack_pending"] or 0) for r in queue)


Probe = Callable[[], tuple[bool, Any]]
"""One look at the target: (idle now, a marker that must not change while idle)."""


def wait_quiet(
    probe: Probe,
    *,
    timeout_s: float,
    quiet_s: float = 1.0,
    interval_s: float = 0.25,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    stall_s: float | None = None,
) -> tuple[float, bool, bool]:
    """Poll ``probe`` until it has been idle with an unchanged marker for ``quiet_s``.

    Return (the time it went quiet, timed out?, stalled?); on timeout or ``stop`` the time of giving
    up. With ``stall_s``, a probe that stays busy with an unchanged marker that long is stalled: the
    wait ends then instead of running into the timeout.
    """
    stop = stop or threading.Event()
    started = clock()
    quiet_since: float | None = None
    marker: Any = None
    changed_at, last = started, None
    while True:
        now = clock()
        try:
            idle, seen = probe()
        except (SamplerError, psycopg.Error):
            idle, seen = False, None  # cannot tell: not quiet
        if seen is None or seen != last:
            changed_at, last = now, seen
        if idle and quiet_since is not None and seen == marker:
            if now - quiet_since >= quiet_s:
                return quiet_since, False, False
        elif idle:
            quiet_since, marker = now, seen
        else:
            quiet_since = None
            if stall_s is not None and now - changed_at >= stall_s:
                return now, False, True
        if now - started >= timeout_s or stop.wait(interval_s):
            return clock(), not stop.is_set(), False


def drain(
    *,
    timeout_s: float,
    fixed_s: float,
    dsn: str | None = None,
    monitor_url: str | None = None,
    job_ids: Sequence[int] = (),
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    quiet_s: float = 1.0,
    stall_s: float = 30.0,
) -> tuple[DrainResult, dict[str, float | None]]:
    """Wait for the drain as the target allows (module docstring); return it and each job's finish time.

    ``dsn`` (with ``monitor_url``) means the reference server: its workers and tables are read, and
    a drain in which the queue, the rows written and the jobs' progress stay the same for ``stall_s``
    while workers are busy ends there as stalled (workers wedged on each other do not finish by
    waiting longer; the timeout would only add dead time).
    """
    stop = stop or threading.Event()
    start = clock()
    if monitor_url is None:
        stop.wait(fixed_s)
        return DrainResult(start, clock(), False, "fixed"), {}
    if dsn is None:
        def queue_only() -> tuple[bool, Any]:
            depth = queue_depth(monitor_url)
            return depth == 0, None

        end, timed_out, _ = wait_quiet(queue_only, timeout_s=timeout_s, quiet_s=quiet_s, stop=stop,
                                       clock=clock)
        return DrainResult(start, end, timed_out, "queue"), {}
    try:
        with connect(dsn) as conn:
            conn.execute("SET statement_timeout = '5s'")

            def workers() -> tuple[bool, Any]:
                depth = queue_depth(monitor_url)
                row = conn.execute(WORKERS_SQL, {"jobs": list(job_ids)}).fetchone()
                if row is None:
                    return False, None
                return depth == 0 and int(row[0]) == 0, (depth, int(row[1]), row[2])

            end, timed_out, stalled = wait_quiet(workers, timeout_s=timeout_s, quiet_s=quiet_s, stop=stop,
                                                 clock=clock, stall_s=stall_s)
            row = conn.execute(WORKERS_SQL, {"jobs": list(job_ids)}).fetchone()
            jobs = {str(r[0]): r[2] for r in conn.execute(JOBS_SQL, {"jobs": list(job_ids)}).fetchall()}
    except psycopg.Error as exc:
        raise SamplerError(f"cannot observe the result workers: {redact_message(exc)}") from None
    processed = int(row[1]) if row else None
    return DrainResult(start, end, timed_out, "queue+workers", processed=processed, stalled=stalled), jobs
