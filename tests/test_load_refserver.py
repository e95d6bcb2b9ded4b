"""The load engine end to end against the reference server (real Postgres, NATS, Django, workers)."""

from __future__ import annotations

import os

import pytest

from contend.load import BatchedPost, LoadTarget, PullWorkers, read_records, run_load
from contend.stack import RefServerOptions, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def refserver(tmp_path_factory):
    # Job logs off: with them on (pr-1261), result POSTs wait on the job log handler's lock and the
    # job row until the statement timeout; this file tests the load engine, not that contention.
    options = RefServerOptions(preset="pr-1261-logs-off", jobs=2, images_per_job=30)
    with Stack(tmp_path_factory.mktemp("stack"), refserver=options) as stack:
        yield stack.info()["refserver"]


@pytest.fixture
def target(refserver, monkeypatch):
    monkeypatch.setenv("CONTEND_TEST_REF_TOKEN", refserver["token"])
    return LoadTarget(
        base_url=refserver["url"],
        token_env="CONTEND_TEST_REF_TOKEN",
        job_ids=tuple(refserver["job_ids"]),
        pipeline_slug=refserver["pipeline_slug"],
    )


def test_batched_posts_reach_the_reference_server(target, tmp_path):
    summary = run_load([BatchedPost(batch=10, concurrency=3, rounds=2)], target, tmp_path)
    recs = list(read_records(tmp_path))
    assert len(recs) == 6 and {r["job"] for r in recs} == {target.job_ids[0]}
    assert summary.requests_ok == 6, [r["error"] for r in recs]
    assert summary.results_posted == 60


def test_pull_workers_reserve_and_post_against_the_reference_server(target, tmp_path):
    workload = PullWorkers(
        pollers=2,
        loaders=2,
        batch_size=8,
        prefetch=2,
        cold_start_s=0.1,
        per_image_s=0.005,
        idle_sleep_s=1.0,
        duration_s=8,
    )
    summary = run_load([workload], target, tmp_path)
    assert summary.kinds["poll"].ok >= 1
    assert summary.tasks_received > 0
    assert summary.results_posted > 0
    assert summary.kinds["result"].failed == 0
    assert os.environ.get("CONTEND_TEST_REF_TOKEN") not in (tmp_path / "requests-w0.jsonl").read_text()
