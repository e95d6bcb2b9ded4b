"""Each flag changes the database work, shown at the database; the pathology and its relief; ack-wait.

One small stack per flag set (class-scoped, so only one runs at a time). Result workers are paused
where a test must see the web tier's own statements: the test holds an ACCESS EXCLUSIVE lock on the
pending-image side table, the first thing a result task touches, and releases it afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import wait_for
from tests.test_refserver import Api, error_results, refstack, settled, table_counter

pytestmark = pytest.mark.integration  # every test here starts processes

WAITERS_ON_JOB_ROW = """
    SELECT count(*) FROM pg_stat_activity
     WHERE wait_event_type = 'Lock' AND query ILIKE '%%jobs_job%%'
       AND cardinality(pg_blocking_pids(pid)) > 0"""
LONGEST_LOCK_WAIT = """
    SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)
      FROM pg_stat_activity WHERE wait_event_type = 'Lock'"""
WEB_CONNECTIONS = """
    SELECT count(DISTINCT application_name) FROM pg_stat_activity
     WHERE application_name LIKE 'contend-ref:web %%'"""
WORKER_FOR_UPDATE_LOCKS = """
    SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.relation = 'jobs_job'::regclass AND l.mode = 'RowShareLock'
       AND a.application_name LIKE 'contend-ref:worker-%%'"""


@contextlib.contextmanager
def workers_paused(api: Api) -> Iterator[None]:
    with psycopg.connect(api.dsn) as conn:
        conn.execute("LOCK TABLE ref_pending_image IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def post_in_background(api: Api, job: int, posts: int,
                       per_post: int) -> tuple[list[threading.Thread], list[Any]]:
    """Fire ``posts`` concurrent batched POSTs (Antenna's load script); return threads and outcomes."""
    outcomes: list[Any] = []

    def post(n: int) -> None:
        try:
            response = httpx.post(f"{api.info['url']}/api/v2/jobs/{job}/result/",
                                  json=error_results(f"r1_{n}", per_post), timeout=120,
                                  headers={"Authorization": f"Token {api.info['token']}"})
            outcomes.append(response.status_code)
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=post, args=(n,), daemon=True) for n in range(posts)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def web_updates_of_one_post(api: Api, job: int, results: int) -> tuple[int, int]:
    """Return (jobs_job UPDATEs, jobs_joblog INSERTs) caused by one batched POST alone."""
    upd, ins = table_counter(api, "jobs_job", "n_tup_upd"), table_counter(api, "jobs_joblog", "n_tup_ins")
    with workers_paused(api):
        response = api.result(job, error_results(f"count-{time.monotonic_ns()}", results))
        assert response.status_code == 200
        after_upd = settled(api, "jobs_job", "n_tup_upd")
        after_ins = settled(api, "jobs_joblog", "n_tup_ins")
    return after_upd - upd, after_ins - ins


def transactions_of_one_post(api: Api, job: int, results: int) -> int:
    """Return how many transactions the web backend serving one batched POST was seen to open."""
    threads, outcomes = post_in_background(api, job, posts=1, per_post=results)
    starts: set[Any] = set()
    with psycopg.connect(api.dsn, autocommit=True) as conn:
        while threads[0].is_alive():
            starts |= {row[0] for row in conn.execute(
                "SELECT xact_start FROM pg_stat_activity WHERE application_name LIKE 'contend-ref:web %%' "
                "AND xact_start IS NOT NULL")}
            time.sleep(0.001)
    assert outcomes == [200]
    return len(starts)


class TestPre1261:
    @pytest.fixture(scope="class")
    def api(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
        with refstack(tmp_path_factory.mktemp("pre"), preset="pre-1261", web_concurrency=1,
                      worker_concurrency=8, jobs=10, images_per_job=2) as stack:
            yield Api(stack)

    def test_newest_with_limit_10_gives_every_poller_the_same_first_job(self, api):
        newest = max(api.info["job_ids"])
        pages = [api.jobs(ids_only=1, incomplete_only=1) for _ in range(5)]
        assert all(len(p["results"]) == 10 for p in pages)
        assert {p["results"][0]["id"] for p in pages} == {newest}

    def test_json_store_rewrites_the_job_row_per_log_line(self, api):
        updates, inserts = web_updates_of_one_post(api, api.info["job_ids"][1], 20)
        assert (updates, inserts) == (20, 0)

    def test_atomic_requests_run_a_post_in_one_transaction(self, api):
        # (the connection's set-up statement may be seen as a transaction of its own)
        assert transactions_of_one_post(api, api.info["job_ids"][1], 50) <= 2

    @pytest.mark.slow
    @pytest.mark.timing  # how many backends wait at one moment, within 15 s
    def test_pathology_reproduces(self, api):
        """10 concurrent POSTs of 50 results, 1 web process, 8 workers: >= 8 waiters on the job row."""
        threads, outcomes = post_in_background(api, api.info["job_ids"][0], posts=10, per_post=50)
        most, for_update, web_threads = 0, 0, 0
        deadline = time.monotonic() + 15
        with psycopg.connect(api.dsn, autocommit=True) as conn:
            # 9 POSTs behind the first one plus 8 workers is every waiter there can be.
            while time.monotonic() < deadline and (most < 17 or not for_update):
                most = max(most, conn.execute(WAITERS_ON_JOB_ROW).fetchone()[0])
                for_update = max(for_update, conn.execute(WORKER_FOR_UPDATE_LOCKS).fetchone()[0])
                web_threads = max(web_threads, conn.execute(WEB_CONNECTIONS).fetchone()[0])
                time.sleep(0.05)
        print(f"pre-1261: max backends waiting on the job row at one moment: {most}; "
              f"workers holding FOR UPDATE locks seen: {for_update}; "
              f"web threads with a connection: {web_threads}")
        assert most >= 8
        assert for_update >= 1  # select_for_update progress transactions lock the row FOR UPDATE
        # One web process, yet every in-flight POST has its own thread and connection: no small pool.
        assert web_threads == 10
        assert any(t.is_alive() for t in threads) or outcomes


class TestPr1261LogsOff:
    @pytest.fixture(scope="class")
    def api(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
        with refstack(tmp_path_factory.mktemp("logsoff"), preset="pr-1261-logs-off", web_concurrency=1,
                      worker_concurrency=8, jobs=3, images_per_job=1,
                      flags={"NATS_TASK_TTR": "2", "NATS_MAX_DELIVER": "2"}) as stack:
            yield Api(stack)

    def test_a_batched_post_performs_no_update_of_the_job_row(self, api):
        assert web_updates_of_one_post(api, api.info["job_ids"][2], 20) == (0, 0)

    def test_unacked_task_is_redelivered_after_ttr_at_most_max_deliver_times(self, api):
        job = api.info["job_ids"][1]

        def delivered(task: dict[str, Any]) -> int:
            return int(task["reply_subject"].split(".")[4])  # $JS.ACK.<stream>.<consumer>.<delivered>...

        first = api.tasks(job, 1)
        assert len(first) == 1 and delivered(first[0]) == 1
        assert api.tasks(job, 1) == []  # ack-pending elsewhere: an empty reply
        again = wait_for(lambda: api.tasks(job, 1), timeout=30)  # redelivered once the TTR has passed
        fetched_again = time.monotonic()
        assert isinstance(again, list)
        assert [t["image_id"] for t in again] == [first[0]["image_id"]] and delivered(again[0]) == 2
        # Nothing comes after a further TTR: a wait of that length is what shows it.
        time.sleep(max(0.0, fetched_again + 2.5 - time.monotonic()))
        assert api.tasks(job, 1) == []  # NATS_MAX_DELIVER=2 reached
        assert api.consumer(job)["num_redelivered"] == 1

    @pytest.mark.slow
    @pytest.mark.timing  # the longest lock wait stays under 1 s
    def test_same_load_leaves_no_backend_waiting_long(self, api):
        threads, outcomes = post_in_background(api, api.info["job_ids"][0], posts=10, per_post=50)
        longest, for_update = 0.0, 0
        deadline = time.monotonic() + 20
        with psycopg.connect(api.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                longest = max(longest, float(conn.execute(LONGEST_LOCK_WAIT).fetchone()[0]))
                for_update = max(for_update, conn.execute(WORKER_FOR_UPDATE_LOCKS).fetchone()[0])
                time.sleep(0.05)
        for thread in threads:
            thread.join(60)
        print(f"pr-1261-logs-off: longest lock wait seen: {longest:.3f} s")
        assert outcomes == [200] * 10
        assert longest < 1.0
        assert for_update == 0


class TestJoblog1259AtomicNoRequestTransaction:
    @pytest.fixture(scope="class")
    def api(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
        with refstack(tmp_path_factory.mktemp("joblog"), preset="joblog-1259", web_concurrency=1,
                      worker_concurrency=1, jobs=1, images_per_job=1,
                      flags={"PROGRESS_LOCK": "atomic", "ATOMIC_REQUESTS": "false"}) as stack:
            yield Api(stack)

    def test_table_store_inserts_joblog_rows_and_leaves_the_job_row_alone(self, api):
        job = api.info["job_ids"][0]
        assert web_updates_of_one_post(api, job, 20) == (0, 20)
        detail = api.client.get(f"/jobs/{job}/").json()
        assert sum("Queued pipeline result" in line for line in detail["logs"]["stdout"]) >= 20

    def test_without_atomic_requests_every_statement_is_a_transaction(self, api):
        # One POST seen with two transaction starts is not one transaction (ATOMIC_REQUESTS gives
        # exactly one). Seeing them is sampling, as each statement's transaction lasts a millisecond,
        # so up to three POSTs are watched.
        job = api.info["job_ids"][0]
        assert any(transactions_of_one_post(api, job, 50) >= 2 for _ in range(3))

    def test_atomic_does_one_update_per_progress_change(self, api):
        job = api.info["job_ids"][0]
        before = settled(api, "jobs_job", "n_tup_upd")
        assert api.result(job, error_results(f"atomic-{time.monotonic_ns()}", 10)).status_code == 200
        # Two progress changes per result (stages process and results), one UPDATE each.
        wait_for(lambda: table_counter(api, "jobs_job", "n_tup_upd") - before >= 20, timeout=60)
        assert settled(api, "jobs_job", "n_tup_upd") - before == 20
        process = api.sql("SELECT progress FROM jobs_job WHERE id = %s", job)[0][0]["stages"][1]
        assert process["status"] == "FAILURE"  # failed/total > 0.5 for fake image ids


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["select_for_update", "optimistic", "atomic"])
def test_lost_update_free_modes_count_every_result_and_complete_the_job(tmp_path, mode):
    """4 workers race on one job's progress; these modes must neither lose counts nor miss completion."""
    with refstack(tmp_path, preset="pr-1261-logs-off", worker_concurrency=4, jobs=1, images_per_job=12,
                  flags={"PROGRESS_LOCK": mode}) as stack:
        api = Api(stack)
        job = api.info["job_ids"][0]
        tasks = api.tasks(job, 12)
        assert len(tasks) == 12
        results = []
        for task in tasks:
            image = task["image_id"]
            results.append({"reply_subject": task["reply_subject"], "result": {
                "pipeline": "quebec_vermont_moths_2023", "total_time": 0.1,
                "source_images": [{"id": image, "url": task["image_url"]}],
                "detections": [{"source_image_id": image, "bbox": {"x1": 1, "y1": 2, "x2": 3, "y2": 4},
                                "algorithm": {"name": "d", "key": "example_detector"},
                                "timestamp": "2026-04-22T10:15:00",
                                "classifications": [{"classification": "sp", "scores": [0.9],
                                                     "algorithm": {"name": "c", "key": "example_classifier"},
                                                     "timestamp": "2026-04-22T10:15:01"}]}]}})
        assert api.result(job, {"results": results}).status_code == 200
        wait_for(lambda: api.sql("SELECT status FROM jobs_job WHERE id = %s", job)[0][0] == "SUCCESS",
                 timeout=90)
        progress, finished = api.sql("SELECT progress, finished_at FROM jobs_job WHERE id = %s", job)[0]
        stages = {s["key"]: s for s in progress["stages"]}
        params = {k: {p["key"]: p["value"] for p in s["params"]} for k, s in stages.items()}
        # processed/remaining are set, not added, from each task's own read of the pending set: a
        # task that read it earlier may write them last (in Antenna too); the max() guard keeps the
        # stage's progress at 100 %.
        assert stages["process"]["progress"] == 1.0 and params["process"]["failed"] == 0
        assert params["results"] == {"captures": 12, "detections": 12, "classifications": 12}
        assert progress["summary"] == {"status": "SUCCESS", "progress": 1.0}
        assert finished is not None
        # Completion cleans up: the job's stream (and its consumer) are deleted.
        def streams() -> set[str]:
            data = httpx.get(f"{api.nats_monitor}/jsz", params={"streams": "true"}).json()
            return {s["name"] for s in data["account_details"][0].get("stream_detail") or []}

        wait_for(lambda: f"job_{job}" not in streams(), timeout=30)
