"""Progress updates of the result task, run in this process against real Postgres (refserver_inprocess)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from contend.stack import Stack
from tests.refserver_inprocess import InProcessRefServer, inprocess_refserver

pytestmark = pytest.mark.integration  # every test here starts processes


@pytest.fixture(scope="module")
def app(stack: Stack) -> InProcessRefServer:
    return inprocess_refserver(stack)


def _job(app: InProcessRefServer, status: str) -> Any:
    from django.db import connections

    from contend.refserver.models import Job

    base = Job.objects.get(pk=app.job_id)
    job = Job.objects.create(name=f"progress {status}", project_id=base.project_id,
                             pipeline_id=base.pipeline_id, status=status, progress=base.progress,
                             dispatch_mode="async_api", job_type_key="ml")
    connections.close_all()
    return job


def test_guarded_finishes_a_running_job_and_never_resurrects_a_revoked_one(
        app: InProcessRefServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.conf import settings

    from contend.refserver.progress import update_job_progress

    monkeypatch.setitem(settings.FLAGS, "PROGRESS_LOCK", "guarded")
    running, revoked = _job(app, "STARTED"), _job(app, "REVOKED")
    for job in (running, revoked):
        update_job_progress(job.pk, "process", 1.0, "SUCCESS", processed=4, remaining=0, failed=0)
        assert update_job_progress(job.pk, "results", 1.0, "SUCCESS", add_counts=True,
                                   detections=2, classifications=2, captures=4)
        job.refresh_from_db()
    assert running.status == "SUCCESS" and running.finished_at is not None
    assert running.progress["summary"]["status"] == "SUCCESS"
    # The guarded UPDATE found the job terminal already: status, finish time and summary stay as they were.
    assert revoked.status == "REVOKED" and revoked.finished_at is None
    assert revoked.progress["summary"]["status"] == "STARTED"
    assert revoked.progress["stages"][2]["progress"] == 1.0  # the progress itself is still saved


def test_the_max_guard_warns_only_when_it_lifts_a_stage_to_100_percent(
        app: InProcessRefServer, caplog: pytest.LogCaptureFixture) -> None:
    from contend.refserver.progress import update_job_progress

    job = _job(app, "STARTED")
    with caplog.at_level(logging.WARNING, logger="contend.refserver.joblog"):
        update_job_progress(job.pk, "process", 0.5, "SUCCESS", processed=2, remaining=2, failed=0)
        update_job_progress(job.pk, "process", 0.25, "SUCCESS", processed=1, remaining=3, failed=0)
        assert not [r for r in caplog.records if "max() guard" in r.getMessage()]  # lifted to 50 %: quiet
        update_job_progress(job.pk, "process", 1.0, "SUCCESS", processed=4, remaining=0, failed=0)
        update_job_progress(job.pk, "process", 0.75, "SUCCESS", processed=3, remaining=1, failed=0)
    lifted = [r.getMessage() for r in caplog.records if "max() guard" in r.getMessage()]
    assert lifted == ["Stage 'process' lifted to 100% by the max() guard: this task passed 75.0%, "
                      "the row had 100.0%"]
