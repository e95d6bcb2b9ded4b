"""Pending-image bookkeeping with the semantics of Antenna's Redis sets, kept in side tables.

The tables have no foreign key to jobs_job (an FK check would take FOR KEY SHARE on the hot row),
so this bookkeeping never touches or locks the job row; every statement runs in autocommit, like
the Redis round trip it replaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connection

STAGES = ("process", "results")


@dataclass(frozen=True)
class StateProgress:
    newly_removed: int
    remaining: int
    failed: int
    total: int

    @property
    def percentage(self) -> float:
        return (self.total - self.remaining) / self.total if self.total else 1.0


def initialize_job(job_id: int, image_ids: Iterable[str]) -> None:
    ids = list(image_ids)
    with connection.cursor() as cur:
        cleanup(job_id)
        cur.execute("INSERT INTO ref_job_image_total (job_id, total) VALUES (%s, %s)", [job_id, len(ids)])
        for stage in STAGES:
            cur.execute(
                "INSERT INTO ref_pending_image (job_id, stage, image_id) SELECT %s, %s, unnest(%s::text[])",
                [job_id, stage, ids],
            )


def update_state(job_id: int, image_ids: Iterable[str], stage: str,
                 failed_image_ids: Iterable[str] = ()) -> StateProgress | None:
    """Remove ``image_ids`` from the stage's pending set (SREM), add failed ids (SADD), count."""
    ids, failed = list(image_ids), list(failed_image_ids)
    with connection.cursor() as cur:
        cur.execute(
            "DELETE FROM ref_pending_image WHERE job_id = %s AND stage = %s AND image_id = ANY(%s::text[])",
            [job_id, stage, ids],
        )
        removed = cur.rowcount
        if failed:
            cur.execute(
                "INSERT INTO ref_failed_image (job_id, image_id) SELECT %s, unnest(%s::text[]) "
                "ON CONFLICT DO NOTHING", [job_id, failed],
            )
        cur.execute(
            "SELECT (SELECT total FROM ref_job_image_total WHERE job_id = %s),"
            " (SELECT count(*) FROM ref_pending_image WHERE job_id = %s AND stage = %s),"
            " (SELECT count(*) FROM ref_failed_image WHERE job_id = %s)",
            [job_id, job_id, stage, job_id],
        )
        total, remaining, failed_count = cur.fetchone()
    if total is None:
        return None
    return StateProgress(removed, int(remaining), int(failed_count), int(total))


def cleanup(job_id: int) -> None:
    with connection.cursor() as cur:
        for table in ("ref_pending_image", "ref_failed_image", "ref_job_image_total"):
            cur.execute(f"DELETE FROM {table} WHERE job_id = %s", [job_id])
