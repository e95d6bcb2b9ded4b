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


@pytest.fixture
def fresh_target(tmp_path_factory, monkeypatch):
    """A stack of its own: the other pull-worker test may have processed every task of the shared one."""
    options = RefServerOptions(preset="pr-1261-logs-off", jobs=1, images_per_job=40, worker_concurrency=2)
    with Stack(tmp_path_factory.mktemp("stack"), refserver=options) as stack:
        ref = stack.info()["refserver"]
        monkeypatch.setenv("CONTEND_TEST_REF_TOKEN", ref["token"])
        yield LoadTarget(base_url=ref["url"], token_env="CONTEND_TEST_REF_TOKEN",
                         job_ids=tuple(ref["job_ids"]), pipeline_slug=ref["pipeline_slug"])


def test_pull_workers_load_every_task_image_from_several_processes(fresh_target, tmp_path):
    """ADC's DataLoader processes download each task's image: one ``image`` record per task, time and
    bytes, then one result per image; two load processes fetch at once."""
    target = fresh_target
    workload = PullWorkers(pollers=2, loaders=2, batch_size=4, prefetch=2, cold_start_s=0.1,
                           per_image_s=0.005, idle_sleep_s=1.0, duration_s=10, load_images=True,
                           image_threads=4)
    summary = run_load([workload], target, tmp_path, load_workers=2)
    recs = list(read_records(tmp_path))
    images = [r for r in recs if r["kind"] == "image"]
    assert len({r["worker"].split("-")[0] for r in images}) == 2, "both load processes loaded images"
    assert summary.tasks_received > 0
    assert len(images) == summary.tasks_received  # one download per task received
    assert all(r["error"] is None and r["status"] == 200 for r in images), [r["error"] for r in images]
    assert all(r["recv"] > 100_000 and r["t1"] > r["t0"] and r["sent"] == 0 for r in images)
    assert summary.kinds["image"].p95_s is not None
    assert summary.results_posted == summary.tasks_received
    assert os.environ.get("CONTEND_TEST_REF_TOKEN") not in "".join(
        p.read_text() for p in tmp_path.glob("requests-*.jsonl"))
